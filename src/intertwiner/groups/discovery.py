"""Numerical discovery of the intertwiner group of an elementwise function (work in progress)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DiscoveryEvidence:
    pass


def discover(fn, **kwargs):
    raise NotImplementedError("discover is being written")
