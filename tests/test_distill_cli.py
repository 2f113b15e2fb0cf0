"""`slimkit distill` end to end (kd, multi-teacher, feature, dml) and its bad-input contract."""

import json

import pytest
import torch

from cli_helpers import run_cli as run
from slimkit.data import load_data
from slimkit.engine import TrainConfig, fit
from slimkit.models import load_model

NETS = '''
import torch.nn as nn

def net(num_classes=10, in_chans=3, width=8):
    return nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(2 * width, num_classes))
net.input_size = (3, 16, 16)

def small(num_classes=10, in_chans=3):
    return net(num_classes, in_chans, width=4)
small.input_size = (3, 12, 12)
'''
COMMON = ("--data", "digits", "--train-samples", "256", "--val-samples", "64", "--batch-size", "32",
          "--epochs", "1", "--lr", "0.01", "--trust-code")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Two trained teachers (10 classes, 3x16x16) and a 5-class model directory."""
    root = tmp_path_factory.mktemp("zoo")
    (root / "nets.py").write_text(NETS)
    spec = f"{root / 'nets.py'}:net"
    data = load_data("digits", (3, 16, 16), train_samples=256, val_samples=64)
    for seed in (0, 1):
        torch.manual_seed(seed)
        model, info = load_model(spec, num_classes=10)
        fit(model, data, TrainConfig(epochs=2, batch_size=32, lr=0.01, seed=seed), out_dir=root / f"t{seed}",
            info=info, progress=False)
    torch.manual_seed(0)
    five, info = load_model(spec, num_classes=5)
    from slimkit.models import save_model_dir

    save_model_dir(five, info, root / "five")
    return root


def test_kd_trains_the_student_and_records_the_teacher(monkeypatch, capsys, tmp_path, zoo):
    out = tmp_path / "kd"
    student = f"{zoo / 'nets.py'}:small"  # 3x12x12 student, 3x16x16 teacher: inputs are resized for the teacher
    code, stdout, err = run(monkeypatch, capsys, "distill", student, "--teacher", zoo / "t0", *COMMON,
                            "--temperature", "3", "--alpha", "0.8", "--out", out)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    kd = metrics["distillation"]
    assert kd["method"] == "kd" and kd["temperature"] == 3.0 and kd["alpha"] == 0.8
    teacher_metrics = json.loads((zoo / "t0" / "metrics.json").read_text())
    assert kd["teacher_accuracy"] == [teacher_metrics["accuracy"]]  # same val split, same input format
    model, info = load_model(str(out), trust_code=True)
    assert info.input_size == (3, 12, 12) and model[0].out_channels == 4
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    epoch = [r for r in log if r["event"] == "epoch"][0]
    assert epoch["train_kd"] > 0 and epoch["train_ce"] > 0


def test_multi_teacher_weights_and_feature_and_dml(monkeypatch, capsys, tmp_path, zoo):
    student = f"{zoo / 'nets.py'}:small"
    code, _, err = run(monkeypatch, capsys, "distill", student, "--teacher", zoo / "t0", "--teacher", zoo / "t1",
                       "--teacher-weight", "1", "--teacher-weight", "3", *COMMON, "--out", tmp_path / "multi")
    assert code == 0, err
    kd = json.loads((tmp_path / "multi" / "metrics.json").read_text())["distillation"]
    assert kd["method"] == "multi" and kd["weights"] == [0.25, 0.75] and len(kd["teacher_accuracy"]) == 2

    code, _, err = run(monkeypatch, capsys, "distill", student, "--teacher", zoo / "t0", "--method", "feature",
                       "--feature-layer", "2:2", "--feature-layer", "5:5", *COMMON, "--out", tmp_path / "feat")
    assert code == 0, err
    kd = json.loads((tmp_path / "feat" / "metrics.json").read_text())["distillation"]
    assert kd["method"] == "feature" and kd["pairs"] == [["2", "2"], ["5", "5"]]

    code, _, err = run(monkeypatch, capsys, "distill", student, "--method", "dml", *COMMON, "--out", tmp_path / "dml")
    assert code == 0, err
    peer = json.loads((tmp_path / "dml" / "peer" / "metrics.json").read_text())
    assert peer["role"] == "dml peer" and 0 <= peer["accuracy"] <= 1
    peer_model, _ = load_model(str(tmp_path / "dml" / "peer"), trust_code=True)
    student_model, _ = load_model(str(tmp_path / "dml"), trust_code=True)
    assert not torch.equal(peer_model[0].weight, student_model[0].weight)  # two students, two sets of weights


@pytest.mark.parametrize("extra, fragment", [
    (("--teacher", "{zoo}/five"), "has 5 classes but the student"),
    (("--teacher", "{zoo}/missing"), "missing"),
    (("--teacher", "{zoo}/t0", "--teacher-weight", "1", "--teacher-weight", "2"), "2 --teacher-weight values for 1"),
    (("--method", "crd", "--teacher", "{zoo}/t0"), "unknown --method 'crd'"),
    ((), "needs at least one --teacher"),
    (("--teacher", "{zoo}/t0", "--teacher", "{zoo}/t1", "--method", "feature"), "takes one --teacher"),
    (("--teacher", "{zoo}/t0", "--feature-layer", "nope:5", "--method", "feature"), "no layer named 'nope'"),
])
def test_bad_distill_input_is_one_line_exit_2(monkeypatch, capsys, tmp_path, zoo, extra, fragment):
    out = tmp_path / "out"
    extra = [str(e).format(zoo=zoo) for e in extra]
    code, _, err = run(monkeypatch, capsys, "distill", f"{zoo / 'nets.py'}:small", *extra, *COMMON, "--out", out)
    assert code == 2 and err.startswith("error: ") and fragment in err and err.count("\n") == 1
    assert not out.exists()


def test_teacher_needs_trust_for_user_code(monkeypatch, capsys, tmp_path, zoo):
    args = [a for a in COMMON if a != "--trust-code"]
    code, _, err = run(monkeypatch, capsys, "distill", "resnet18", "--teacher", zoo / "t0", *args,
                       "--out", tmp_path / "o")
    assert code == 2 and "trust_code" in err and not (tmp_path / "o").exists()
