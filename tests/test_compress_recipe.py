"""Budgets and recipes: parsing, validation, round trips, overrides, and the `recipes` CLI."""

import subprocess
import sys

import pytest
import yaml

from slimkit.compress.budget import Budget, parse_budget
from slimkit.compress.recipe import Recipe, builtin_recipes, load_recipe
from slimkit.errors import BadInputError


@pytest.mark.parametrize("text, expected", [
    ("latency=0.25", Budget("latency", fraction=0.25)),
    ("macs=50%", Budget("macs", fraction=0.5)),
    ("latency=4ms", Budget("latency", absolute_ms=4.0)),
    (" size = 0.1 ", Budget("size", fraction=0.1)),
])
def test_parse_budget(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize("text, message", [
    ("latency", "malformed budget"), ("speed=0.5", "unknown budget kind"), ("macs=1.5", "strictly between 0 and 1"),
    ("macs=4ms", "only latency budgets"), ("latency=0ms", "must be positive"),
])
def test_bad_budgets(text, message):
    with pytest.raises(BadInputError, match=message):
        parse_budget(text)


def test_budget_limits():
    assert Budget("latency", fraction=0.25).limit(8.0) == 2.0
    assert Budget("latency", absolute_ms=4.0).met(10.0, 3.9)
    assert not Budget("macs", fraction=0.5).met(100, 51)
    assert Budget("latency", absolute_ms=2.0).fraction_of(8.0) == 0.25


def test_builtins_load_and_round_trip():
    names = set(builtin_recipes())
    assert names == {"default", "max-speed", "min-size", "accuracy-first"}
    for name in names:
        recipe = load_recipe(name)
        again = Recipe.model_validate(yaml.safe_load(recipe.to_yaml()))
        assert again == recipe
        assert recipe.model_dump_json() and Recipe.model_validate_json(recipe.model_dump_json()) == recipe


@pytest.mark.parametrize("text, message", [
    ("version: 1\nname: x\nsteps: []\n", "at least one step"),
    ("version: 1\nname: x\nsteps: [{type: shrink}]\n", "steps.0.type"),
    ("version: 1\nname: x\nsteps: [{type: train, epochs: 3}]\n", "steps.0.epochs"),
    ("version: 9\nname: x\nsteps: [{type: train}]\n", "newer than this slimkit"),
    ("version: 1\nname: x\nsteps: [{type: train}, {type: train}]\n", "unique"),
    ("version: 1\nname: x\nbudget: fast\nsteps: [{type: train}]\n", "malformed budget"),
    ("name: [unclosed\n", "not valid YAML"),
    ("- just\n- a list\n", "not a mapping"),
])
def test_malformed_recipes(tmp_path, text, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(BadInputError, match=message):
        load_recipe(str(path))


def test_unknown_recipe():
    with pytest.raises(BadInputError, match="unknown recipe 'fastest'"):
        load_recipe("fastest")


def test_overrides():
    recipe = load_recipe("default").override(["finetune.epochs=7", "prune.round_to=16", "quantize.method=entropy"])
    params = {s.type: s.params for s in recipe.steps}
    assert params["finetune"]["epochs"] == 7 and params["prune"]["round_to"] == 16
    assert params["quantize"]["method"] == "entropy"
    assert load_recipe("default").steps[2].params["epochs"] == 10  # the original is unchanged
    with pytest.raises(BadInputError, match="names no step"):
        load_recipe("default").override(["distill.epochs=2"])
    with pytest.raises(BadInputError, match="malformed override"):
        load_recipe("default").override(["epochs=2"])


def test_recipes_cli_lists_and_prints():
    listing = subprocess.run([sys.executable, "-m", "slimkit.cli.main", "recipes"], capture_output=True, text=True)
    assert listing.returncode == 0 and "max-speed" in listing.stdout and "accuracy-first" in listing.stdout
    shown = subprocess.run([sys.executable, "-m", "slimkit.cli.main", "recipes", "min-size"], capture_output=True, text=True)
    assert Recipe.model_validate(yaml.safe_load(shown.stdout)) == load_recipe("min-size")
