"""Zoo part B: OSNet, SkipNet + Bias Loss, MobileMamba, EfficientVMamba, DHVT, AFFNet, TVConv.

Parameter counts are checked against the papers' printed tables (PAPER_TABLE in each family
module cites its source) and MACs counted the way each paper counted them (a cheap subset by
default, every variant with --runslow); the selective scan against a naive sequential loop, the
Bias Loss against values computed by hand; small instances run forward/backward, through
slimkit's profile and model directories, and through ONNX export + ONNX Runtime.
"""

from __future__ import annotations

import importlib
import math
import warnings

import pytest
import timm
import torch
import torch.nn as nn

import slimkit.zoo  # noqa: F401  (registers the zoo)
from slimkit.engine.losses.bias_loss import BiasLoss, BiasLossConfig, bias_loss
from slimkit.zoo._catalog import zoo_model_names
from slimkit.zoo._paper_counts import count_like_paper, parse_printed, within_paper
from slimkit.zoo._selective_scan import scan_flops, selective_scan, selective_scan_reference

FAMILIES = ("osnet", "skipnet", "mobilemamba", "efficientvmamba", "dhvt", "affnet", "tvconv")
NAMES = {name: fam for name, fam in zoo_model_names().items() if fam in FAMILIES}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These are small tensors: on shared cores, intra-op thread sync costs more than it saves.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _paper(name: str) -> dict:
    return getattr(importlib.import_module(f"slimkit.zoo.{NAMES[name]}"), "PAPER_TABLE", {}).get(name, {})


def test_printed_number_rounding_rule():
    assert parse_printed("0.6M") == (0.6e6, 0.05e6) and parse_printed("4.0G") == (4.0e9, 0.05e9)
    assert parse_printed("246M") == (246e6, 0.5e6)
    assert within_paper(0.63e6, "0.6M") and not within_paper(0.66e6, "0.6M")  # rounding band, not 3%
    assert within_paper(252.7e6, "246M") and not within_paper(253.5e6, "246M")  # 3% band


def test_every_family_is_registered_with_its_variants():
    counts = {fam: sum(1 for f in NAMES.values() if f == fam) for fam in FAMILIES}
    assert counts == {"osnet": 4, "skipnet": 1, "mobilemamba": 6, "efficientvmamba": 3, "dhvt": 6, "affnet": 3,
                      "tvconv": 5}  # fmt: skip


@pytest.mark.parametrize("name", sorted(NAMES))
def test_params_match_paper_table(name):
    family = NAMES[name]
    kwargs = {"num_classes": 0} if family == "osnet" else {}  # OSNet's table leaves the classifier out
    with torch.device("meta"):  # shapes only: building 33M-parameter models costs nothing
        model = timm.create_model(name, **kwargs)
    params = _n_params(model)
    paper = _paper(name)
    if "params" in paper:
        assert within_paper(params, paper["params"]), (name, params, paper["params"])
    if "params_repo" in paper:  # exact counts from the official training logs
        assert abs(params - parse_printed(paper["params_repo"])[0]) <= 0.001e6, (name, params)
    cfg = model.pretrained_cfg
    assert len(cfg["input_size"]) == 3 and len(cfg["mean"]) == 3 and len(cfg["std"]) == 3


def _check_macs_like_paper(name: str) -> None:
    model = timm.create_model(name, **({"num_classes": 0} if NAMES[name] == "osnet" else {})).eval()
    counts = count_like_paper(model, NAMES[name], torch.randn(1, *model.pretrained_cfg["input_size"]))
    paper = _paper(name)
    assert within_paper(counts["paper"], paper["macs"]), (name, counts, paper)
    if "macs_repo" in paper:  # EfficientVMamba-S: the one FLOPs figure in the official logs
        assert within_paper(counts["paper"], paper["macs_repo"], rel=0.005), (name, counts)
    if NAMES[name] in ("mobilemamba", "efficientvmamba"):
        assert counts["scan"] > 0 and counts["paper"] > counts["macs"]


_WITH_MACS = sorted(n for n in NAMES if "macs" in _paper(n))


@pytest.mark.parametrize(
    "name", ["osnet_x0_25", "skipnet_m", "mobilemamba_t2", "efficientvmamba_t", "dhvt_tiny_imagenet_patch16", "affnet_t"]
)
def test_macs_match_paper_cheap(name):
    _check_macs_like_paper(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", _WITH_MACS)
def test_macs_match_paper_all(name):
    _check_macs_like_paper(name)


def test_osnet_macs_are_the_papers_mult_adds_exactly():
    from slimkit.profile import count_macs

    model = timm.create_model("osnet_x0_25", num_classes=0).eval()
    assert abs(count_macs(model, torch.randn(1, 3, 256, 128)).total - 82.3e6) < 0.05e6  # table: 82.3M


# ---------------------------------------------------------------- selective scan


@pytest.mark.parametrize(
    "b,d,length,n,groups,chunk",
    [(2, 8, 37, 4, 2, None), (1, 6, 64, 16, 3, 8), (2, 4, 5, 1, 1, None), (1, 4, 1, 3, 1, None), (1, 8, 50, 2, 4, 7)],
)
def test_selective_scan_matches_sequential_reference(b, d, length, n, groups, chunk):
    g = torch.Generator().manual_seed(length)
    kw = dict(dtype=torch.float64, generator=g)
    u, delta = torch.randn(b, d, length, **kw), torch.randn(b, d, length, **kw)
    A = -3 * torch.rand(d, n, **kw)
    B, C = torch.randn(b, groups, n, length, **kw), torch.randn(b, groups, n, length, **kw)
    D, bias = torch.randn(d, **kw), torch.randn(d, **kw)
    ours = selective_scan(u, delta, A, B, C, D, bias, True, chunk)
    ref = selective_scan_reference(u, delta, A, B, C, D, bias, True)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


def test_selective_scan_float32_gradients_match_reference():
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(2, 6, 30, generator=g), torch.randn(2, 6, 30, generator=g), -torch.rand(6, 4, generator=g),
              torch.randn(2, 2, 4, 30, generator=g), torch.randn(2, 2, 4, 30, generator=g), torch.randn(6, generator=g)]
    a = [t.clone().requires_grad_() for t in inputs]
    b = [t.clone().requires_grad_() for t in inputs]
    selective_scan(*a).square().sum().backward()
    selective_scan_reference(*b).square().sum().backward()
    for x, y in zip(a, b):
        torch.testing.assert_close(x.grad, y.grad, rtol=1e-4, atol=1e-4)


def test_selective_scan_known_values():
    # one channel, one state, A=-ln2, delta=1 (no softplus): h_t = h_{t-1}/2 + u_t ; y = h (C=1)
    u = torch.tensor([[[1.0, 0.0, 0.0, 2.0]]], dtype=torch.float64)
    ones = torch.ones(1, 1, 1, 4, dtype=torch.float64)
    y = selective_scan(u, torch.ones_like(u), torch.tensor([[-math.log(2)]], dtype=torch.float64), ones, ones,
                       delta_softplus=False, chunk=3)  # fmt: skip
    torch.testing.assert_close(y, torch.tensor([[[1.0, 0.5, 0.25, 2.125]]], dtype=torch.float64))
    assert scan_flops(1, 4, 1, 1) == 9 * 4 + 4


def test_atrous_split_merge_round_trip():
    from slimkit.zoo.efficientvmamba import atrous_merge, atrous_split

    for h, w in [(6, 8), (5, 7), (1, 3)]:
        x = torch.randn(2, 3, h, w)
        parts = atrous_split(x)
        assert parts.shape == (2, 4, 3, ((h + 1) // 2) * ((w + 1) // 2))
        assert torch.equal(atrous_merge(parts, h, w), x)
    x = torch.arange(16.0).view(1, 1, 4, 4)
    # (even, even) rows first; (odd, even) column by column: positions (1,0),(3,0),(1,2),(3,2)
    assert atrous_split(x)[0, 0, 0].tolist() == [0, 2, 8, 10]
    assert atrous_split(x)[0, 1, 0].tolist() == [4, 12, 6, 14]


def test_haar_wavelet_branch_reconstructs_input():
    from slimkit.zoo.mobilemamba import WTEMamba

    mod = WTEMamba(4, kernel=3)
    with torch.no_grad():  # identity sub-band conv and unit scale: the branch is DWT then inverse DWT
        mod.band_conv.weight.zero_()
        mod.band_conv.weight[:, :, 1, 1] = 1.0
        mod.band_scale.fill_(1.0)
    for h, w in [(6, 6), (5, 7)]:
        x = torch.randn(2, 4, h, w)
        padded = torch.nn.functional.pad(x, (0, w % 2, 0, h % 2))
        torch.testing.assert_close(mod.wavelet(x), padded[..., :h, :w], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- Bias Loss


def test_bias_loss_hand_computed():
    # variances (unbiased) of the flattened features: [0,2] -> 2, [1,1] -> 0, [0,4] -> 8
    features = torch.tensor([[0.0, 2.0], [1.0, 1.0], [0.0, 4.0]]).view(3, 2, 1, 1)
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([0, 0, 2])
    scaled = [2 / 8, 0.0, 1.0]
    ce = [math.log(3), math.log(4) - math.log(2), math.log(3)]  # -log softmax of the target logit
    expected = sum((math.exp(0.3 * s) - 0.3) * c for s, c in zip(scaled, ce)) / 3
    assert bias_loss(logits, target, features).item() == pytest.approx(expected, rel=1e-6)
    assert BiasLoss()(logits, target, features).item() == pytest.approx(expected, rel=1e-6)


def test_bias_loss_running_minimum_and_degenerate_batch():
    loss = BiasLoss(BiasLossConfig(normalisation="running"))
    first = torch.tensor([[0.0, 2.0], [0.0, 4.0]])  # variances 2, 8
    logits, target = torch.zeros(2, 2), torch.tensor([0, 1])
    loss(logits, target, first)
    second = torch.tensor([[0.0, 4.0], [0.0, 6.0]])  # variances 8, 18; running min stays 2
    weights = [math.exp(0.3 * (8 - 2) / 10) - 0.3, math.exp(0.3 * (18 - 2) / 10) - 0.3]
    assert loss(logits, target, second).item() == pytest.approx(math.log(2) * sum(weights) / 2, rel=1e-6)
    single = bias_loss(torch.zeros(1, 2), torch.tensor([1]), torch.randn(1, 5))
    assert single.item() == pytest.approx(0.7 * math.log(2), rel=1e-6)  # equal variances: weight 1 - beta
    with pytest.raises(ValueError):
        BiasLossConfig(normalisation="global")


def test_bias_loss_trains_skipnet_features():
    model = timm.create_model("skipnet_m", num_classes=5)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    feats = model.forward_features(x)
    loss = BiasLoss()(model.forward_head(feats), y, feats)
    loss.backward()
    assert torch.isfinite(loss) and model.stem[0].weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- forward / backward / interface


def _small(family: str) -> tuple[nn.Module, tuple[int, ...]]:
    """A small instance of each family and an input size it accepts."""
    from slimkit.zoo.affnet import AFFNet
    from slimkit.zoo.dhvt import DHVT
    from slimkit.zoo.efficientvmamba import EfficientVMamba
    from slimkit.zoo.mobilemamba import MobileMamba
    from slimkit.zoo.osnet import OSNet
    from slimkit.zoo.skipnet import SkipNet
    from slimkit.zoo.tvconv import TVConvMobileNetV2

    small = {
        "osnet": (lambda: OSNet(channels=(16, 64, 96, 128), num_classes=7), (3, 64, 32)),
        "skipnet": (lambda: SkipNet(width=0.75, num_classes=7), (3, 64, 64)),
        "mobilemamba": (lambda: MobileMamba(embed_dim=(32, 48, 64), depth=(1, 1, 1), num_classes=7), (3, 96, 96)),
        "efficientvmamba": (lambda: EfficientVMamba(dims=(16, 32, 48, 64), depths=(1, 1, 1, 1), num_classes=7),
                            (3, 64, 64)),
        "dhvt": (lambda: DHVT(patch_size=4, embed_dim=64, depth=2, num_heads=4, num_classes=7), (3, 32, 32)),
        "affnet": (lambda: AFFNet(widths=(16, 16, 32, 48, 64), aff_depths=(1, 1, 1), num_classes=7), (3, 64, 64)),
        "tvconv": (lambda: TVConvMobileNetV2(width=0.1, img_size=32, num_classes=7), (3, 32, 32)),
    }  # fmt: skip
    build, size = small[family]
    return build(), size


@pytest.mark.parametrize("family", FAMILIES)
def test_small_instance_forward_backward(family):
    model, size = _small(family)
    model.train()
    x = torch.randn(2, *size)
    out = model(x)
    assert out.shape == (2, 7)
    out.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.get_classifier().weight.grad.abs().sum() > 0
    # timm interface: features -> pooled pre-logits -> new classifier
    model.eval()
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size)
        model.reset_classifier(3)
        assert model(x).shape == (2, 3)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.head_hidden_size)


def test_in_chans_and_num_classes_kwargs():
    model = timm.create_model("osnet_x0_25", in_chans=1, num_classes=4).eval()
    assert model(torch.randn(1, 1, 64, 32)).shape == (1, 4)
    model = timm.create_model("dhvt_tiny_cifar_patch4", in_chans=1, num_classes=10).eval()
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 10)


def test_slimkit_picks_up_paper_input_size():
    from slimkit.models.resolve import load_model

    expected = {"osnet_x0_25": (3, 256, 128), "mobilemamba_t2": (3, 192, 192), "affnet_et": (3, 256, 256),
                "dhvt_tiny_cifar_patch4": (3, 32, 32), "tvconv_mobilenetv2_x0_1": (3, 96, 96)}  # fmt: skip
    for name, size in expected.items():
        _, info = load_model(f"timm:{name}")
        assert info.input_size == size, name


def test_aff_export_friendly_path_equals_fft_path():
    from slimkit.zoo.affnet import AFFTokenMixer

    mixer = AFFTokenMixer(16).double()
    for h, w in [(8, 8), (7, 5), (4, 6), (1, 1)]:
        x = torch.randn(2, 16, h, w, dtype=torch.float64)
        fft = mixer(x)
        mixer.export_friendly = True
        torch.testing.assert_close(mixer(x), fft, rtol=1e-10, atol=1e-10)
        mixer.export_friendly = False


def test_tvconv_reparameterize_keeps_outputs_and_matches_dense_definition():
    from slimkit.zoo.tvconv import TVConv, reparameterize_

    layer = TVConv(3, (4, 5), stride=2, bias=True).eval()
    x = torch.randn(2, 3, 8, 10)
    kernels, bias = layer.kernels_and_bias()
    # direct definition: out[c, i, j] = sum_taps K[c, tap, i, j] * x_pad[c, 2i + di, 2j + dj] + bias
    xp = torch.nn.functional.pad(x, (1, 1, 1, 1))
    ref = torch.zeros(2, 3, 4, 5)
    for di in range(3):
        for dj in range(3):
            ref += kernels[:, 3 * di + dj] * xp[:, :, di : di + 8 : 2, dj : dj + 10 : 2]
    ref += bias
    with torch.no_grad():
        torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-5)
        holder = nn.Sequential(layer)
        reparameterize_(holder)
        assert holder[0].inference_mode and not hasattr(holder[0], "weight_gen")
        torch.testing.assert_close(holder(x), ref, rtol=1e-5, atol=1e-5)


def test_tvconv_eval_mode_holds_kernels_like_a_deployed_model():
    from slimkit.profile import count_macs
    from slimkit.zoo.tvconv import TVConv, reparameterize_

    model = timm.create_model("tvconv_mobilenetv2_x0_1", img_size=32).eval()
    x = torch.randn(1, 3, 32, 32)
    eval_macs = count_macs(model, x).total
    with torch.no_grad():
        before = model(x)
    reparameterize_(model)
    assert count_macs(model, x).total == eval_macs  # the generator does not run per forward in eval
    with torch.no_grad():
        torch.testing.assert_close(model(x), before)
    layer = TVConv(4, (5, 5)).eval()
    x = torch.randn(1, 4, 5, 5)
    with torch.no_grad():
        first = layer(x)
        layer.weight_gen[-1].weight.mul_(2)  # an in-place update must invalidate the held kernels
        torch.testing.assert_close(layer(x), 2 * first)


# ---------------------------------------------------------------- ONNX


def _onnx_roundtrip(model: nn.Module, size: tuple[int, ...], path) -> float:
    import onnxruntime as ort

    model.eval()
    x = torch.randn(1, *size)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # fixed input size: traced constants are fine
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter (dynamo=False) is asked for
        expected = model(x).numpy()
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.numpy()})[0]
    return float(abs(got - expected).max())


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_export_runs_in_onnxruntime(family, tmp_path):
    model, size = _small(family)  # AFFNet switches its FFTs to DFT matmuls while exporting
    assert _onnx_roundtrip(model, size, tmp_path / f"{family}.onnx") < 1e-3


# ---------------------------------------------------------------- slimkit tools

_ONE_PER_FAMILY = {"osnet_x0_25": (3, 64, 32), "skipnet_m": (3, 64, 64), "mobilemamba_t2": (3, 64, 64),
                   "efficientvmamba_t": (3, 64, 64), "dhvt_tiny_cifar_patch4": (3, 32, 32),
                   "affnet_et": (3, 64, 64), "tvconv_mobilenetv2_x0_1": (3, 96, 96)}  # fmt: skip


@pytest.mark.parametrize("name", sorted(_ONE_PER_FAMILY))
def test_slimkit_profile_and_model_directory(name, tmp_path):
    from slimkit.models import load_model, load_model_dir, save_model_dir
    from slimkit.profile import count_macs, profile

    size = _ONE_PER_FAMILY[name]
    prof = profile(f"timm:{name}", input_size=size, latency=False, measure_memory=False)
    model, info = load_model(f"timm:{name}")
    x = torch.randn(1, *size)
    assert prof.params == _n_params(model)
    assert prof.macs == count_macs(model, x).total > 0
    save_model_dir(model, info, tmp_path / "m")
    again, info2 = load_model_dir(tmp_path / "m")
    assert info2.input_size == info.input_size == tuple(model.pretrained_cfg["input_size"])
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), model(x), rtol=0, atol=0)
