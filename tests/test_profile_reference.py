"""The counter against published figures: torchvision's `_ops`, and fused vs unfused attention in timm."""

import pytest
import torch
import torchvision
from torchvision.models import get_model, get_model_weights, list_models

from slimkit.profile import count_macs

TOLERANCE = 0.005  # 0.5 %
FAST_LIMIT_GMACS = 4.5  # larger models run only with --runslow


def _classification_models():
    params = []
    for name in list_models(module=torchvision.models):
        weights = get_model_weights(name).DEFAULT
        ops = weights.meta["_ops"]
        marks = [pytest.mark.slow] if ops > FAST_LIMIT_GMACS else []
        params.append(pytest.param(name, weights, id=name, marks=marks))
    return params


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name, weights", _classification_models())
def test_torchvision_macs_match_published_ops(name, weights):
    model = get_model(name).eval()
    crop = weights.transforms().crop_size[0]
    count = count_macs(model, torch.randn(1, 3, crop, crop))
    published = weights.meta["_ops"] * 1e9  # given to 3 decimals in GMACs
    assert abs(count.total - published) <= max(TOLERANCE * published, 0.0005e9 + 1), (count.total, published)


TIMM_ATTENTION_MODELS = [
    ("vit_tiny_patch16_224", 224),
    ("deit_tiny_distilled_patch16_224", 224),
    ("vit_tiny_r_s16_p8_224", 224),  # ResNet stem + ViT hybrid
    ("pit_ti_224", 224),
    ("mobilevit_xxs", 256),  # conv/transformer hybrid
]


def _set_fused(model, fused: bool) -> int:
    switched = 0
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused
            switched += 1
    return switched


@pytest.mark.parametrize("name, size", TIMM_ATTENTION_MODELS)
def test_timm_fused_and_unfused_attention_count_equal(name, size):
    import timm

    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, size, size)
    assert _set_fused(model, True) > 0
    fused = count_macs(model, x)
    assert "_scaled_dot_product_flash_attention_for_cpu" in fused.by_op  # the fused kernel really ran
    _set_fused(model, False)
    unfused = count_macs(model, x)
    assert not any(op.startswith("_scaled_dot_product") for op in unfused.by_op)
    assert fused.total == unfused.total
