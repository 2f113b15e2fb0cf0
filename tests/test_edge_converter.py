"""CBNet's converting autoencoder: easy-image choice and loss on constructed inputs, the frozen classifier, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from cli_helpers import run_cli
from slimkit.deploy.edge.converter import (ConversionLoss, Converted, ConverterConfig, build_converter, easy_images,
                                           load_converted)
from slimkit.errors import BadInputError

# inputs (N, 3, 1, 1) whose flattened values are the logits of `nn.Flatten()`
X = torch.tensor([[2, 0, 0], [5, 0, 0], [0, 3, 0], [0, 1, 0], [9, 0, 0], [0, 0, 1]], dtype=torch.float32)[..., None, None]
Y = torch.tensor([0, 0, 1, 1, 1, 2])


def test_easy_images_by_hand():
    # class 0: logit 5 beats 2 -> image 1; class 1: image 4 has the largest logit but is classified 0 (wrong), so
    # image 2 (3 > 1); class 2: its only image, 5
    easy = easy_images(nn.Flatten(), X, Y, 3)
    assert torch.equal(easy, X[[1, 2, 5]])
    with pytest.raises(BadInputError, match="no training image of class 1 right"):
        easy_images(nn.Flatten(), X[[0, 4, 5]], Y[[0, 4, 5]], 3)


def test_conversion_loss_by_hand():
    easy = X[[1, 2, 5]]
    loss = ConversionLoss(nn.Identity(), easy)
    # identity converter: targets of images 0 and 3 are [5,0,0] and [0,3,0]: squared errors 9 and 4 over 6 values
    value = loss(None, torch.tensor([0, 1]), X[[0, 3]])
    assert value.item() == pytest.approx((9 + 4) / 6)
    assert list(dict(loss.named_parameters())) == []  # the converter's parameters belong to the model only
    # with ce_weight 2, equal logits add 2 x ln 2 (cross-entropy of a uniform 2-class guess)
    mixed = ConversionLoss(nn.Identity(), easy, ce_weight=2.0)(torch.zeros(2, 2), torch.tensor([0, 1]), X[[0, 3]])
    assert mixed.item() == pytest.approx((9 + 4) / 6 + 2 * np.log(2))


def test_converter_shape_and_frozen_classifier():
    conv = build_converter((1, 28, 28), 8)
    assert conv(torch.zeros(2, 1, 28, 28)).shape == (2, 1, 28, 28)
    with pytest.raises(BadInputError, match="multiples of 4"):
        build_converter((1, 30, 28))
    with pytest.raises(BadInputError, match="--width"):
        ConverterConfig(width=0)
    bn = nn.BatchNorm2d(1)
    model = Converted(conv, nn.Sequential(bn, nn.Flatten())).train()
    model(torch.randn(4, 1, 28, 28) * 5 + 3)
    assert not bn.training and torch.equal(bn.running_mean, torch.zeros(1))  # statistics untouched


def test_load_converted_needs_converter_dir(tmp_path):
    with pytest.raises(BadInputError, match="not a finished `slimkit deploy converter` output"):
        load_converted(tmp_path, nn.Flatten(), (1, 28, 28))


LINEAR = """
import torch.nn as nn

def linear(num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, num_classes))

linear.input_size = (3, 16, 16)
"""


@pytest.mark.slow
def test_cli_converter_then_cascade(tmp_path, monkeypatch, capsys):
    from slimkit.deploy.edge.cascade_build import CascadeRunner
    from slimkit.models import load_model

    (tmp_path / "m.py").write_text(LINEAR)
    small = tmp_path / "small"
    code, _, err = run_cli(monkeypatch, capsys, "train", f"{tmp_path / 'm.py'}:linear", "--data", "digits",
                           "--epochs", 3, "--lr", 0.01, "--trust-code", "--out", small)
    assert code == 0, err
    conv = tmp_path / "conv"
    code, _, err = run_cli(monkeypatch, capsys, "deploy", "converter", small, "--data", "digits", "--epochs", 1,
                           "--width", 4, "--trust-code", "--out", conv)
    assert code == 0, err
    assert json.loads((conv / "metrics.json").read_text())["converter"]["width"] == 4
    # the frozen classifier inside the converter's directory is SMALL's, weight for weight
    net, _ = load_model(str(small), trust_code=True)
    rebuilt = load_converted(conv, load_model(str(small), trust_code=True)[0], (3, 16, 16))
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), rebuilt.classifier.state_dict().values()))
    out = tmp_path / "cascade"
    code, _, err = run_cli(monkeypatch, capsys, "deploy", "cascade", small, small, "--converter", conv, "--data",
                           "digits", "--repetitions", 10, "--timed-images", 4, "--trust-code", "--out", out)
    assert code == 0, err
    x = np.random.default_rng(0).normal(size=(5, 3, 16, 16)).astype(np.float32)
    runner = CascadeRunner(out)
    ort_logits = runner._logits(runner.small, x)
    with torch.no_grad():
        assert np.allclose(ort_logits, rebuilt(torch.from_numpy(x)).numpy(), atol=1e-4)  # small.onnx = converter + SMALL
    code, _, err = run_cli(monkeypatch, capsys, "deploy", "cascade", small, small, "--converter", small, "--data",
                           "digits", "--trust-code", "--out", tmp_path / "bad")
    assert code == 2 and "not a finished `slimkit deploy converter` output" in err and not (tmp_path / "bad").exists()
