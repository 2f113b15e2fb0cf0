"""Zoo, part A: EMOv2, SimpleNet, CCT, T2T-ViT, ULSAM (+MobileNetV2), tiny-MOAT.

Every variant is built and its parameter count checked against the paper's table; every variant
runs forward and backward at a small input; one instance per family goes through ONNX export +
ONNX Runtime and through `slimkit.profile.profile`; MAC counts at the paper's input size are
checked for a cheap subset by default and for all variants with --runslow.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F

import slimkit.zoo  # noqa: F401  (registers the zoo into timm)
from slimkit.profile import count_macs
from slimkit.zoo.cct import CCT
from slimkit.zoo.emov2 import HybridWindowAttention, _partition, _unpartition
from slimkit.zoo.moat import RelPosAttention
from slimkit.zoo.t2t_vit import PerformerTokenLayer
from slimkit.zoo.ulsam import ULSAM, insert_ulsam_

M, G = 1e6, 1e9

# ---- the papers' tables (params, MACs at the paper's input size) ---------------------------------
# EMOv2 (arXiv:2412.06674, Table "ImageNet-1K", and the official README): 1.4M/285M, 2.3M/487M,
# 5.1M/1035M. The official training logs (resources/Cls/log_train_EMOv2_*_224.txt, fvcore table)
# give the untruncated parameter counts 1.461M / 2.384M / 5.126M.
EMOV2_TABLE = {"emov2_1m": (1.4 * M, 285 * M), "emov2_2m": (2.3 * M, 487 * M), "emov2_5m": (5.1 * M, 1035 * M)}
EMOV2_LOG_PARAMS = {"emov2_1m": 1.461 * M, "emov2_2m": 2.384 * M, "emov2_5m": 5.126 * M}
# SimpleNet (arXiv:1608.06037, Table 1: 5.48M params, 652M ops on CIFAR 32x32); ImageNet variants
# from the authors' benchmark table (SimpleNet_Pytorch, bench_infer_GTX1080_fp32_*_NCHW_acc.csv).
SIMPLENET_TABLE = {
    "simplenet_cifar": (5.48 * M, 652 * M),
    "simplenetv1_small_m1_05": (1.51 * M, 0.34 * G), "simplenetv1_small_m2_05": (1.51 * M, 0.43 * G),
    "simplenetv1_small_m1_075": (3.29 * M, 0.76 * G), "simplenetv1_small_m2_075": (3.29 * M, 0.96 * G),
    "simplenetv1_5m_m1": (5.75 * M, 1.35 * G), "simplenetv1_5m_m2": (5.75 * M, 1.69 * G),
    "simplenetv1_9m_m1": (9.51 * M, 2.78 * G), "simplenetv1_9m_m2": (9.51 * M, 3.56 * G),
}
# CCT (arXiv:2104.05704, CIFAR and ImageNet tables of the official README). MACs exclude the
# attention matmuls (QK^T, AV).
CCT_TABLE = {
    "cct_2_3x2_32": (0.284 * M, 0.033 * G), "cct_4_3x2_32": (0.482 * M, 0.046 * G),
    "cct_6_3x2_32": (3.327 * M, 0.241 * G), "cct_7_3x2_32": (3.853 * M, 0.275 * G),
    "cct_7_3x1_32": (3.760 * M, 0.947 * G), "cct_6_3x1_32": (3.168 * M, 0.813 * G),
    "cct_14_7x2_224": (22.29 * M, 5.11 * G),
}
# T2T-ViT (arXiv:2101.11986; official README tables, Performer T2T module, 224x224).
T2T_TABLE = {
    "t2t_vit_7": (4.3 * M, 1.1 * G), "t2t_vit_10": (5.9 * M, 1.5 * G),
    "t2t_vit_12": (6.9 * M, 1.8 * G), "t2t_vit_14": (21.5 * M, 4.8 * G),
}
# ULSAM (arXiv:2006.15102, ImageNet ablation, g=4; WACV slides/poster in the official repo).
ULSAM_BASELINE = (3.4 * M, 300 * M)  # MobileNetV2 as the paper quotes it
ULSAM_TABLE = {
    "mobilenetv2_ulsam": (2.96 * M, 261.88 * M),
    "mobilenetv2_ulsam_2x160": (2.77 * M, 269.07 * M),
    "mobilenetv2_ulsam_2x96_2x160": (2.54 * M, 223.77 * M),
}
# tiny-MOAT (arXiv:2210.01820; deeplab2 checkpoint table, with position embedding, 256x256).
MOAT_TABLE = {
    "tiny_moat_0": (3.4 * M, 1.1 * G), "tiny_moat_1": (5.1 * M, 1.6 * G),
    "tiny_moat_2": (9.8 * M, 3.0 * G), "tiny_moat_3": (19.5 * M, 6.0 * G),
}
ALL = {**EMOV2_TABLE, **SIMPLENET_TABLE, **CCT_TABLE, **T2T_TABLE, **ULSAM_TABLE, **MOAT_TABLE}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Small graphs: one thread is as fast, and two threads spin-wait badly on a loaded 2-core box.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def close(ours: float, paper: float, rel: float = 0.03) -> bool:
    return abs(ours - paper) <= rel * paper


# ---- registration and parameter counts -----------------------------------------------------------
def test_every_variant_is_registered_with_its_input_size():
    for name in ALL:
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg is not None and cfg.input_size[0] == 3, name
        assert cfg.paper_ids, name
    assert timm.models.get_pretrained_cfg("cct_7_3x1_32").input_size == (3, 32, 32)
    assert timm.models.get_pretrained_cfg("tiny_moat_0").input_size == (3, 256, 256)


@pytest.mark.parametrize("name", [*SIMPLENET_TABLE, *CCT_TABLE, *T2T_TABLE, *MOAT_TABLE])
def test_params_match_paper(name):
    assert close(n_params(timm.create_model(name)), ALL[name][0])


@pytest.mark.parametrize("name", list(EMOV2_TABLE))
def test_emov2_params_match_official_log_and_table(name):
    ours = n_params(timm.create_model(name))
    assert close(ours, EMOV2_LOG_PARAMS[name], rel=0.001)
    # The paper's table truncates the logged count to one decimal (1.461M -> 1.4M).
    assert math.floor(ours / 1e5) / 10 == pytest.approx(EMOV2_TABLE[name][0] / M)


@pytest.mark.parametrize("name", list(ULSAM_TABLE))
def test_ulsam_params_match_paper_relative_to_mobilenetv2(name):
    # The paper's MobileNetV2 is the 3.4M quoted by the MobileNetV2 paper; timm's has 3.50M. Compare
    # the fraction of the baseline each variant keeps, and the parameters removed.
    ours, base = n_params(timm.create_model(name)), n_params(timm.create_model("mobilenetv2_100"))
    paper = ULSAM_TABLE[name][0]
    assert close(ours / base, paper / ULSAM_BASELINE[0])
    assert close(base - ours, ULSAM_BASELINE[0] - paper)


def test_ulsam_parameter_formula():
    # dw 1x1 (C weights + C biases) + BN (2C) + grouped pw (C weights + g biases) + BN (2g) = 5C + 3g
    assert n_params(ULSAM(96, 4)) == 5 * 96 + 3 * 4


# ---- forward + backward at a small input ----------------------------------------------------------
@pytest.mark.parametrize("name", list(ALL))
def test_forward_backward_small_input(name):
    kwargs = {"ls_init": 1.0} if name.startswith("emov2") else {}
    model = timm.create_model(name, num_classes=5, **kwargs).train()
    side = 32 if model.pretrained_cfg["input_size"][1] == 32 else 64
    out = model(torch.randn(2, 3, side, side))
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"


def test_timm_interface_reset_classifier_and_pre_logits():
    for name in ("emov2_1m", "simplenet_cifar", "cct_2_3x2_32", "t2t_vit_7", "tiny_moat_0", "mobilenetv2_ulsam"):
        model = timm.create_model(name, in_chans=1).eval()
        side = 32 if model.pretrained_cfg["input_size"][1] == 32 else 64
        x = torch.randn(1, 1, side, side)
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (1, model.num_features), name
        model.reset_classifier(3)
        assert model(x).shape == (1, 3), name


@pytest.mark.parametrize("name", ["emov2_1m", "tiny_moat_0", "mobilenetv2_ulsam"])
def test_features_only_gives_five_strided_maps(name):
    model = timm.create_model(name, features_only=True).eval()
    feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[-1] for f in feats] == [32, 16, 8, 4, 2]
    assert [f.shape[1] for f in feats] == model.feature_info.channels()


# ---- ONNX export + ONNX Runtime -------------------------------------------------------------------
ONNX_CASES = [
    ("emov2_1m", {"ls_init": 1.0}, 64), ("simplenet_cifar", {}, 32), ("cct_2_3x2_32", {}, 32),
    ("t2t_vit_7", {}, 64), ("mobilenetv2_ulsam", {}, 64), ("tiny_moat_0", {}, 64),
]


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::UserWarning")
@pytest.mark.parametrize("name, kwargs, side", ONNX_CASES)
def test_onnx_export_matches_pytorch(name, kwargs, side, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    model = timm.create_model(name, **kwargs).eval()
    x = torch.randn(1, 3, side, side)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"])
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])
    with torch.no_grad():
        ref = model(x)
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max() + 1e-6


# ---- slimkit profile on one instance per family ---------------------------------------------------
@pytest.mark.parametrize("name", ["emov2_1m", "simplenet_cifar", "cct_2_3x2_32", "t2t_vit_7",
                                  "mobilenetv2_ulsam", "tiny_moat_0"])
def test_slimkit_profile_resolves_zoo_models(name):
    from slimkit.profile import profile

    size = (3, 32, 32) if name.endswith("_32") or name == "simplenet_cifar" else (3, 64, 64)
    prof = profile(f"timm:{name}", input_size=size, latency=False, measure_memory=False)
    model = timm.create_model(name).eval()
    assert prof.params == n_params(model)
    assert prof.macs == count_macs(model, torch.randn(1, *size)).total > 0


@pytest.mark.parametrize("name", ["emov2_1m", "simplenet_cifar", "cct_2_3x2_32", "t2t_vit_7",
                                  "mobilenetv2_ulsam", "tiny_moat_0"])
def test_model_directory_round_trip(name, tmp_path):
    from slimkit.models import load_model, load_model_dir, save_model_dir

    model, info = load_model(f"timm:{name}")
    save_model_dir(model, info, tmp_path / "m")
    again, info2 = load_model_dir(tmp_path / "m")
    assert info2.input_size == tuple(model.pretrained_cfg["input_size"])
    x = torch.randn(1, 3, 32, 32) if info.input_size[1] == 32 else torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x), model(x), rtol=0, atol=0)


# ---- behaviour of the building blocks -------------------------------------------------------------
def test_emov2_window_partitions():
    x = torch.arange(2 * 3 * 14 * 14, dtype=torch.float32).view(2, 3, 14, 14)
    for remote in (False, True):
        assert torch.equal(_unpartition(_partition(x, 7, remote), 7, remote, 2, 14, 14), x)
    close_w = _partition(x, 7, remote=False)[0, :, 0].view(7, 7)
    remote_w = _partition(x, 7, remote=True)[0, :, 0].view(7, 7)
    assert torch.equal(close_w, x[0, 0, :7, :7])  # a contiguous 7x7 patch
    assert torch.equal(remote_w, x[0, 0, ::2, ::2])  # every second row and column: a dilated grid


def test_emov2_attention_fused_equals_plain_and_handles_padding():
    attn = HybridWindowAttention(40, 120, head_dim=20, window=7, act_layer=torch.nn.GELU).eval()
    x = torch.randn(2, 40, 10, 9)  # not a multiple of the window: padded then cropped
    attn.fused_attn = True
    a = attn(x)
    attn.fused_attn = False
    b = attn(x)
    assert a.shape == (2, 120, 10, 9)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _naive_performer(layer: PerformerTokenLayer, x: torch.Tensor) -> torch.Tensor:
    # O(T^2) reference: y_t = sum_s K(q_t, k_s) v_s / sum_s K(q_t, k_s), K(a, b) = phi(a) . phi(b)
    k, q, v = layer.kqv(layer.norm1(x)).split(layer.dim, dim=-1)
    kernel = layer._features(q) @ layer._features(k).transpose(1, 2)  # (B, T, T)
    y = (kernel @ v) / kernel.sum(dim=-1, keepdim=True)
    out = v + layer.proj(y)
    return out + layer.mlp(layer.norm2(out))


def test_t2t_performer_equals_explicit_kernel_attention():
    layer = PerformerTokenLayer(27, 16).eval()
    x = torch.randn(2, 10, 27) * 0.3
    torch.testing.assert_close(layer(x), _naive_performer(layer, x), rtol=1e-4, atol=1e-5)


def test_t2t_token_grid_for_224_and_non_square_inputs():
    model = timm.create_model("t2t_vit_7").eval()
    tokens, hw = model.tokens_to_token(torch.randn(1, 3, 224, 224))
    assert hw == (14, 14) and tokens.shape == (1, 196, 256)
    _, hw = model.tokens_to_token(torch.randn(1, 3, 64, 96))
    assert hw == (4, 6)
    assert model(torch.randn(1, 3, 64, 96)).shape == (1, 1000)


def _naive_ulsam(module: ULSAM, x: torch.Tensor) -> torch.Tensor:
    # Loop over subspaces the way the paper describes them, sharing the module's weights.
    outs, size = [], x.shape[1] // module.groups
    for g in range(module.groups):
        sl = slice(g * size, (g + 1) * size)
        xs = x[:, sl]
        a = F.conv2d(xs, module.dw.weight[sl], module.dw.bias[sl], groups=size)
        a = F.batch_norm(a, module.dw_bn.running_mean[sl], module.dw_bn.running_var[sl],
                         module.dw_bn.weight[sl], module.dw_bn.bias[sl], False, 0.0, module.dw_bn.eps)
        a = F.max_pool2d(F.relu(a), 3, 1, 1)
        a = F.conv2d(a, module.pw.weight[g:g + 1], module.pw.bias[g:g + 1])
        a = F.batch_norm(a, module.pw_bn.running_mean[g:g + 1], module.pw_bn.running_var[g:g + 1],
                         module.pw_bn.weight[g:g + 1], module.pw_bn.bias[g:g + 1], False, 0.0, module.pw_bn.eps)
        a = F.relu(a).flatten(1).softmax(dim=-1).view_as(xs[:, :1])
        outs.append(xs * a + xs)
    return torch.cat(outs, dim=1)


def test_ulsam_matches_per_subspace_reference():
    module = ULSAM(16, 4).eval()
    with torch.no_grad():
        for bn in (module.dw_bn, module.pw_bn):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    x = torch.randn(2, 16, 6, 5)
    torch.testing.assert_close(module(x), _naive_ulsam(module, x))
    with pytest.raises(ValueError):
        ULSAM(10, 4)


def test_insert_ulsam_in_place():
    model = timm.create_model("mobilenetv2_100", num_classes=3).eval()
    before = n_params(model)
    out = insert_ulsam_(model, {"blocks.4.2": 96, "blocks.5.2": 160})
    assert out is model and isinstance(model.blocks[4][2][1], ULSAM)
    assert n_params(model) == before + (5 * 96 + 12) + (5 * 160 + 12)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_moat_relative_position_bias_indexing_and_fused_path():
    attn = RelPosAttention(64, head_dim=32, table_size=3).eval()  # 2 heads, a 5x5 table
    bias = attn._bias(3, 3)  # 9 tokens: bias[n, q, k] = table[n, dy + 2, dx + 2], d = key - query
    table = attn.rel_table
    assert bias.shape == (2, 9, 9)
    assert torch.equal(bias[:, 0, 8], table[:, 4, 4])  # query (0,0), key (2,2)
    assert torch.equal(bias[:, 5, 1], table[:, 1, 1])  # query (1,2), key (0,1): dy = dx = -1
    assert torch.equal(bias[:, 4, 4], table[:, 2, 2])  # a token with itself
    assert torch.equal(bias[:, 2, 6], table[:, 4, 0])  # query (0,2), key (2,0): dy = 2, dx = -2
    x = torch.randn(2, 16, 64)
    attn.fused_attn = True
    a = attn(x, (4, 4))  # a 4x4 window: the 5x5 table is resized to 7x7
    attn.fused_attn = False
    torch.testing.assert_close(a, attn(x, (4, 4)), rtol=1e-5, atol=1e-6)


def test_moat_windowed_attention_matches_global_on_one_window():
    model = timm.create_model("tiny_moat_0").eval()
    block = model.stages[2][1]
    x = torch.randn(1, 128, 8, 8)
    ref = block(x)
    block.window_size = 8  # one window covering the map: identical to global attention
    torch.testing.assert_close(block(x), ref)
    block.window_size = 4
    assert block(x).shape == ref.shape


def test_cct_sequence_pooling_and_token_count():
    model = timm.create_model("cct_7_3x1_32").eval()
    x = torch.randn(2, 3, 32, 32)
    feats = model.forward_features(x)
    assert feats.shape == (2, 256, 256)  # 32x32 conv (stride 1) -> 3x3/2 max pool -> 16x16 tokens
    w = model.attention_pool(feats).softmax(dim=1)
    torch.testing.assert_close(model.forward_head(feats, pre_logits=True), (w * feats).sum(dim=1))
    assert isinstance(model, CCT) and model.grid_size == (16, 16)


def test_simplenet_stride_modes_reach_7x7_at_224():
    for name in ("simplenetv1_5m_m1", "simplenetv1_5m_m2"):
        model = timm.create_model(name).eval()
        assert model.forward_features(torch.randn(1, 3, 224, 224)).shape == (1, 256, 7, 7)
    cifar = timm.create_model("simplenet_cifar").eval()
    assert cifar.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 256, 2, 2)
    assert cifar.pretrained_cfg["num_classes"] == 10 and cifar.num_classes == 10


# ---- MACs at the paper's input size ---------------------------------------------------------------
def _macs(name: str) -> tuple[int, dict[str, int]]:
    model = timm.create_model(name).eval()
    count = count_macs(model, torch.randn(1, *model.pretrained_cfg["input_size"]))
    return count.total, count.by_category


def _check_macs(name: str) -> None:
    total, cats = _macs(name)
    paper = ALL[name][1]
    if name in CCT_TABLE:  # the paper's table leaves the attention matmuls out
        assert close(total - cats.get("attention", 0), paper)
    elif name in T2T_TABLE:  # two significant digits in the table: ours must round to it
        assert round(total / G, 1) == pytest.approx(paper / G)
    elif name in MOAT_TABLE:  # conv/linear/matmul only; norms are counted separately (see docs)
        assert close(total, paper, rel=0.06)
    else:
        assert close(total, paper)


@pytest.mark.parametrize("name", ["simplenet_cifar", "cct_7_3x1_32", "cct_2_3x2_32", "emov2_1m"])
def test_macs_match_paper_cheap(name):
    _check_macs(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ALL))
def test_macs_match_paper_all(name):
    _check_macs(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [*EMOV2_TABLE, *MOAT_TABLE])
def test_macs_like_with_like_fvcore(name):
    # EMOv2's table comes from fvcore (norms included); tiny-MOAT rounds to its table that way too.
    fvcore = pytest.importorskip("fvcore.nn")
    model = timm.create_model(name).eval()
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False  # fvcore's tracer sees explicit matmuls only
    flops = fvcore.FlopCountAnalysis(model, torch.randn(1, *model.pretrained_cfg["input_size"]))
    flops.unsupported_ops_warnings(False)
    flops.uncalled_modules_warnings(False)
    paper = ALL[name][1]
    if name in EMOV2_TABLE:
        assert close(flops.total(), paper, rel=0.005)
    else:
        assert round(flops.total() / G, 1) == pytest.approx(paper / G)
