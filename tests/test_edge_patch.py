"""Patch-based inference: patched == whole over a sweep of conv geometries, hand-computed halos, MACs and
arena, and the CLI's bad-input errors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from cli_helpers import run_cli
from slimkit.deploy.edge.graph import trace_model
from slimkit.deploy.edge.memplan import patched_extra_macs, patched_plan, whole_plan
from slimkit.deploy.edge.patch import PatchConfig, parse_bytes, patch_model
from slimkit.deploy.edge.plan import plan_patches, tile_bounds
from slimkit.errors import BadInputError


class Residual(nn.Module):
    def __init__(self, c: int, dilation: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=dilation, dilation=dilation, groups=c)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return x + torch.relu(self.bn(self.conv(x)))


class Branches(nn.Module):
    """Two branches of different receptive fields concatenated on channels."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(c, c, 1)
        self.b = nn.Conv2d(c, c, 5, padding=2)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=1)


def _net(k: int, s: int, p, d: int, pool: str) -> nn.Module:
    head = [nn.Conv2d(3, 8, k, stride=s, padding=p, dilation=d), nn.BatchNorm2d(8), nn.ReLU6(inplace=True)]
    head += [nn.MaxPool2d(3, 2, 1) if pool == "max" else nn.AvgPool2d(2, 2, 1) if pool == "avg" else nn.Identity()]
    head += [Residual(8, 2), Branches(8), nn.Conv2d(16, 8, 3, stride=2, padding=1, bias=False)]
    tail = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)]
    net = nn.Sequential(*head, *tail).eval()
    for m in net.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return net


GEOMETRIES = [  # kernel, stride, padding, dilation, pool
    (3, 1, 1, 1, "none"), (3, 2, 1, 1, "max"), (5, 2, 2, 1, "avg"), (3, 1, 0, 1, "none"), (3, 1, 2, 2, "max"),
    (4, 2, 1, 1, "none"), (2, 2, 0, 1, "max"), (3, 1, "same", 1, "avg"), (4, 1, "same", 1, "none"),
    (7, 3, 3, 1, "none"), (3, 2, 3, 1, "max"),  # padding larger than half the kernel
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "k{}s{}p{}d{}-{}".format(*g))
@pytest.mark.parametrize("size,grid", [((3, 29, 31), (3, 2)), ((3, 40, 40), (4, 4))])
def test_patched_equals_whole(geometry, size, grid):
    net = _net(*geometry)
    traced = trace_model(net, size)
    x = torch.randn(2, *size)
    with torch.no_grad():
        whole = net(x)
    for cut in traced.cuts[2::2]:  # every other cut after the first conv-BN
        h, w = traced.shapes[cut.node][2:]
        if grid[0] > h or grid[1] > w:
            continue
        patched, _, _ = patch_model(net, size, PatchConfig(grid=grid, until=cut.node))
        with torch.no_grad():
            got = patched(x)
        assert torch.allclose(got, whole, rtol=1e-5, atol=1e-5), (cut.label, (got - whole).abs().max())


def _two_convs() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 3, padding=1), nn.Flatten()).eval()


def test_halo_regions_pads_and_macs_by_hand():
    t = trace_model(_two_convs(), (1, 8, 8))
    plan = plan_patches(t, t.find_cut("1"), (2, 2))
    first, second = plan.patches[0]  # top-left tile: output rows/cols 0..3
    assert second.region == (0, 4, 0, 4) and second.crops == {first.node: (0, 5, 0, 5)}
    assert second.pads == (1, 0, 1, 0)  # the image border above and left, the neighbour's halo below/right
    assert first.region == (0, 5, 0, 5) and first.crops == {"input_1": (0, 6, 0, 6)}
    assert first.pads == (1, 0, 1, 0)
    # whole: 2 convs x 64 positions x 9 MACs; patched: first conv computes 4 tiles x 5x5 positions
    assert patched_extra_macs(t, plan) == (4 * 25 * 9 + 64 * 9, 2 * 64 * 9)


def test_arena_by_hand():
    t = trace_model(_two_convs(), (1, 8, 8))
    # whole: input 64 + conv1 64 live at conv1; conv1 64 + conv2 64 at conv2 (the input is freed)
    assert whole_plan(t).arena_elements == 128
    plan = plan_patches(t, t.find_cut("1"), (2, 2))
    # patched: input 64 + stitched map 64 resident; conv1 patch 5x5=25 and conv2 patch 4x4=16 at once
    assert patched_plan(t, plan).arena_elements == 64 + 64 + 25 + 16
    # streamed input: the top-left patch loads input rows/cols 0..5 (36), live with conv1's 25 outputs;
    # then the tail's flatten (counted as a copy, 64) beside the stitched map (64) is the largest
    streamed = patched_plan(t, plan, stream_input=True)
    assert streamed.rows[0].live_elements == 64 + 36 + 25 and streamed.arena_elements == 64 + 64


def test_tiles_and_sizes():
    assert tile_bounds(7, 3) == [(0, 3), (3, 5), (5, 7)]
    assert parse_bytes("256KB") == 256 * 1024 and parse_bytes("1.5MB") == int(1.5 * 1024**2)
    with pytest.raises(BadInputError):
        parse_bytes("lots")


def test_memory_target_picks_fewest_extra_macs_and_names_closest():
    net = _net(3, 1, 1, 1, "max")
    _, _, loose = patch_model(net, (3, 32, 32), PatchConfig(grid=None, peak_memory_bytes=10**9))
    assert loose.extra_macs == 0  # any schedule fits, so the one without halos wins
    with pytest.raises(BadInputError, match="closest: .* KB with --patches"):
        patch_model(net, (3, 32, 32), PatchConfig(grid=None, peak_memory_bytes=10))
    with pytest.raises(BadInputError, match="cannot be met"):  # a fixed cut and grid still answer to the target
        patch_model(net, (3, 32, 32), PatchConfig(grid=(2, 2), until=loose.plan.cut.node, peak_memory_bytes=10))


def test_cli_patch_and_bad_input(tmp_path, monkeypatch, capsys):
    (tmp_path / "m.py").write_text("import torch.nn as nn\n\ndef net():\n    return nn.Sequential(nn.Conv2d(3, 8, 3, "
                                   "padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(), "
                                   "nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))\n")
    spec = f"{tmp_path / 'm.py'}:net"
    out = tmp_path / "p"
    code, stdout, _ = run_cli(monkeypatch, capsys, "deploy", "patch", spec, "--input-size", "3x16x16",
                              "--patches", "2x2", "--until", "2", "--out", out)
    assert code == 0, stdout
    report = json.loads((out / "patch.json").read_text())
    assert report["max_abs_diff"] < 1e-5 and report["grid"] == [2, 2]
    assert report["arena_bytes"]["after"]["int8"] < report["arena_bytes"]["before"]["int8"]
    assert {"whole", "patched"} <= json.loads((out / "memory_plan.json").read_text()).keys()
    for args, needle in ((["--patches", "9x9", "--until", "2"], "larger than the 8x8 feature map"),
                         (["--until", "nope"], "--until nope"),
                         (["--peak-memory", "10B"], "closest")):
        code, _, err = run_cli(monkeypatch, capsys, "deploy", "patch", spec, "--input-size", "3x16x16", *args,
                               "--out", tmp_path / "bad")
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "bad").exists()


def test_timm_functional_batchnorm_and_shape_checks():
    """timm's BatchNormAct2d traces to get_attr constants, `_assert(x.ndim == 4)` and F.batch_norm."""
    timm = pytest.importorskip("timm")
    net = timm.create_model("mnasnet_small", num_classes=5).eval()
    size = (3, 48, 48)
    traced = trace_model(net, size)
    assert traced.kinds[next(n.name for n in traced.nodes if n.op == "get_attr")][0] == "const"
    x = torch.randn(1, *size)
    with torch.no_grad():
        whole = net(x)
        for cut in traced.cuts[-2:]:
            patched, _, _ = patch_model(net, size, PatchConfig(grid=(2, 2), until=cut.node))
            assert torch.allclose(patched(x), whole, rtol=1e-4, atol=1e-5), cut.label
