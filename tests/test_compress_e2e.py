"""`slimkit compress` end to end on digits: a tiny recipe, resume after SIGKILL, the HTML report, bad input."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cli_helpers import tiny_model_file

TINY_RECIPE = """
version: 1
name: tiny
budget: macs=0.5
steps:
  - {type: train, params: {epochs: EPOCHS, lr: 0.01}}
  - {type: prune, params: {criterion: l2, round_to: 1}}
  - {type: finetune, params: {epochs: 1, lr: 0.005, distill: true}}
  - {type: quantize, params: {max_drop: 5.0, calib_samples: 64, speed_guard: false}}
"""
STEP_NAMES = ["00-train", "01-prune", "02-finetune", "03-quantize"]


def cli(*args, **kw):
    env = dict(os.environ, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "slimkit.cli.main", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=kw.get("timeout", 600))


def _files(tmp: Path, epochs: int = 2) -> tuple[str, Path]:
    (tmp / "tiny.yaml").write_text(TINY_RECIPE.replace("EPOCHS", str(epochs)))
    return tiny_model_file(tmp), tmp / "tiny.yaml"


DATA_ARGS = ["--data", "digits", "--train-samples", "256", "--val-samples", "64"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compress")
    model, recipe = _files(tmp)
    out = tmp / "run"
    res = cli("compress", model, "--recipe", recipe, *DATA_ARGS, "--out", out)
    assert res.returncode == 0, res.stderr + res.stdout
    return out, res


def test_report_keys_and_budget(tiny_run):
    out, res = tiny_run
    report = json.loads((out / "report.json").read_text())
    for key in ("baseline", "final", "steps", "budget", "budget_met", "budget_detail", "layers", "conditions", "environment"):
        assert key in report
    for stage in [report["baseline"], report["final"], *report["steps"]]:
        for key in ("accuracy", "latency_ms", "macs", "params", "size_bytes"):
            assert stage[key] is not None
    assert [s["name"] for s in report["steps"]] == STEP_NAMES[1:]
    assert report["budget"] == "macs=0.5"
    assert report["budget_met"] is (report["final"]["macs"] <= 0.5 * report["baseline"]["macs"])
    assert report["budget_met"]
    assert report["final"]["size_bytes"] < report["steps"][1]["size_bytes"]  # int8 file is smaller than fp32
    # the accuracy figures are ONNX Runtime's, on the deployed files: re-run them here on the same val split
    import onnxruntime as ort

    from slimkit.data import load_data

    x, y = load_data("digits", (3, 16, 16), train_samples=256, val_samples=64, seed=0).val.tensors()
    sess = ort.InferenceSession(str(out / "final" / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert report["final"]["accuracy"] == pytest.approx(100.0 * float((logits.argmax(1) == y.numpy()).mean()))
    assert "budget macs=0.5 met" in res.stdout


def test_outputs_complete_and_reloadable(tiny_run):
    from slimkit.models import load_model_dir
    from slimkit.profile import count_macs

    out, _ = tiny_run
    assert not (out / "INCOMPLETE").exists()
    assert sorted(p.name for p in (out / "steps").iterdir()) == STEP_NAMES
    assert (out / "final" / "model.int8.onnx").is_file() and (out / "args.json").is_file()
    model, info = load_model_dir(out / "final" / "model", trust_code=True)
    report = json.loads((out / "report.json").read_text())
    assert count_macs(model, torch.randn(1, *info.input_size)).total == report["final"]["macs"]
    assert info.num_classes == 10 and info.input_size == (3, 16, 16)


def _find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], capture_output=True, timeout=900,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        return shutil.which("chromium")
    return None


def test_html_report_renders_in_chromium(tiny_run, tmp_path):
    out, _ = tiny_run
    browser = _find_chromium()
    if browser is None:
        pytest.skip("Chromium is not installed and could not be installed (needs root and apt-get)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    url = (out / "report.html").resolve().as_uri()
    dom = subprocess.run([browser, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<img") == 3 and dom.count("data:image/png;base64,") == 3  # curve, pareto, layers
    assert dom.count("<table>") >= 4 and "baseline" in dom and "03-quantize" in dom and "Budget macs=0.5 met" in dom
    shot = tmp_path / "shot.png"
    subprocess.run([browser, *flags, f"--screenshot={shot}", "--window-size=1200,2400", url], capture_output=True,
                   timeout=120)
    assert shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 20_000  # a rendered page, not a blank one


def test_resume_after_kill(tmp_path):
    model, recipe = _files(tmp_path, epochs=6)
    out = tmp_path / "run"
    args = [sys.executable, "-m", "slimkit.cli.main", "compress", model, "--recipe", str(recipe), *DATA_ARGS,
            "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    state = out / "state.json"
    while time.time() < deadline:
        if state.is_file() and json.loads(state.read_text())["completed"]:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / "INCOMPLETE").exists() and not (out / "report.json").exists()
    completed_before = [e["name"] for e in json.loads(state.read_text())["completed"]]
    assert completed_before and completed_before[0] == "00-train"
    train_mtime = (out / "steps" / "00-train" / "step.json").stat().st_mtime
    res = cli("compress", model, "--recipe", recipe, *DATA_ARGS, "--out", out, "--resume")
    assert res.returncode == 0, res.stderr
    assert [e["name"] for e in json.loads(state.read_text())["completed"]] == STEP_NAMES
    assert (out / "steps" / "00-train" / "step.json").stat().st_mtime == train_mtime  # not redone
    assert not (out / "INCOMPLETE").exists() and (out / "report.json").is_file()


def test_existing_run_needs_resume_or_overwrite(tiny_run, tmp_path):
    out, _ = tiny_run
    model, recipe = _files(tmp_path)
    res = cli("compress", model, "--recipe", recipe, *DATA_ARGS, "--out", out)
    assert res.returncode == 2 and "already exists" in res.stderr


@pytest.mark.parametrize("extra, message", [
    (["--recipe", "nope"], "unknown recipe 'nope'"),
    (["--budget", "speed=2"], "unknown budget kind"),
    (["--set", "train.epochs"], "malformed override"),
    (["--data", "imagefolder:/nonexistent"], "nonexistent"),
])
def test_bad_input_nothing_written(tmp_path, extra, message):
    model, _ = _files(tmp_path)
    out = tmp_path / "run"
    res = cli("compress", model, *DATA_ARGS[:1], "digits", "--out", out, *extra)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0]
    assert not out.exists()


def test_class_mismatch(tmp_path):
    from PIL import Image

    from slimkit.models import load_model, save_model_dir

    model_spec, recipe = _files(tmp_path)
    model, info = load_model(model_spec, num_classes=10, trust_code=True)
    save_model_dir(model, info, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "metrics.json").write_text('{"accuracy": 0.5, "epochs_completed": 1}')
    for cls in ("a", "b", "c"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "imgs" / cls / f"{i}.png")
    out = tmp_path / "run"
    res = cli("compress", tmp_path / "ckpt", "--recipe", recipe, "--data", f"imagefolder:{tmp_path / 'imgs'}", "--out", out)
    assert res.returncode == 2 and "trust_code" in res.stderr and not out.exists()  # built from user code
    res = cli("compress", tmp_path / "ckpt", "--recipe", recipe, "--data", f"imagefolder:{tmp_path / 'imgs'}", "--out", out,
              "--trust-code")
    assert res.returncode == 2 and "predicts 10 classes" in res.stderr and not out.exists()


def test_impossible_budget_names_closest_point(tmp_path):
    model, recipe = _files(tmp_path, epochs=1)
    out = tmp_path / "run"
    res = cli("compress", model, "--recipe", recipe, *DATA_ARGS, "--budget", "macs=0.01", "--out", out)
    assert res.returncode == 2
    assert "out of reach" in res.stderr and "closest measured macs ratio" in res.stderr
    assert (out / "INCOMPLETE").exists() and not (out / "report.json").exists()


def test_compare_runs(tiny_run, tmp_path):
    out, _ = tiny_run
    png, js = tmp_path / "cmp.png", tmp_path / "cmp.json"
    res = cli("compare", out, out, "--plot", png, "--json", js)
    assert res.returncode == 0, res.stderr
    rows = json.loads(js.read_text())["runs"]
    report = json.loads((out / "report.json").read_text())
    assert len(rows) == 2 and rows[0]["speedup"] == report["speedup"]
    assert png.read_bytes()[:4] == b"\x89PNG"
    bad = cli("compare", tmp_path)
    assert bad.returncode == 2 and "no report.json" in bad.stderr
