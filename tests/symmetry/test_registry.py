"""The rule table: one rule per ATen op, a second registration fails loudly, and every op the
former two front ends handled has its rule."""

from __future__ import annotations

import pytest

from intertwiner.symmetry import _aten  # noqa: F401 (imports every rule module)
from intertwiner.symmetry._registry import RULES, rule


def test_a_second_rule_for_an_op_is_refused():
    with pytest.raises(RuntimeError, match="two rules for aten.linear"):
        rule("linear")(lambda r, n, value: None)
    assert RULES["linear"].fn.__module__.endswith("_rules_linear")


@pytest.mark.parametrize(
    ("op", "module"),
    [
        ("linear", "_rules_linear"),
        ("conv2d", "_rules_linear"),
        ("embedding", "_rules_linear"),
        ("batch_norm", "_rules_norms"),
        ("layer_norm", "_rules_norms"),
        ("group_norm", "_rules_norms"),
        ("view", "_rules_shape"),
        ("cat", "_rules_shape"),
        ("max_pool2d", "_rules_shape"),
        ("mean", "_rules_shape"),
        ("add", "_rules_elementwise"),
        ("mul", "_rules_elementwise"),
        ("scaled_dot_product_attention", "_rules_attention"),
    ],
)
def test_each_op_has_its_rule_in_its_topic(op, module):
    assert RULES[op].fn.__module__ == f"intertwiner.symmetry.{module}"
