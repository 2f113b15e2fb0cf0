"""Coverage: torchvision and timm lightweight models pruned to 50% of their MACs (+-10%).

After pruning: the forward works with the same output shape, ONNX export runs on ONNX Runtime
and matches PyTorch, and the model directory reloads with identical outputs.
Random init and small inputs; the fast default set is representative, the rest is slow.
"""

import pytest
import torch

from slimkit.compress.prune import PruneConfig, prune_
from slimkit.compress.prune.measure import count_macs
from slimkit.deploy.onnx_export import export_onnx
from slimkit.models import load_model, load_model_dir, save_model_dir

# (spec, input side, extra kwargs). ViT-style models are built at the small input size.
FAST = [
    ("tv:mobilenet_v2", 64, {}),
    ("tv:shufflenet_v2_x0_5", 64, {}),
    ("tv:squeezenet1_1", 64, {}),
    ("timm:mixnet_s", 64, {}),
    ("timm:mobilevit_xxs", 64, {}),
    ("timm:efficientvit_b0", 64, {}),
    ("timm:deit_tiny_patch16_224", 64, {"img_size": 64}),
    ("timm:convnext_atto", 64, {}),
    ("tv:resnet18", 64, {}),
]
SLOW = [
    ("timm:fastvit_t8", 64, {}),
    ("timm:repvit_m0_9", 64, {}),
    ("tv:mobilenet_v3_small", 64, {}),
    ("tv:mobilenet_v3_large", 64, {}),
    ("tv:mnasnet0_5", 64, {}),
    ("tv:efficientnet_b0", 64, {}),
    ("tv:regnet_x_400mf", 64, {}),
    ("tv:regnet_y_400mf", 64, {}),
    ("timm:mobilenetv4_conv_small", 64, {}),
    ("timm:ghostnet_100", 64, {}),
    ("timm:mobilevitv2_050", 64, {}),
    ("timm:efficientvit_m0", 64, {"img_size": 64}),
    ("timm:efficientformerv2_s0", 64, {"img_size": 64}),
    ("timm:edgenext_xx_small", 64, {}),
    ("timm:vit_tiny_patch16_224", 64, {"img_size": 64}),
    ("timm:levit_128s", 64, {"img_size": 64}),
    ("timm:mobileone_s0", 64, {}),
    ("timm:efficientnet_b0", 64, {}),
    ("timm:resnet18", 64, {}),
    ("timm:ghostnetv2_100", 64, {}),
]
# Known limit (see the README pruning section): its attention (with position biases) is protected and holds most
# of the MACs at this size, so the cut stops near 80%.
UNREACHABLE = [
    ("timm:tiny_vit_5m_224", 64, {}),
]


def _check(spec, side, kwargs, tmp_path):
    torch.manual_seed(0)
    model, info = load_model(spec, num_classes=10, **kwargs)
    info.input_size = (3, side, side)
    x = torch.randn(2, 3, side, side)
    result = prune_(model, PruneConfig(target="macs=0.5"), x[:1])
    macs_ratio = count_macs(model, x[:1]) / result.before["macs"]
    print(f"{spec}: MACs ratio {macs_ratio:.3f}, protected {result.protected}, notes {len(result.notes)}")
    assert abs(macs_ratio - 0.5) <= 0.05, f"MACs ratio {macs_ratio:.3f}"  # +-10% of the 0.5 target
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 10)
    path = tmp_path / "model.onnx"
    export_onnx(model, (3, side, side), path)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ort_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(ort_out), out, rtol=1e-3, atol=1e-4)
    save_model_dir(model, info, tmp_path / "pruned")
    reloaded, _ = load_model_dir(tmp_path / "pruned")
    with torch.no_grad():
        assert torch.equal(reloaded(x), out)


@pytest.mark.parametrize("spec,side,kwargs", FAST, ids=[s for s, _, _ in FAST])
def test_prune_half_macs_fast(spec, side, kwargs, tmp_path):
    _check(spec, side, kwargs, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("spec,side,kwargs", SLOW, ids=[s.values[0] if hasattr(s, "values") else s[0] for s in SLOW])
def test_prune_half_macs_slow(spec, side, kwargs, tmp_path):
    _check(spec, side, kwargs, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("spec,side,kwargs", UNREACHABLE, ids=[s for s, _, _ in UNREACHABLE])
def test_prune_half_macs_out_of_reach_is_reported(spec, side, kwargs):
    from slimkit.errors import BadInputError

    model, _ = load_model(spec, num_classes=10, **kwargs)
    with pytest.raises(BadInputError, match="out of reach"):
        prune_(model, PruneConfig(target="macs=0.5"), torch.randn(1, 3, side, side))
