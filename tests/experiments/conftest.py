"""A finished run of the hidden ``test`` preset (digits, tiny mlp), shared by the tests here."""

from __future__ import annotations

import pytest

from intertwiner.experiments.pipeline import reproduce


@pytest.fixture(scope="session")
def test_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "test"
    summary = reproduce(out, preset="test", workers=1, progress=False)
    return out, summary
