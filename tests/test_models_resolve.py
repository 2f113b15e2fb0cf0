"""Model naming: timm, torchvision, bare names, user files, model directories, and errors."""

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

from slimkit.errors import UnknownModelError, UnsafeFileError
from slimkit.models import load_model, load_model_dir, save_model_dir


def test_timm_prefix_and_metadata():
    model, info = load_model("timm:resnet18", num_classes=7)
    assert info.source == "timm" and info.spec == "timm:resnet18"
    assert info.input_size == (3, 224, 224) and info.num_classes == 7
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)
    assert not model.training


def test_torchvision_prefix_uses_weights_transform_size():
    _, info = load_model("tv:inception_v3", init_weights=False)
    assert info.source == "torchvision" and info.input_size == (3, 299, 299)


def test_bare_name_prefers_timm_then_torchvision():
    _, info = load_model("resnet18")
    assert info.source == "timm"
    _, info = load_model("shufflenet_v2_x0_5")  # not in timm
    assert info.source == "torchvision"


@pytest.mark.parametrize("spec, hint", [("resnt18", "resnet18"), ("timm:mobilenetv3_lage_100", "mobilenetv3_large_100"),
                                        ("tv:resnet19", "resnet18")])
def test_unknown_model_suggests_closest(spec, hint):
    with pytest.raises(UnknownModelError, match=hint):
        load_model(spec)


def test_user_file_factory(tmp_path):
    file = tmp_path / "mymodel.py"
    file.write_text(textwrap.dedent("""
        import torch.nn as nn
        def build(num_classes=3):
            return nn.Sequential(nn.Flatten(), nn.Linear(12, num_classes))
        build.input_size = (3, 2, 2)
    """))
    model, info = load_model(f"{file}:build", num_classes=5)
    assert info.source == "file" and info.input_size == (3, 2, 2)
    assert model(torch.randn(2, 3, 2, 2)).shape == (2, 5)
    with pytest.raises(UnknownModelError, match="no callable"):
        load_model(f"{file}:missing")


def _roundtrip(model, info, tmp_path, x, trust=False):
    save_model_dir(model, info, tmp_path / "m")
    reloaded, info2 = load_model_dir(tmp_path / "m", trust_code=trust)
    assert info2.spec == info.spec
    with torch.no_grad():
        assert torch.equal(model.eval()(x), reloaded(x))
    return reloaded


@pytest.mark.parametrize("spec", ["timm:mobilenetv3_small_050", "tv:mnasnet0_5"])  # MNASNet checks state-dict versions
def test_model_dir_roundtrip_exact_outputs(tmp_path, spec):
    model, info = load_model(spec, num_classes=4)
    _roundtrip(model, info, tmp_path, torch.randn(2, 3, 64, 64))


def test_model_dir_tied_weights(tmp_path):
    from slimkit.models.modeldir import _load_weights
    from slimkit.models.resolve import ModelInfo

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.b.weight = self.a.weight  # safetensors stores it once; loading must re-tie it

        def forward(self, x):
            return self.b(self.a(x))

    model = Tied().eval()
    save_model_dir(model, ModelInfo("module", "Tied"), tmp_path / "m")
    other = Tied()
    _load_weights(other, tmp_path / "m" / "model.safetensors")
    x = torch.randn(2, 4)
    assert torch.equal(other(x), model(x)) and other.b.weight is other.a.weight


def test_model_dir_rebuilds_pruned_shapes(tmp_path):
    import torch_pruning as tp

    model, info = load_model("timm:resnet18", num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=0.5,
                                  ignored_layers=[model.fc])
    pruner.step()
    assert model.layer1[0].conv1.out_channels == 32
    reloaded = _roundtrip(model, info, tmp_path, x)
    assert reloaded.layer1[0].conv1.weight.shape == (32, 32, 3, 3)
    # The untouched constructor would not accept these weights: the directory rebuilt the shapes.
    fresh, _ = load_model("timm:resnet18", num_classes=10)
    assert fresh.layer1[0].conv1.weight.shape != reloaded.layer1[0].conv1.weight.shape


def test_model_dir_swapped_module_class(tmp_path):
    model, info = load_model("timm:resnet18", num_classes=3)
    model.layer1[0].act1 = nn.GELU()  # a module whose class changed after construction
    model.layer1[0].bn2 = nn.Identity()
    reloaded = _roundtrip(model, info, tmp_path, torch.randn(1, 3, 32, 32))
    assert isinstance(reloaded.layer1[0].act1, nn.GELU) and isinstance(reloaded.layer1[0].bn2, nn.Identity)


def test_model_dir_from_user_code_needs_trust(tmp_path):
    file = tmp_path / "net.py"
    file.write_text("import torch.nn as nn\ndef net(num_classes=2):\n    return nn.Linear(4, num_classes)\n")
    model, info = load_model(f"{file}:net")
    save_model_dir(model, info, tmp_path / "m")
    with pytest.raises(UnsafeFileError, match="trust_code"):
        load_model_dir(tmp_path / "m")
    _roundtrip(model, info, tmp_path, torch.randn(3, 4), trust=True)


def test_model_dir_refuses_untrusted_class(tmp_path):
    import json

    model, info = load_model("timm:resnet18", num_classes=3)
    save_model_dir(model, info, tmp_path / "m")
    arch_file = tmp_path / "m" / "architecture.json"
    arch = json.loads(arch_file.read_text())
    arch["modules"]["layer1.0.act1"]["type"] = "os.system"
    arch_file.write_text(json.dumps(arch))
    with pytest.raises(UnsafeFileError, match="os.system"):
        load_model_dir(tmp_path / "m")


def test_corrupt_weights_is_a_clean_error(tmp_path):
    from slimkit.errors import BadInputError

    model, info = load_model("timm:resnet18", num_classes=3)
    save_model_dir(model, info, tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(BadInputError, match="cannot load weights"):
        load_model_dir(tmp_path / "m")


def test_import_slimkit_is_lean():
    code = "import sys, slimkit; bad = [m for m in ('torch', 'timm', 'onnxruntime', 'matplotlib', 'ray') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
