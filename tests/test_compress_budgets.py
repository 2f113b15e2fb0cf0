"""`slimkit compress` run end to end for every budget kind and every built-in recipe (tiny model, digits).

Fast: one run per budget kind (latency, size, params; macs is tests/test_compress_e2e.py's), with small recipes.
Slow: the built-in recipes max-speed, min-size and accuracy-first, with fewer epochs and samples.
File sizes, params and MACs are exact, so those budgets are asserted as ceilings. A latency is a measurement:
the test checks that the verdict follows from the figures, that they were timed interleaved on ONNX Runtime
(spied on in this process), and that the pruner's own measured ratio met its target.
"""

import json
from pathlib import Path

import pytest

from cli_helpers import run_cli_code, tiny_model_file

DATA_ARGS = ["--data", "digits", "--train-samples", "256", "--val-samples", "64"]
STEPS = {
    "train": "{type: train, params: {epochs: 1, lr: 0.01}}",
    "prune": "{type: prune, params: {criterion: l2, round_to: ROUND}}",
    "finetune": "{type: finetune, params: {epochs: 1, lr: 0.005}}",
    "quantize": "{type: quantize, params: {max_drop: 50.0, calib_samples: 64, speed_guard: false}}",
}


def _recipe(tmp: Path, steps: list[str], round_to: int = 1) -> Path:
    path = tmp / "recipe.yaml"
    body = "".join(f"  - {STEPS[s].replace('ROUND', str(round_to))}\n" for s in steps)
    path.write_text(f"version: 1\nname: small\nsteps:\n{body}")
    return path


def _compress(monkeypatch, tmp: Path, recipe, budget: str | None, *extra) -> dict:
    out = tmp / "run"
    args = ["compress", tiny_model_file(tmp), "--recipe", recipe, *DATA_ARGS, "--out", out, *extra]
    code = run_cli_code(monkeypatch, *args, *(["--budget", budget] if budget else []))
    assert code == 0
    assert not (out / "INCOMPLETE").exists()
    return json.loads((out / "report.json").read_text())


def _assert_ceiling_met(report: dict, key: str, fraction: float) -> None:
    base, final = report["baseline"][key], report["final"][key]
    assert final <= fraction * base, (key, final, base)
    assert report["budget_met"] is True and report["budget_detail"]["final"] == final


def _assert_verdict_follows_from_figures(report: dict) -> None:
    detail = report["budget_detail"]
    assert report["budget_met"] == (detail["final"] <= detail["limit"])
    assert detail["final"] == pytest.approx(report["final"]["latency_ms"])


class _TimingSpy:
    """Records, for every measure_interleaved call, which candidate ran in which order and whether an
    ONNX Runtime session ran inside each call."""

    def __init__(self, monkeypatch):
        import onnxruntime as ort

        import slimkit.profile.timing as timing

        self.calls: list[tuple[list[str], list[str], int]] = []  # (names, call order, ORT runs)
        self._ort_runs = 0
        original, run = timing.measure_interleaved, ort.InferenceSession.run

        def counting_run(sess, *a, **k):
            self._ort_runs += 1
            return run(sess, *a, **k)

        def spy(candidates, **kw):
            order: list[str] = []
            wrapped = {n: (lambda n=n, fn=fn: (order.append(n), fn())[1]) for n, fn in candidates.items()}
            before = self._ort_runs
            result = original(wrapped, **kw)
            self.calls.append((list(candidates), order, self._ort_runs - before))
            return result

        monkeypatch.setattr(ort.InferenceSession, "run", counting_run)
        monkeypatch.setattr(timing, "measure_interleaved", spy)

    def stage_timing(self, stage_names: list[str]) -> tuple[list[str], int]:
        return next((order, runs) for names, order, runs in self.calls if names == stage_names)


def test_latency_budget_end_to_end(monkeypatch, tmp_path):
    spy = _TimingSpy(monkeypatch)
    report = _compress(monkeypatch, tmp_path, _recipe(tmp_path, ["train", "prune"], round_to=8), "latency=0.5")
    assert report["budget"] == "latency=0.5"
    _assert_verdict_follows_from_figures(report)
    prune = report["steps"][0]["details"]["prune"]
    target = float(prune["target"].split("=")[1])
    assert prune["target"].startswith("latency=")
    # the search's own promise: the target within tolerance, or (this 0.02 ms net can meet a per-call floor on a
    # busy machine) the closest cut kept with the miss named in its notes, as compress asks it to
    out_of_reach = [n for n in prune["notes"] if "out of reach" in n and "closest cut was kept" in n]
    assert prune["achieved"] <= target * 1.1 or out_of_reach
    # every stage was timed on ONNX Runtime in alternating rounds: A B A B ..., never A A ... B B ...
    names = ["baseline", "01-prune"]
    order, ort_runs = spy.stage_timing(names)
    visits = [n for i, n in enumerate(order) if i == 0 or order[i - 1] != n]
    assert len(visits) >= 6 and visits == names * (len(visits) // 2)
    assert ort_runs == len(order)  # each timed call ran an ONNX Runtime session
    assert report["conditions"]["repetitions"] == min(s["latency"]["repetitions"] for s in [report["baseline"], *report["steps"]])


def test_size_budget_end_to_end(monkeypatch, tmp_path):
    report = _compress(monkeypatch, tmp_path, _recipe(tmp_path, ["train", "prune", "quantize"]), "size=0.25")
    _assert_ceiling_met(report, "size_bytes", 0.25)
    final_file = Path(report["final"]["onnx"])
    assert final_file.name == "model.int8.onnx" and final_file.stat().st_size == report["final"]["size_bytes"]
    derived = report["steps"][0]["details"]["target_from"]["int8_size"]  # measured, not assumed 4x
    assert derived["fp32_bytes"] == report["baseline"]["size_bytes"] and derived["int8_bytes"] < derived["fp32_bytes"]


def test_unreachable_size_budget_is_refused_with_the_reason(monkeypatch, tmp_path, capsys):
    out = tmp_path / "run"
    recipe = _recipe(tmp_path, ["train", "prune", "quantize"])
    code = run_cli_code(monkeypatch, "compress", tiny_model_file(tmp_path), "--recipe", recipe, *DATA_ARGS, "--out", out,
                   "--budget", "size=0.02")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "size budget size=0.02 is out of reach" in err[0]
    assert (out / "INCOMPLETE").exists() and not (out / "report.json").exists()


def test_params_budget_end_to_end(monkeypatch, tmp_path):
    report = _compress(monkeypatch, tmp_path, _recipe(tmp_path, ["train", "prune", "finetune"], round_to=8),
                       "params=0.4")
    _assert_ceiling_met(report, "params", 0.4)
    assert report["steps"][0]["details"]["config"]["round_to"] == 8


SLOW_OVERRIDES = ["--set", "train.epochs=1", "--set", "finetune.epochs=1", "--set", "quantize.calib_samples=64"]


@pytest.mark.slow
def test_max_speed_recipe(monkeypatch, tmp_path):
    # the recipe's own latency=0.15 is below what a 1.4 MMAC model can reach at 16x16 (per-call overhead)
    report = _compress(monkeypatch, tmp_path, "max-speed", "latency=0.5", *SLOW_OVERRIDES)
    _assert_verdict_follows_from_figures(report)
    prune = report["steps"][0]["details"]
    assert prune["config"]["round_to"] == 16 and "int8_gain" in prune["target_from"]
    assert [s["name"] for s in report["steps"]] == ["01-prune", "02-finetune", "03-quantize"]


@pytest.mark.slow
def test_min_size_recipe(monkeypatch, tmp_path):
    report = _compress(monkeypatch, tmp_path, "min-size", "size=0.25", *SLOW_OVERRIDES)
    _assert_ceiling_met(report, "size_bytes", 0.25)
    assert report["steps"][-1]["details"]["quantize"]["config"]["method"] == "percentile"


@pytest.mark.slow
def test_accuracy_first_recipe_meets_its_own_budget(monkeypatch, tmp_path):
    report = _compress(monkeypatch, tmp_path, "accuracy-first", None, *SLOW_OVERRIDES)
    assert report["budget"] == "macs=0.5"
    _assert_ceiling_met(report, "macs", 0.5)
    assert report["steps"][0]["details"]["config"]["criterion"] == "taylor"


def _int8_measured_slower(monkeypatch):
    import slimkit.compress.quantize.pipeline as qpipe

    real = qpipe.final_check

    def slower(latency, fp32_path, result, margin=0.03):
        result = real(latency, fp32_path, result, margin)
        result.speedup, result.slower_than_fp32, result.verdict = 0.5, True, "slower"
        return result

    monkeypatch.setattr(qpipe, "final_check", slower)


def test_int8_measured_slower_hands_on_the_fp32_model(monkeypatch, tmp_path):
    """When the quantize step's timing says int8 is slower than fp32, the stage (and so the final deployable)
    is the fp32 model, and the report says why; the deploy step then has no int8 to convert."""
    _int8_measured_slower(monkeypatch)
    report = _compress(monkeypatch, tmp_path, _recipe(tmp_path, ["train", "quantize"]), None)
    step = report["steps"][-1]
    assert "0.50x of fp32" in step["details"]["kept_fp32"]
    assert report["final"]["onnx"].endswith("final/model.onnx") and (tmp_path / "run" / "final" / "model.onnx").is_file()
    assert not list((tmp_path / "run" / "final").glob("*.int8.onnx"))
    fp32_bytes = (tmp_path / "run" / "steps" / "01-quantize" / "onnx" / "model.onnx").stat().st_size
    assert step["size_bytes"] == fp32_bytes


def test_int8_measured_slower_stays_under_a_size_budget(monkeypatch, tmp_path):
    """A size budget needs int8's bytes: a slower int8 model is kept (and said so), not swapped for fp32."""
    _int8_measured_slower(monkeypatch)
    report = _compress(monkeypatch, tmp_path, _recipe(tmp_path, ["train", "quantize"]), "size=0.5")
    step = report["steps"][-1]
    assert "kept_fp32" not in step["details"] and "size budget" in step["details"]["kept_int8_slower"]
    assert list((tmp_path / "run" / "final").glob("*.int8.onnx"))
    _assert_ceiling_met(report, "size_bytes", 0.5)
