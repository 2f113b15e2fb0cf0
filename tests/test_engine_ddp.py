"""Data-parallel training: `slimkit train --nproc 2` (torchrun, gloo on CPU) against one process.

The model has no BatchNorm and no dropout: BatchNorm normalises each rank's half
batch with its own statistics and dropout draws per-rank masks, so with them the
two runs are different computations rather than the same one split in two.
"""

import json
import sys

import pytest
import torch

from slimkit.cli.main import main
from slimkit.data import load_data
from slimkit.engine import TrainConfig, fit
from slimkit.engine.distributed import strip_nproc
from slimkit.models import load_model

PLAIN = '''
import torch.nn as nn

def plain_cnn(num_classes=10, in_chans=3):
    return nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, num_classes))
plain_cnn.input_size = (3, 16, 16)
'''


def test_strip_nproc():
    assert strip_nproc(["train", "m", "--nproc", "2", "--lr", "1"]) == ["train", "m", "--lr", "1"]
    assert strip_nproc(["train", "--nproc=4", "m"]) == ["train", "m"]


def test_two_processes_match_one_process_with_the_same_global_batch(monkeypatch, capsys, tmp_path):
    (tmp_path / "plain.py").write_text(PLAIN)
    spec, out = f"{tmp_path / 'plain.py'}:plain_cnn", tmp_path / "ddp"
    monkeypatch.setattr(sys, "argv", ["slimkit", "train", spec, "--data", "digits", "--train-samples", "256",
                                      "--val-samples", "64", "--batch-size", "32", "--epochs", "2", "--lr", "0.01",
                                      "--warmup-epochs", "0.5", "--out", str(out), "--nproc", "2"])
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    dist = metrics["distributed"]
    assert dist["world_size"] == 2 and dist["ranks_in_sync"]
    assert len(dist["param_digests"]) == 2 and dist["param_digests"][0] == dist["param_digests"][1]

    torch.manual_seed(0)
    model, _ = load_model(spec, num_classes=10)
    data = load_data("digits", (3, 16, 16), train_samples=256, val_samples=64)
    single = fit(model, data, TrainConfig(epochs=2, batch_size=32, lr=0.01, warmup_epochs=0.5), progress=False)
    ddp_model, _ = load_model(str(out), trust_code=True)
    ref, got = single.model.state_dict(), ddp_model.state_dict()
    for name in ref:
        # 16 AdamW steps; the only difference is the order of float additions in the gradient mean.
        torch.testing.assert_close(got[name], ref[name], rtol=1e-4, atol=1e-5)
    assert metrics["train_loss"] == pytest.approx(single.metrics["train_loss"], rel=1e-4)
    assert metrics["num_train"] == 256
