"""Receptive-field redistribution: what changes (by hand), the grown tail is the same function, and the
redistributed model patched equals its own unpatched version."""

from __future__ import annotations

import json

import torch
import torch.nn as nn

from cli_helpers import run_cli
from slimkit.deploy.edge.graph import trace_model
from slimkit.deploy.edge.patch import PatchConfig, patch_model
from slimkit.deploy.edge.redistribute import redistribute, redistribute_patched

MODEL_FILE = """
import torch
import torch.nn as nn


class Res(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return x + torch.relu(self.bn(self.conv(x)))


def net(num_classes=10):
    return nn.Sequential(nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.ReLU(), Res(8), nn.Conv2d(8, 8, 7, padding=3),
                         nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2,
                         padding=1, groups=8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


net.input_size = (3, 32, 32)
"""


def _model() -> nn.Module:
    namespace: dict = {}
    exec(MODEL_FILE, namespace)  # the same model the CLI test loads from a file
    torch.manual_seed(0)
    model = namespace["net"]().eval()
    with torch.no_grad():
        model[2].bn.running_mean.uniform_(-0.5, 0.5)
        model[2].bn.running_var.uniform_(0.5, 2.0)
    return model


def test_redistribute_changes_by_hand():
    model = _model()
    t = trace_model(model, (3, 32, 32))
    new, done = redistribute(model, t, t.find_cut("4"))  # head: conv5 s2, relu, Res, conv7, relu (16x16 maps)
    assert done.dropped_blocks == ["2"]
    assert done.shrunk_kernels == {"0": [5, 5], "3": [7, 7]}
    # both depthwise 3x3 of the tail read 16x16 maps, the cut's size: grown to 5x5 with a zero border
    assert done.grown_kernels == {"5": [3, 3], "7": [3, 3]}
    assert isinstance(new[2], nn.Identity) and new[0].kernel_size == (3, 3) and new[0].padding == (1, 1)
    assert new[3].padding == (1, 1) and new[5].kernel_size == (5, 5) and new[5].padding == (2, 2)
    assert torch.equal(new[0].weight, model[0].weight[:, :, 1:4, 1:4])
    assert torch.equal(new[3].weight, model[3].weight[:, :, 2:5, 2:5])
    assert torch.equal(new[5].weight[:, :, 1:4, 1:4], model[5].weight) and new[5].weight.abs()[:, :, 0].sum() == 0
    assert not isinstance(model[2], nn.Identity) and model[0].kernel_size == (5, 5)  # model unchanged
    x = torch.randn(2, 8, 16, 16)
    with torch.no_grad():  # the grown tail computes the same function
        assert torch.allclose(new[7](new[6](new[5](x))), model[7](model[6](model[5](x))), atol=1e-6)


def test_redistributed_patched_equals_its_unpatched_and_costs_less():
    from slimkit.profile.counter import count_macs

    model = _model()
    patched, t, chosen = patch_model(model, (3, 32, 32), PatchConfig(grid=(4, 4), until="4"))
    new, new_patched, _, new_chosen, done = redistribute_patched(model, t, chosen, (3, 32, 32))
    assert new_chosen.plan.grid == (4, 4) and new_chosen.plan.cut.label == "4"
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(new_patched(x), new(x), atol=1e-6)
    one = x[:1]
    overhead = lambda whole, p: count_macs(p, one).total / count_macs(whole, one).total - 1  # noqa: E731
    assert overhead(new, new_patched) < overhead(model, patched)
    # whole-model MACs by hand at 16x16 (256 positions): conv0 8*3*(25-9), conv3 8*8*(49-9), Res dw 8*9;
    # the two tail depthwise convs gain 8*(25-9) each, at 16x16 and (stride 2) at 8x8
    saved = 256 * (8 * 3 * 16 + 8 * 8 * 40 + 8 * 9) - 256 * 8 * 16 - 64 * 8 * 16
    assert count_macs(model, one).total - count_macs(new, one).total == saved


def test_cli_patch_redistribute(tmp_path, monkeypatch, capsys):
    from slimkit.models import load_model

    (tmp_path / "m.py").write_text(MODEL_FILE)
    out = tmp_path / "p"
    code, stdout, err = run_cli(monkeypatch, capsys, "deploy", "patch", f"{tmp_path / 'm.py'}:net", "--patches", "4x4",
                                "--until", "4", "--redistribute", "--out", out)
    assert code == 0, err
    report = json.loads((out / "patch.json").read_text())["redistribution"]
    assert report["dropped_blocks"] == ["2"] and report["redistributed"]["max_abs_diff"] < 1e-5
    assert report["redistributed"]["macs"]["overhead"] < report["unchanged"]["macs"]["overhead"]
    assert "Receptive-field redistribution" in (out / "report.html").read_text()
    changed, _ = load_model(str(out / "redistributed"), trust_code=True)
    assert isinstance(changed[2], nn.Identity) and changed[3].kernel_size == (3, 3) and changed[5].kernel_size == (5, 5)
    assert "redistributed (dropped 2" in stdout
