"""Data-parallel training: `slimkit train|distill --nproc 2` (torchrun, gloo on CPU) against one process.

Two ranks with a global batch of 32 see, at every step, the same 32 images as one
process: DistributedSampler hands rank r the positions r, r + 2, r + 4, ... of the
shuffled order, so rank 0 holds the even positions of each global batch and rank 1
the odd ones. Where the computation is the same, the runs must agree to float
round-off (the gradient mean adds in another order): that is the tolerance below.

BatchNorm is where it is not the same: each rank normalises its 16 images with their
own mean and variance. With --sync-bn the statistics cover all 32 images again and
the runs agree. Without it, the honest reference is one process whose BatchNorm
normalises the even and odd halves of each batch separately ("ghost" batches): that
reference must match to round-off, while the plain one-process run drifts away by far
more than round-off (the test shows it), so no tight tolerance against it is justified.
"""

import json
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.cli._training import strip_nproc
from slimkit.cli.main import main
from slimkit.data import load_data
from slimkit.engine import TrainConfig, fit
from slimkit.engine.distributed import param_digest
from slimkit.models import load_model

NETS = '''
import torch.nn as nn

def plain_cnn(num_classes=10, in_chans=3):
    return nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, num_classes))
plain_cnn.input_size = (3, 16, 16)

def bn_cnn(num_classes=10, in_chans=3, dropout=0.0):
    return nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(16, num_classes))
bn_cnn.input_size = (3, 16, 16)

def bn_dropout_cnn(num_classes=10, in_chans=3):
    return bn_cnn(num_classes, in_chans, dropout=0.3)
bn_dropout_cnn.input_size = (3, 16, 16)
'''
SAMPLES = ("--data", "digits", "--train-samples", "256", "--val-samples", "64", "--batch-size", "32")
CONFIG = dict(epochs=2, batch_size=32, lr=0.01, warmup_epochs=0.5)


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    path = tmp_path_factory.mktemp("nets") / "nets.py"
    path.write_text(NETS)
    return path


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["slimkit", *map(str, args)])
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, capsys.readouterr().err


def one_process(spec, data, loss_fn=None, **changes):
    torch.manual_seed(0)  # the CLI seeds the same way before building the model
    model, _ = load_model(spec, num_classes=10)
    swap = changes.pop("swap", None)
    if swap:
        swap(model)
    return fit(model, data, TrainConfig(**{**CONFIG, **changes}), loss_fn=loss_fn, progress=False)


def assert_same_state(got, ref, skip=()):
    for name, tensor in ref.items():
        if not name.endswith(skip):
            torch.testing.assert_close(got[name], tensor, rtol=1e-4, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def ddp_metrics(out):
    metrics = json.loads((out / "metrics.json").read_text())
    dist = metrics["distributed"]
    assert dist["world_size"] == 2 and dist["ranks_in_sync"], dist
    return metrics


class GhostBatchNorm(nn.BatchNorm2d):
    """BatchNorm normalising the even and odd halves of a batch apart, as two ranks do; the running
    statistics move by the mean of the halves' statistics, as the ranks' averaged buffers do."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        halves, stats = [], []
        for half in (x[0::2], x[1::2]):
            mean, var = self.running_mean.clone(), self.running_var.clone()
            halves.append(F.batch_norm(half, mean, var, self.weight, self.bias, True, self.momentum, self.eps))
            stats.append((mean, var))
        with torch.no_grad():
            self.running_mean.copy_((stats[0][0] + stats[1][0]) / 2)
            self.running_var.copy_((stats[0][1] + stats[1][1]) / 2)
            self.num_batches_tracked.add_(1)
        out = torch.empty_like(torch.cat(halves))
        out[0::2], out[1::2] = halves
        return out


def ghost_batchnorm_(model):
    for module in model.modules():
        if type(module) is nn.BatchNorm2d:
            module.__class__ = GhostBatchNorm


def test_strip_nproc():
    assert strip_nproc(["train", "m", "--nproc", "2", "--lr", "1"]) == ["train", "m", "--lr", "1"]
    assert strip_nproc(["train", "--nproc=4", "m"]) == ["train", "m"]


def test_param_digest_covers_batchnorm_counters():
    # The reported crash: a 0-dim num_batches_tracked cannot be viewed as bytes.
    a, b = nn.BatchNorm2d(3), nn.BatchNorm2d(3)
    assert param_digest(a) == param_digest(b)
    b.num_batches_tracked += 1
    assert param_digest(a) != param_digest(b)


def test_two_processes_match_one_process_with_the_same_global_batch(monkeypatch, capsys, tmp_path, nets):
    spec, out = f"{nets}:plain_cnn", tmp_path / "ddp"
    run_cli(monkeypatch, capsys, "train", spec, *SAMPLES, "--epochs", "2", "--lr", "0.01", "--warmup-epochs", "0.5",
            "--out", out, "--nproc", "2")
    metrics = ddp_metrics(out)
    single = one_process(spec, load_data("digits", (3, 16, 16), train_samples=256, val_samples=64))
    assert_same_state(load_model(str(out), trust_code=True)[0].state_dict(), single.model.state_dict())
    assert metrics["train_loss"] == pytest.approx(single.metrics["train_loss"], rel=1e-4)
    assert metrics["num_train"] == 256


def test_batchnorm_ranks_match_one_process_with_per_rank_statistics(monkeypatch, capsys, tmp_path, nets):
    # SGD: AdamW divides each step by the root of its squared-gradient average, so where a BatchNorm
    # model's gradient is near zero the round-off of the gradient mean decides the step's sign.
    spec, out = f"{nets}:bn_cnn", tmp_path / "bn"
    run_cli(monkeypatch, capsys, "train", spec, *SAMPLES, "--epochs", "2", "--lr", "0.01", "--warmup-epochs", "0.5",
            "--optimizer", "sgd", "--out", out, "--nproc", "2")
    metrics = ddp_metrics(out)
    got = load_model(str(out), trust_code=True)[0].state_dict()
    data = load_data("digits", (3, 16, 16), train_samples=256, val_samples=64)
    ghost = one_process(spec, data, swap=ghost_batchnorm_, optimizer="sgd")
    assert_same_state(got, ghost.model.state_dict())
    assert metrics["accuracy"] == pytest.approx(ghost.metrics["accuracy"], abs=1e-9)
    plain = one_process(spec, data, optimizer="sgd").model.state_dict()
    drift = max(float((got[k] - plain[k]).abs().max()) for k in plain if got[k].is_floating_point())
    assert drift > 1e-4  # per-rank statistics make a real difference: ~100x the round-off bound above


def test_sync_bn_distillation_on_two_ranks_matches_one_process(monkeypatch, capsys, tmp_path, nets):
    # --sync-bn: the statistics cover all 32 images again, so one process with plain BatchNorm is the reference.
    from slimkit.compress.distill import LogitKD
    from slimkit.models import load_model_dir

    teacher_dir = tmp_path / "teacher"
    data = load_data("digits", (3, 16, 16), train_samples=256, val_samples=64)
    torch.manual_seed(1)
    teacher, info = load_model(f"{nets}:bn_cnn", num_classes=10)
    fit(teacher, data, TrainConfig(epochs=1, batch_size=32, lr=0.01), out_dir=teacher_dir, info=info, progress=False)
    spec, out = f"{nets}:bn_cnn", tmp_path / "kd"
    run_cli(monkeypatch, capsys, "distill", spec, "--teacher", teacher_dir, *SAMPLES, "--epochs", "2", "--lr", "0.01",
            "--warmup-epochs", "0.5", "--optimizer", "sgd", "--sync-bn", "--trust-code", "--out", out, "--nproc", "2")
    metrics = ddp_metrics(out)
    student, _ = load_model(str(out), trust_code=True)
    assert all("Global" not in type(m).__name__ for m in student.modules())  # saved with plain BatchNorm
    loss = LogitKD(load_model_dir(teacher_dir, trust_code=True)[0], temperature=4.0, alpha=0.5)
    single = one_process(spec, data, loss_fn=loss, optimizer="sgd")
    assert_same_state(student.state_dict(), single.model.state_dict())
    assert metrics["train_loss"] == pytest.approx(single.metrics["train_loss"], rel=1e-4)
    epoch = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()][-2]
    assert epoch["event"] == "epoch" and epoch["train_kd"] > 0


@pytest.mark.slow
def test_dropout_ranks_stay_in_sync_and_learn(monkeypatch, capsys, tmp_path, nets):
    # Each rank draws its own dropout masks (seed + rank); the weights still agree bit for bit.
    out = tmp_path / "drop"
    run_cli(monkeypatch, capsys, "train", f"{nets}:bn_dropout_cnn", *SAMPLES, "--epochs", "2", "--lr", "0.01",
            "--out", out, "--nproc", "2")
    ddp_metrics(out)
    epochs = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in epochs if r["event"] == "epoch"]
    assert len(losses) == 2 and losses[1] < losses[0]


@pytest.mark.slow
def test_resnet18_trains_on_two_processes(monkeypatch, capsys, tmp_path):
    out = tmp_path / "r18"
    run_cli(monkeypatch, capsys, "train", "tv:resnet18", "--input-size", "3x32x32", "--data", "digits",
            "--train-samples", "128", "--val-samples", "64", "--epochs", "2", "--nproc", "2", "--out", out)
    ddp_metrics(out)
