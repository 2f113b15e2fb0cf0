"""Verified ONNX export: parity with PyTorch at batch 1 and 2, a dynamic batch axis, and loud failures."""

import json
import sys

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from slimkit.deploy import export_onnx, get_exporter, list_exporters, verify_onnx
from slimkit.deploy.onnx_export import ExportParityError, ort_session
from slimkit.errors import BadInputError


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()


class ExportOnlyDrift(nn.Module):
    """Behaves differently while being exported: the kind of bug the parity check exists for."""

    def __init__(self):
        super().__init__()
        self.body = small_net()

    def forward(self, x):
        out = self.body(x)
        return out + 0.01 if torch.onnx.is_in_onnx_export() else out


def test_export_parity_dynamic_batch(tmp_path):
    model = small_net()
    report = export_onnx(model, (3, 12, 12), tmp_path / "m.onnx")
    check = report.check
    assert check.passed and check.batch_sizes == [1, 2] and check.opset == 17 == report.opset
    assert check.max_abs_diff <= check.tolerance == pytest.approx(1e-4 * max(1.0, check.output_scale))
    assert report.exporter == "torchscript" and report.size_bytes == (tmp_path / "m.onnx").stat().st_size
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    # a batch size the check never used still runs and matches
    x = torch.randn(5, 3, 12, 12)
    got = ort_session(tmp_path / "m.onnx").run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x).numpy(), atol=1e-4, rtol=0)
    assert not model.training


def test_broken_export_is_caught_and_nothing_written(tmp_path):
    with pytest.raises(ExportParityError, match="max \\|PyTorch - ONNX Runtime\\| = 0.01"):
        export_onnx(ExportOnlyDrift().eval(), (3, 12, 12), tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


def test_verify_flags_a_perturbed_output(tmp_path, monkeypatch):
    model = small_net()
    export_onnx(model, (3, 12, 12), tmp_path / "m.onnx")
    good = verify_onnx(model, tmp_path / "m.onnx", (3, 12, 12))
    with torch.no_grad():
        model[-1].bias.add_(1e-3)  # the file now disagrees with the model by exactly 1e-3 per logit
    bad = verify_onnx(model, tmp_path / "m.onnx", (3, 12, 12), raise_on_fail=False)
    assert good.passed and not bad.passed
    assert bad.max_abs_diff == pytest.approx(1e-3, abs=good.max_abs_diff + 1e-6)


def test_static_batch(tmp_path):
    report = export_onnx(small_net(), (3, 10, 10), tmp_path / "s.onnx", dynamic_batch=False)
    dim0 = onnx.load(str(tmp_path / "s.onnx")).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_value == 1 and report.check.batch_sizes == [1]


def test_bad_inputs(tmp_path):
    assert list_exporters() == ["executorch", "onnx", "openvino", "tflite"] and get_exporter("ONNX") is export_onnx
    with pytest.raises(BadInputError, match="unknown export format"):
        get_exporter("coreml")
    with pytest.raises(BadInputError, match="input size"):
        export_onnx(small_net(), (3, 0, 8), tmp_path / "x.onnx")
    with pytest.raises(BadInputError, match="opset"):
        export_onnx(small_net(), (3, 8, 8), tmp_path / "x.onnx", opset=99)
    with pytest.raises(BadInputError, match="fails on input"):
        export_onnx(small_net(), (4, 8, 8), tmp_path / "x.onnx")  # 4 channels into a 3-channel conv
    with pytest.raises(BadInputError, match="exporter"):
        export_onnx(small_net(), (3, 8, 8), tmp_path / "x.onnx", exporter="magic")
    assert list(tmp_path.iterdir()) == []


def _pruned_resnet_dir(tmp_path):
    """tv:resnet18 with layer1.0's inner width cut from 64 to 40 channels, saved as a model directory."""
    from slimkit.models import load_model, save_model_dir

    model, info = load_model("tv:resnet18", num_classes=10)
    block = model.layer1[0]
    keep = torch.arange(40)
    with torch.no_grad():
        conv1 = nn.Conv2d(64, 40, 3, 1, 1, bias=False)
        conv1.weight.copy_(block.conv1.weight[keep])
        bn = nn.BatchNorm2d(40)
        conv2 = nn.Conv2d(40, 64, 3, 1, 1, bias=False)
        conv2.weight.copy_(block.conv2.weight[:, keep])
    block.conv1, block.bn1, block.conv2 = conv1, bn.eval(), conv2
    return save_model_dir(model, info, tmp_path / "pruned")


def test_cli_export_pruned_model_dir(tmp_path, monkeypatch, capsys):
    from slimkit.cli.main import main

    model_dir = _pruned_resnet_dir(tmp_path)
    out = tmp_path / "out" / "pruned.onnx"
    monkeypatch.setattr(sys, "argv", ["slimkit", "export", str(model_dir), "--input-size", "3x32x32", "--out", str(out)])
    main()  # returns normally on success
    assert "check passed" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "pruned.report.json").read_text())
    assert report["check"]["passed"] and report["input_size"] == [3, 32, 32] and report["model"]["name"] == "resnet18"
    conv_shapes = {tuple(t.dims) for t in onnx.load(str(out)).graph.initializer}
    assert (40, 64, 3, 3) in conv_shapes and (64, 40, 3, 3) in conv_shapes


def test_cli_export_errors_exit_2(tmp_path, monkeypatch, capsys):
    from slimkit.cli.main import main

    monkeypatch.setattr(sys, "argv", ["slimkit", "export", "no_such_model", "--out", str(tmp_path / "x.onnx")])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: unknown model") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["tv:mobilenet_v2", "tv:mobilenet_v3_large", "tv:efficientnet_b0", "tv:shufflenet_v2_x0_5",
                                  "timm:mobilenetv3_small_100", "timm:convnext_atto", "timm:vit_tiny_patch16_224",
                                  "timm:efficientnet_b0", "timm:ghostnet_100", "timm:mixnet_s"])
def test_export_coverage(tmp_path, spec):
    from slimkit.models import load_model

    kwargs = {"img_size": 64} if "vit" in spec else {}
    model, _ = load_model(spec, num_classes=10, **kwargs)
    report = export_onnx(model, (3, 64, 64), tmp_path / "m.onnx")
    assert report.check.passed


def test_check_on_given_images(tmp_path):
    images, net = torch.rand(4, 3, 12, 12), small_net()
    report = export_onnx(net, (3, 12, 12), tmp_path / "m.onnx", check_inputs=images)
    assert report.check.passed and report.check.inputs == "given"
    with torch.no_grad():
        scale = float(net(images[:2]).abs().max())  # the check ran on exactly these images
    assert report.check.output_scale == pytest.approx(scale, rel=1e-6)
    with pytest.raises(BadInputError, match="needs 2 input images"):
        export_onnx(small_net(), (3, 12, 12), tmp_path / "n.onnx", check_inputs=images[:1])
