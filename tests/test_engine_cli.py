"""`slimkit train` end to end, and its bad-input contract: one line on stderr, exit code 2, nothing lost."""

import json
import os

import pytest
import torch

from cli_helpers import run_cli as run
from slimkit.models import load_model

TINY = '''
import torch.nn as nn

def tiny_cnn(num_classes=10, in_chans=3):
    return nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, num_classes))
tiny_cnn.input_size = (3, 16, 16)
'''


@pytest.fixture
def tiny(tmp_path):
    (tmp_path / "tiny.py").write_text(TINY)
    return f"{tmp_path / 'tiny.py'}:tiny_cnn"


COMMON = ("--data", "digits", "--train-samples", "256", "--val-samples", "64", "--batch-size", "32")


def test_train_writes_a_complete_run_directory(monkeypatch, capsys, tmp_path, tiny):
    out = tmp_path / "run"
    code, stdout, err = run(monkeypatch, capsys, "train", tiny, *COMMON, "--epochs", "2", "--lr", "0.01",
                            "--input-size", "1x12x12", "--label-smoothing", "0.1", "--out", out)
    assert code == 0, err
    assert "val top-1" in stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == ["architecture.json", "args.json", "checkpoint.safetensors", "metrics.json", "model.safetensors",
                     "train_log.jsonl"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs_completed"] == 2 and 0 <= metrics["accuracy"] <= 1
    assert metrics["config"]["label_smoothing"] == 0.1 and metrics["num_train"] == 256
    args = json.loads((out / "args.json").read_text())
    assert args["command"] == "train" and args["args"]["input_size"] == [1, 12, 12]
    model, info = load_model(str(out), trust_code=True)
    assert info.input_size == (1, 12, 12) and model[0].in_channels == 1  # --input-size sets the channels
    assert model(torch.zeros(1, 1, 12, 12)).shape == (1, 10)


def test_config_file_with_flag_override(monkeypatch, capsys, tmp_path, tiny):
    (tmp_path / "cfg.yaml").write_text("epochs: 1\nlr: 0.02\noptimizer: sgd\n")
    code, _, err = run(monkeypatch, capsys, "train", tiny, *COMMON, "--config", tmp_path / "cfg.yaml",
                       "--lr", "0.05", "--out", tmp_path / "run")
    assert code == 0, err
    cfg = json.loads((tmp_path / "run" / "metrics.json").read_text())["config"]
    assert (cfg["epochs"], cfg["lr"], cfg["optimizer"]) == (1, 0.05, "sgd")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("extra, fragment", [
    (("--data", "nosuch"), "unknown data source"),
    (("--data", "synthetic:many"), "synthetic:N needs an integer"),
    (("--lr", "-1"), "lr must be > 0"),
    (("--optimizer", "lamb"), "optimizer must be one of"),
    (("--input-size", "3x16"), "malformed input size"),
    (("--config", "/nonexistent/cfg.yaml"), "cannot read train config"),
    (("--weights", "/nonexistent/w.pt"), "does not exist"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(monkeypatch, capsys, tmp_path, tiny, extra, fragment):
    out = tmp_path / "run"
    code, _, err = run(monkeypatch, capsys, "train", tiny, *COMMON, "--epochs", "1", *extra, "--out", out)
    assert code == 2
    assert err.startswith("error: ") and fragment in err and err.count("\n") == 1
    assert not out.exists()


def test_unsafe_weights_are_refused_unexecuted(monkeypatch, capsys, tmp_path, tiny):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"0.weight": Evil()}, tmp_path / "evil.pt")
    code, _, err = run(monkeypatch, capsys, "train", tiny, *COMMON, "--weights", tmp_path / "evil.pt",
                       "--out", tmp_path / "b")
    assert code == 2 and "needs full unpickling" in err and err.count("\n") == 1
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "b").exists()


def test_existing_run_needs_resume_or_overwrite(monkeypatch, capsys, tmp_path, tiny):
    out = tmp_path / "run"
    assert run(monkeypatch, capsys, "train", tiny, *COMMON, "--epochs", "1", "--out", out)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, _, err = run(monkeypatch, capsys, "train", tiny, *COMMON, "--epochs", "1", "--out", out)
    assert code == 2 and "already holds a run" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # --resume with no flags takes the checkpoint's settings: the finished run stays as it was.
    code, _, err = run(monkeypatch, capsys, "train", tiny, *COMMON, "--out", out, "--resume")
    assert code == 0, err
    assert (out / "model.safetensors").read_bytes() == before["model.safetensors"]
