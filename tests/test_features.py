"""Feature capture: layers by name, layouts, data sources, modes and bounded memory."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from intertwiner.features import LayerNotFoundError, capture, stream
from intertwiner.models.reference import ReusedActivations


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4 * 4 * 4, 5)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        h = self.drop(self.act(self.bn(self.conv(x))))
        return self.head(h.flatten(1))


class TokenNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(3, 8)
        self.act = nn.GELU()

    def forward(self, x):  # (N, T, 3)
        return self.act(self.proj(x)).mean(1)


def data(n=20):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 4, 4, generator=g), torch.randint(0, 5, (n,), generator=g)


def test_capture_matches_a_manual_forward_in_eval_mode():
    net = Net()
    x, y = data()
    net.train()
    feats = capture(net, x, ["act", "head"], batch_size=6)
    assert net.training and net.bn.training  # mode restored
    net.eval()
    with torch.no_grad():
        want = net.act(net.bn(net.conv(x)))
    assert feats["act"].shape == (20, 4, 4, 4)
    assert torch.allclose(feats["act"], want, atol=1e-6)
    assert torch.allclose(feats["head"], net(x), atol=1e-6)
    assert not feats["act"].requires_grad


def test_mixed_train_flags_are_restored():
    net = Net()
    net.train()
    net.bn.eval()
    capture(net, data()[0], "act")
    assert net.training and not net.bn.training and net.drop.training


@pytest.mark.parametrize("source", ["tensor", "numpy", "dataset", "loader"])
def test_data_sources_agree(source):
    net = Net()
    x, y = data()
    src = {
        "tensor": x,
        "numpy": x.numpy(),
        "dataset": TensorDataset(x, y),
        "loader": DataLoader(TensorDataset(x, y), batch_size=7),
    }[source]
    feats = capture(net, src, "act", batch_size=8)
    assert torch.allclose(feats["act"], capture(net, x, "act")["act"], atol=1e-6)


def test_stream_yields_batches_and_max_samples_truncates():
    net = Net()
    x, _ = data(20)
    sizes = [b["act"].shape[0] for b in stream(net, x, ["act"], batch_size=8, max_samples=13)]
    assert sizes == [8, 5]
    assert capture(net, x, "act", max_samples=13, batch_size=8)["act"].shape[0] == 13


def test_missing_layer_lists_available_names():
    with pytest.raises(LayerNotFoundError, match="available module names: 'conv'") as err:
        capture(Net(), data()[0], ["act", "nope"])
    assert isinstance(err.value, KeyError)


def test_layout_matrix_and_token_layout():
    net = Net()
    m = capture(net, data()[0], "act", layout="matrix")["act"]
    assert m.shape == (20 * 16, 4)
    tok = capture(TokenNet(), torch.randn(5, 7, 3), "act")["act"]
    assert tok.shape == (5, 7, 8)


def test_forward_stops_after_last_requested_layer():
    net = Net()
    calls = []
    net.head.register_forward_hook(lambda *a: calls.append(1))
    capture(net, data()[0], "act", batch_size=10)
    assert calls == []  # the head never ran
    assert np.all(np.isfinite(capture(net, data()[0], "head")["head"].numpy()))


def test_inplace_activation_does_not_overwrite_captured_input():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 6), nn.ReLU(inplace=True), nn.Linear(6, 2))
    feats = capture(net, torch.randn(30, 3), ["0", "1"])
    assert (feats["0"] < 0).any()
    assert torch.equal(feats["1"], feats["0"].relu())


def test_every_site_name_of_a_spec_can_be_captured_and_moves_by_phi():
    from intertwiner.symmetry import apply, random_elements, trace

    torch.manual_seed(0)
    model = ReusedActivations().double()
    x = torch.randn(7, 3, dtype=torch.float64)
    spec = trace(model, x)
    names = [a for s in spec.sites for a in s.activations]
    assert len(names) == 3 and {"relu", "relu#2"} <= set(names)  # + the functional call's node
    g = random_elements(spec, generator=torch.Generator().manual_seed(1))
    new = apply(model, spec, g)
    before, after = capture(model, x, names), capture(new, x, names)
    assert before["relu"].shape == (7, 4) and before["relu#2"].shape == (7, 5)
    assert torch.equal(before["relu#2"], model.relu(model.b(before["relu"])))
    for s in spec.sites:
        for a in s.activations:
            torch.testing.assert_close(after[a], s.move(a, before[a], g[s.name]))


def test_a_name_that_is_no_module_call_or_node_is_refused_with_the_options():
    with pytest.raises(LayerNotFoundError, match="functional call"):
        capture(ReusedActivations(), torch.randn(2, 3), ["nope"])
    with pytest.raises(LayerNotFoundError, match="not called"):
        capture(ReusedActivations(), torch.randn(2, 3), ["relu#3"])
