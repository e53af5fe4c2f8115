"""``name#k`` site names: one type parses and writes them for trace, capture and stitching."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from intertwiner._types import SiteName
from intertwiner.features import capture
from intertwiner.symmetry import trace


@pytest.mark.parametrize(
    ("text", "base", "call"),
    [
        ("relu", "relu", None),
        ("a.b.relu#2", "a.b.relu", 2),
        ("relu#1", "relu", 1),
        ("relu#0", "relu#0", None),  # not a call number: a name of its own
        ("relu#x", "relu#x", None),
        ("#3", "#3", None),
    ],
)
def test_parse(text, base, call):
    name = SiteName.parse(text)
    assert (name.base, name.call) == (base, call)
    assert SiteName.parse(str(name)) == SiteName(base, None if name.k == 1 else name.k)


def test_written_names_round_trip():
    assert str(SiteName("relu", 3)) == "relu#3" and str(SiteName("relu", 1)) == "relu"
    assert SiteName.parse(str(SiteName("x.y", 7))) == SiteName("x.y", 7)


def test_the_names_trace_writes_are_the_ones_capture_reads():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(4, 2)
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.c(self.relu(self.b(self.relu(self.a(x)))))

    model, x = Net(), torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    spec = trace(model, x)
    assert spec.names == ["relu", "relu#2"]
    got = capture(model, x, spec.names)
    first = torch.relu(model.a(x))
    assert torch.equal(got["relu"], first)
    assert torch.equal(got["relu#2"], torch.relu(model.b(first)))
