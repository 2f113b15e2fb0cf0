"""Recipes: a versioned, validated list of steps (YAML/JSON), overridable from the CLI.

Built-in recipes live as YAML files beside this module (`recipes/*.yaml`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from slimkit.errors import BadInputError
from slimkit.utils.registry import Registry

__all__ = ["Recipe", "Step", "load_recipe", "builtin_recipes", "RECIPE_VERSION", "StepType", "STEPS", "register_step"]

RECIPE_VERSION = 1
StepType = str  # a name in STEPS
_BUILTIN_STEPS = "slimkit.compress.steps"
# The step registry: a recipe may name any registered step. The built-ins load with their (torch-heavy) module.
STEPS: Registry = Registry("compress step", modules={
    **{name: _BUILTIN_STEPS for name in ("train", "quantize", "export", "deploy")},
    **{name: "slimkit.compress.cut_steps" for name in ("prune", "finetune")}})


def register_step(name: str, *, check: Callable[[dict[str, Any]], Any] | None = None) -> Callable:
    """Register `fn(ctx, model, params, work_dir) -> StepResult`: recipes may then name it as a step type.

    `check(params)` validates the step's params before a run writes anything (raise BadInputError).
    """
    return STEPS.register(name, check=check)


class Step(BaseModel):
    """One step; `params` are checked by the step's own implementation when it runs."""

    model_config = ConfigDict(extra="forbid")
    type: StepType
    name: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("type")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in STEPS:
            raise ValueError(STEPS.unknown_message(value))
        return STEPS.canonical(value)

    @property
    def label(self) -> str:
        return self.name or self.type


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = RECIPE_VERSION
    name: str
    description: str = ""
    budget: str | None = None  # default budget when the CLI gives none
    # Top-1 points the whole run may lose (pruning, fine-tuning and int8 together), and what gives when the
    # budget cannot be met within it: `budget` (meet it, report the drop) or `accuracy` (stay within it).
    max_drop: float | None = Field(None, ge=0.0, lt=100.0)
    priority: Literal["budget", "accuracy"] = "budget"
    steps: list[Step]

    @model_validator(mode="after")
    def _check(self) -> "Recipe":
        from slimkit.compress.budget import parse_budget

        if self.version > RECIPE_VERSION:
            raise ValueError(f"recipe version {self.version} is newer than this slimkit reads ({RECIPE_VERSION})")
        if not self.steps:
            raise ValueError("a recipe needs at least one step")
        labels = [s.label for s in self.steps]
        if len(set(labels)) != len(labels):
            raise ValueError(f"step names must be unique, got {labels}; give repeated steps a `name`")
        if self.budget is not None:
            parse_budget(self.budget)
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(exclude_none=True), sort_keys=False)

    def with_limit(self, max_drop: float | None = None, priority: str | None = None) -> "Recipe":
        """A new recipe with the run's accuracy limit and priority replaced (None keeps the recipe's)."""
        data = self.model_dump()
        data.update({k: v for k, v in (("max_drop", max_drop), ("priority", priority)) if v is not None})
        return _validate(data, f"recipe {self.name!r} with --max-drop/--priority")

    def override(self, overrides: list[str]) -> "Recipe":
        """Apply `STEP.KEY=VALUE` overrides (VALUE parsed as YAML); returns a new recipe."""
        data = self.model_dump()
        for item in overrides:
            path, sep, raw = item.partition("=")
            step_label, dot, key = path.partition(".")
            if not sep or not dot or not key:
                raise BadInputError(f"malformed override {item!r}: expected STEP.KEY=VALUE, e.g. finetune.epochs=3")
            steps = [s for s in data["steps"] if (s.get("name") or s["type"]) == step_label]
            if not steps:
                raise BadInputError(f"override {item!r} names no step of recipe {self.name!r}")
            try:
                steps[0]["params"][key] = yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise BadInputError(f"override {item!r}: the value is not valid YAML ({str(exc).splitlines()[0]})") from exc
        return _validate(data, f"recipe {self.name!r} with overrides")


    def with_target_cpu(self, target: str) -> "Recipe":
        """A new recipe whose int8 steps (quantize of kind ptq or qat) build for `target` (see slimkit.utils.cpu)."""
        from slimkit.utils.cpu import TARGET_CPUS

        if target not in TARGET_CPUS:
            raise BadInputError(f"unknown --target-cpu {target!r}; choose {', '.join(TARGET_CPUS)}")
        data = self.model_dump()
        for step in data["steps"]:
            if step["type"] == "quantize" and step["params"].get("kind", "ptq") in ("ptq", "qat"):
                step["params"]["target_cpu"] = target
        return _validate(data, f"recipe {self.name!r} for target CPU {target}")


def _validate(data: Any, where: str) -> Recipe:
    if not isinstance(data, dict):
        raise BadInputError(f"{where} is not a mapping")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise BadInputError(f"{where} is invalid: {loc + ': ' if loc else ''}{first['msg']}") from exc
    except BadInputError as exc:
        raise BadInputError(f"{where} is invalid: {exc}") from exc


def builtin_recipes() -> dict[str, str]:
    """Built-in recipe name -> YAML text."""
    folder = resources.files("slimkit.compress") / "recipes"
    return {p.name[:-5]: p.read_text() for p in sorted(folder.iterdir(), key=lambda p: p.name) if p.name.endswith(".yaml")}


def load_recipe(name_or_path: str) -> Recipe:
    """A built-in recipe by name, or a YAML/JSON file."""
    builtins = builtin_recipes()
    if name_or_path in builtins:
        text, where = builtins[name_or_path], f"built-in recipe {name_or_path!r}"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise BadInputError(f"unknown recipe {name_or_path!r}: not a built-in ({', '.join(builtins)}) nor a file")
        text, where = path.read_text(), f"recipe file {path}"
    try:
        data = yaml.safe_load(text)  # JSON is YAML too
    except yaml.YAMLError as exc:
        raise BadInputError(f"{where} is not valid YAML/JSON: {str(exc).splitlines()[0]}") from exc
    return _validate(data, where)
