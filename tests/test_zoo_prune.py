"""Zoo models through the pruner: prune to half the MACs, forward works, the model directory reloads exactly."""

import pytest
import torch

from slimkit.compress.prune import PruneConfig, prune_
from slimkit.models import load_model, load_model_dir, save_model_dir
from slimkit.profile import count_macs


@pytest.mark.parametrize("name, size", [("simplenet_cifar", 32), ("osnet_x0_25", 64), ("skipnet_m", 64),
                                        ("tiny_moat_0", 64)])
def test_zoo_model_prunes_to_half_macs(tmp_path, name, size):
    torch.set_num_threads(1)
    model, info = load_model(f"timm:{name}", num_classes=10)
    x = torch.randn(1, 3, size, size)
    before = count_macs(model, x).total
    prune_(model, PruneConfig(target="macs=0.5"), x)
    after = count_macs(model, x).total
    assert abs(after / before - 0.5) <= 0.05
    assert model(x).shape == (1, 10)
    save_model_dir(model, info, tmp_path / "m")
    reloaded, _ = load_model_dir(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(model.eval()(x), reloaded(x))
