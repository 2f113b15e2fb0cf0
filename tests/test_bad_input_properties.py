"""Property-based tests (hypothesis): any budget, target, input size, recipe file, override or prune config
either parses into a valid object that round-trips, or raises BadInputError: never another exception.
Through the CLI, bad input exits with code 2, prints one line, and writes nothing.

Most examples call the parsers in-process (fast); a few run the CLI in-process for the exit code and the
files left behind, and two run it as a subprocess, the way a user does.
"""

import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cli_helpers import run_cli_code, tiny_model_file
from slimkit.compress.budget import BUDGET_KINDS, Budget, parse_budget
from slimkit.compress.prune import PruneConfig, parse_target
from slimkit.compress.recipe import Recipe, load_recipe
from slimkit.compress.steps import check_step_params
from slimkit.errors import BadInputError
from slimkit.utils.parse import parse_input_size

FAST = settings(max_examples=300, deadline=None)
CLI = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.integers(-10**20, 10**20).map(str),
                    st.decimals(allow_nan=False, allow_infinity=False, places=4).map(str), st.text(max_size=6))
kinds = st.sampled_from([*BUDGET_KINDS, "MACS", "speed", "", "latency_"])
budget_like = st.one_of(st.text(max_size=20), st.builds(
    lambda k, sep, n, unit: f"{k}{sep}{n}{unit}", kinds, st.sampled_from(["=", " = ", ":", "=="]), numbers,
    st.sampled_from(["", "%", "ms", " ms", "MS", "s"])))
size_like = st.one_of(st.text(max_size=16), st.builds(
    lambda a, b, c, sep: sep.join(map(str, (a, b, c))), st.integers(-2, 10**5), st.integers(-2, 10**5),
    st.integers(-2, 10**5), st.sampled_from(["x", "X", ",", " x ", "*", ""])))


def _parses(fn, text):
    """fn(text), or None when it raised BadInputError; any other exception fails the test."""
    try:
        return fn(text)
    except BadInputError as exc:
        assert "\n" not in str(exc) and str(exc)  # one line, naming the problem
        return None


@FAST
@given(budget_like)
def test_any_budget_parses_to_a_valid_budget_or_a_bad_input_error(text):
    budget = _parses(parse_budget, text)
    if budget is None:
        return
    assert budget.kind in BUDGET_KINDS
    if budget.absolute_ms is not None:
        assert budget.kind == "latency" and 0 < budget.absolute_ms < math.inf and budget.fraction is None
    else:
        assert 0 < budget.fraction < 1
    assert parse_budget(str(budget)) == budget  # what a run records (state.json, report) reads back exactly


@FAST
@given(budget_like)
def test_any_prune_target_parses_or_is_refused(text):
    target = _parses(parse_target, text)
    if target is not None:
        assert target.kind in ("macs", "params", "latency") and 0 < target.ratio < 1
        assert parse_target(str(target)) == target


@FAST
@given(st.one_of(size_like, st.lists(st.integers(-3, 10**4), max_size=4)))
def test_any_input_size_parses_or_is_refused(value):
    size = _parses(parse_input_size, value)
    if size is not None:
        c, h, w = size
        assert 1 <= c <= 64 and 1 <= h <= 8192 and 1 <= w <= 8192


leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=8))
tree = st.recursive(leaf, lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=6), c, max_size=3)),
                    max_leaves=8)
param_values = st.one_of(leaf, st.sampled_from([1, 2, 0.01, "l1", "taylor", "entropy", 8, True, 17, 0.5]))
param_keys = st.sampled_from(["epochs", "lr", "batch_size", "optimizer", "criterion", "round_to", "target", "method",
                              "max_drop", "calib_samples", "distill", "alpha", "temperature", "opset", "bogus"])
step = st.fixed_dictionaries(
    {"type": st.sampled_from(["train", "prune", "finetune", "quantize", "export", "shrink"])},
    optional={"name": st.one_of(st.text(max_size=5), st.integers()),
              "params": st.one_of(st.dictionaries(param_keys, param_values, max_size=3), tree)})
recipe_like = st.one_of(tree, st.fixed_dictionaries(
    {"name": st.one_of(st.text(max_size=5), st.integers()), "steps": st.lists(step, max_size=4)},
    optional={"version": st.one_of(st.integers(-3, 3), st.text(max_size=3)), "budget": st.one_of(budget_like, st.floats()),
              "description": tree, "extra": tree}))


@FAST
@given(recipe_like, st.sampled_from(["yaml", "json", "garbage"]))
def test_any_recipe_file_loads_and_round_trips_or_is_refused(data, form):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        text = {"yaml": yaml.safe_dump, "json": json.dumps}.get(form, lambda d: yaml.safe_dump(d)[:-3] + "{[")(data)
        path.write_text(text)
        recipe = _parses(load_recipe, str(path))
    if recipe is None:
        return
    assert Recipe.model_validate(yaml.safe_load(recipe.to_yaml())) == recipe
    _parses(check_step_params, recipe)  # the params of every step: checked before a run writes anything


overrides = st.lists(st.one_of(st.text(max_size=16), st.builds(
    lambda s, k, v: f"{s}.{k}={v}", st.sampled_from(["train", "prune", "finetune", "quantize", "distill", ""]),
    param_keys, st.one_of(st.text(max_size=6), st.sampled_from(["[1", "{", ": :", "-1", "3", "0.5", "magic", "nan"])))),
    max_size=3)


@FAST
@given(st.sampled_from(["default", "max-speed", "min-size", "accuracy-first"]), overrides)
def test_any_override_applies_or_is_refused(name, items):
    recipe = _parses(load_recipe(name).override, items)
    if recipe is not None:
        _parses(check_step_params, recipe)


config_fields = {
    "target": st.one_of(st.none(), budget_like), "ratio": st.one_of(st.none(), st.floats(), st.text(max_size=3)),
    "criterion": st.one_of(st.text(max_size=5), st.sampled_from(["l1", "lrp"]), st.integers()),
    "allocation": st.one_of(st.text(max_size=5), st.sampled_from(["global", "uniform"]), st.none()),
    "round_to": st.one_of(st.none(), st.integers(-5, 300), st.floats(), st.text(max_size=3)),
    "tolerance": st.one_of(st.floats(), st.text(max_size=3), st.none()), "max_layer_prune": st.one_of(st.floats(), st.none()),
    "ignore": st.one_of(st.lists(st.text(max_size=3)), st.text(max_size=3), st.integers()),
    "calib_batches": st.one_of(st.integers(-2, 5), st.text(max_size=2), st.none()),
    "latency_threads": st.one_of(st.integers(-2, 5), st.floats()), "unstructured": st.one_of(st.none(), st.floats()),
    "seed": st.one_of(st.integers(), st.text(max_size=2)), "version": st.one_of(st.integers(-2, 3), st.text(max_size=2)),
    "bogus": st.integers(),
}


@FAST
@given(st.fixed_dictionaries({}, optional=config_fields))
def test_any_prune_config_file_is_valid_and_round_trips_or_is_refused(data):
    text = json.dumps(data)  # what `slimkit prune --config FILE` reads
    config = _parses(PruneConfig.from_json, text)
    if config is not None:
        assert PruneConfig.from_json(config.to_json()) == config


# ---- the CLI: exit code 2, one line, nothing written ------------------------------------------------------------

def _refused(fn, value) -> bool:
    """fn(value) raised BadInputError (a validator that returns None on success is not refusing)."""
    try:
        fn(value)
    except BadInputError:
        return True
    return False


bad_budget = budget_like.filter(lambda t: _refused(parse_budget, t))
bad_size = size_like.filter(lambda t: _refused(parse_input_size, t))
bad_override = st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["train.epochs", "train.lr", "prune.round_to",
                                                                    "quantize.method", "finetune.alpha"]),
                         st.sampled_from(["-1", "[1", "magic", "{", "0", "2.5x"]))


@pytest.fixture(scope="module")
def model_spec(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("model"))


def _assert_refused_cleanly(code: int, err: str, out: Path) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert not out.exists()  # nothing half-written


@CLI
@given(st.one_of(bad_budget.map(lambda b: ["--budget", b]), bad_size.map(lambda s: ["--input-size", s]),
                 st.lists(bad_override, min_size=1, max_size=2).map(lambda items: [a for i in items for a in ("--set", i)])))
def test_compress_refuses_bad_arguments_in_one_line(monkeypatch, capsys, model_spec, bad):
    if bad[0] == "--set":
        recipe = _parses(load_recipe("default").override, bad[1::2])
        assume(recipe is None or _refused(check_step_params, recipe))  # some overrides are fine ("train.lr=0.5")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        capsys.readouterr()
        code = run_cli_code(monkeypatch, "compress", model_spec, "--data", "digits", "--out", out, *bad)
        _assert_refused_cleanly(code, capsys.readouterr().err, out)


@CLI
@given(st.one_of(bad_budget.filter(lambda t: _refused(parse_target, t)).map(lambda t: ["--target", t]),
                 bad_size.map(lambda s: ["--input-size", s])))
def test_prune_refuses_bad_arguments_in_one_line(monkeypatch, capsys, model_spec, bad):
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "pruned"
        capsys.readouterr()
        code = run_cli_code(monkeypatch, "prune", model_spec, "--trust-code", "--out", out, *bad)
        _assert_refused_cleanly(code, capsys.readouterr().err, out)


@CLI
@given(recipe_like)
def test_compress_refuses_bad_recipe_files_in_one_line(monkeypatch, capsys, model_spec, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_text(yaml.safe_dump(data))
        recipe = _parses(load_recipe, str(path))
        assume(recipe is None or _refused(check_step_params, recipe))
        out = Path(tmp) / "run"
        capsys.readouterr()
        code = run_cli_code(monkeypatch, "compress", model_spec, "--recipe", path, "--data", "digits", "--out", out)
        _assert_refused_cleanly(code, capsys.readouterr().err, out)


@pytest.mark.parametrize("args", [
    ["compress", "MODEL", "--budget", "latency=1e400ms"],  # not finite
    ["compress", "MODEL", "--set", "train.epochs=[1"],  # not YAML
    ["prune", "MODEL", "--trust-code", "--config", "CONFIG"],  # round_to: "x"
])
def test_subprocess_cli_exit_code_2_one_line(tmp_path, model_spec, args):
    (tmp_path / "config.json").write_text('{"target": "macs=0.5", "round_to": "x"}')
    out = tmp_path / "out"
    argv = [str(tmp_path / "config.json") if a == "CONFIG" else model_spec if a == "MODEL" else a for a in args]
    res = subprocess.run([sys.executable, "-m", "slimkit.cli.main", *argv, "--out", str(out)], capture_output=True,
                         text=True, timeout=300)
    _assert_refused_cleanly(res.returncode, res.stderr, out)


def test_budget_str_reads_back_exactly():
    for text in ("macs=0.00001", "latency=2519207ms", "params=0.1234567"):
        assert parse_budget(str(parse_budget(text))) == parse_budget(text)
    assert str(Budget("latency", absolute_ms=4.0)) == "latency=4ms" and str(Budget("macs", fraction=0.5)) == "macs=0.5"
