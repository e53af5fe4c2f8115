"""The table of ``trace``'s rules: one rule per ATen op (overload packet name, ``"linear"``).

Rules live in small modules by topic (``_rules_linear``, ``_rules_norms``, ``_rules_shape``,
``_rules_elementwise``, ``_rules_attention``) and register themselves with ``@rule(op, ...)``; a
second rule for one op is a programming error and fails at import. A rule is called as
``fn(runner, node, value)`` (``runner``: the ``_aten.AtenRunner`` interpreting the graph, ``value``:
the node's computed output) and returns the node's ``Info`` (or None: no hidden feature axis; an
op with several outputs, a tuple of them; for an op that returns (values, indices) the runner
pairs the Info with None), or raises ``Frozen``: the spaces the node reads lose their symmetry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class Frozen(Exception):
    """Raised by a rule that cannot handle a node: its hidden inputs are frozen instead (or, with
    ``trace(frontend="fx")``, the model is refused)."""


@dataclass(frozen=True)
class Rule:
    fn: Callable[..., Any]
    #: The rule runs even when the node reads no hidden tensor (a layer that writes a fresh space
    #: from the input); otherwise such a node is at most a view of a parameter.
    always: bool = False


RULES: dict[str, Rule] = {}


def rule(*ops: str, always: bool = False) -> Callable:
    """Register the decorated function as the rule of each ATen op in ``ops``."""

    def register(fn: Callable) -> Callable:
        for op in ops:
            if op in RULES:
                raise RuntimeError(
                    f"two rules for aten.{op}: {RULES[op].fn.__name__}, {fn.__name__}"
                )
            RULES[op] = Rule(fn, always)
        return fn

    return register
