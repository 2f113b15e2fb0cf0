"""Resume: an interrupted run (exception or SIGKILL) continues to the same weights as an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn as nn

from slimkit.cli.main import main
from slimkit.data import load_data
from slimkit.engine import Hook, TrainConfig, fit
from slimkit.engine.checkpoint import load_checkpoint
from slimkit.errors import BadInputError
from slimkit.models import load_model

TINY = '''
import os, time
import torch.nn as nn

class Slow(nn.Module):
    """Sleeps per training step when TINY_SLOW_MS is set, so a test can kill the run mid-way."""
    def forward(self, x):
        ms = float(os.environ.get("TINY_SLOW_MS", "0"))
        if ms and self.training:
            time.sleep(ms / 1000)
        return x

def tiny_cnn(num_classes=10, in_chans=3):
    return nn.Sequential(Slow(), nn.Conv2d(in_chans, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Dropout(0.2), nn.Linear(16, num_classes))
tiny_cnn.input_size = (3, 16, 16)
'''


@pytest.fixture(scope="module")
def data():
    return load_data("digits", (3, 16, 16), train_samples=256, val_samples=64)


def build(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Dropout(0.3), nn.Linear(32, 10))


class Interrupt(Exception):
    pass


class InterruptAt(Hook):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_begin(self, state):
        if state.epoch == self.epoch:
            raise Interrupt


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_three_epochs_equal_two_plus_resumed_one(data, tmp_path, optimizer):
    # Dropout, warm-up + cosine, label smoothing and clipping: every piece of state must come back.
    cfg = TrainConfig(epochs=3, batch_size=32, lr=0.02, optimizer=optimizer, warmup_epochs=1,
                      label_smoothing=0.1, grad_clip=1.0, seed=3)
    straight = fit(build(), data, cfg, out_dir=tmp_path / "a", progress=False)
    with pytest.raises(Interrupt):
        fit(build(), data, cfg, out_dir=tmp_path / "b", hooks=[InterruptAt(2)], progress=False)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.safetensors")[1]["epoch"] == 2
    resumed = fit(build(), data, cfg, out_dir=tmp_path / "b", resume=True, progress=False)
    assert same_weights(straight.model, resumed.model)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    epochs = [json.loads(x).get("epoch") for x in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()
              if json.loads(x)["event"] == "epoch"]
    assert epochs == [1, 2, 3]


def test_resume_of_a_finished_run_changes_nothing(data, tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=64)
    first = fit(build(), data, cfg, out_dir=tmp_path / "r", progress=False)
    again = fit(build(seed=5), data, cfg, out_dir=tmp_path / "r", resume=True, progress=False)
    assert same_weights(first.model, again.model) and again.metrics["accuracy"] == first.metrics["accuracy"]


def test_resume_refuses_other_settings_other_data_and_corrupt_checkpoints(data, tmp_path):
    cfg = TrainConfig(epochs=2, batch_size=64)
    with pytest.raises(Interrupt):
        fit(build(), data, cfg, out_dir=tmp_path / "r", hooks=[InterruptAt(1)], progress=False)
    ckpt = tmp_path / "r" / "checkpoint.safetensors"
    with pytest.raises(BadInputError, match=r"settings differ.*lr 0.001 -> 0.5"):
        fit(build(), data, cfg.replace(lr=0.5), out_dir=tmp_path / "r", resume=True, progress=False)
    other = load_data("digits", (3, 16, 16), train_samples=128, val_samples=64)
    with pytest.raises(BadInputError, match="training data differ"):
        fit(build(), other, cfg, out_dir=tmp_path / "r", resume=True, progress=False)
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # torn, as a non-atomic writer would leave it
    torn = ckpt.read_bytes()
    with pytest.raises(BadInputError, match="corrupt") as info:
        fit(build(), data, cfg, out_dir=tmp_path / "r", resume=True, progress=False)
    assert "\n" not in str(info.value) and ckpt.read_bytes() == torn  # reported, not deleted


def test_sigkill_mid_run_then_resume_reaches_the_uninterrupted_weights(data, tmp_path, monkeypatch):
    (tmp_path / "tiny.py").write_text(TINY)
    spec, out = f"{tmp_path / 'tiny.py'}:tiny_cnn", tmp_path / "run"
    args = [sys.executable, "-m", "slimkit.cli.main", "train", spec, "--data", "digits", "--train-samples", "256",
            "--val-samples", "64", "--epochs", "5", "--batch-size", "32", "--lr", "0.01", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    child = subprocess.Popen(args, env={**env, "TINY_SLOW_MS": "40"}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    ckpt = out / "checkpoint.safetensors"
    try:
        while not (ckpt.exists() and load_checkpoint(ckpt)[1]["epoch"] >= 2):
            assert child.poll() is None, child.stderr.read().decode()
            time.sleep(0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not (out / "metrics.json").exists()  # really killed mid-run
    killed_at = load_checkpoint(ckpt)[1]["epoch"]
    assert 2 <= killed_at < 5
    # Resume in this process (the same command line plus --resume), sparing a second interpreter start-up.
    monkeypatch.setattr(sys, "argv", ["slimkit", *args[3:], "--resume"])
    try:
        main()
    except SystemExit as exc:
        assert not exc.code
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 5
    # The same run without interruption, in this process.
    torch.manual_seed(0)
    model, info = load_model(spec, num_classes=10)
    clean = fit(model, data, TrainConfig(epochs=5, batch_size=32, lr=0.01), progress=False)
    reloaded, _ = load_model(str(out), trust_code=True)
    assert same_weights(clean.model, reloaded)
    assert metrics["accuracy"] == clean.metrics["accuracy"]
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r["event"] == "epoch"] == [1, 2, 3, 4, 5]
    assert [r["epoch"] for r in log if r["event"] == "resume"] == [killed_at]
