"""The two halves of a split as ordinary slimkit model directories (architecture.json + model.safetensors).

A half is a torch.fx graph cut out of its parent model, so no constructor builds it by name. Its ModelInfo
(source "split-part") says how to make one: rebuild the parent from the parent's own ModelInfo, cut it after
the same layer with the same bottleneck, keep the device or the server half. `load_model_dir` then patches
module shapes and loads the weights as for any model directory, so a pruned parent reloads too, and every
slimkit command that takes a model directory takes a half.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import torch
import torch.nn as nn

from slimkit.deploy.edge.split import DevicePart, ServerPart, SplitConfig, build_split
from slimkit.errors import SlimkitError
from slimkit.models.modeldir import DERIVED_SOURCES, load_model_dir, rebuild_model, save_model_dir
from slimkit.models.resolve import ModelInfo

__all__ = ["PART_SOURCE", "part_info", "save_part", "rebuild_part"]

PART_SOURCE = "split-part"


def part_info(part: str, parent: ModelInfo, cfg: SplitConfig, shapes: dict) -> ModelInfo:
    """The ModelInfo of the `part` ("device" or "server") half of a split of `parent`."""
    recipe = {"part": part, "parent": parent.to_dict(), "parent_input_size": list(parent.input_size),
              "split": dataclasses.asdict(cfg)}
    if part == "device":
        return ModelInfo(PART_SOURCE, "device", recipe, tuple(parent.input_size), parent.mean, parent.std)
    channels = shapes["code_shape"][0]  # the server reads integer symbols: no normalisation
    return ModelInfo(PART_SOURCE, "server", recipe, tuple(shapes["code_shape"]), (0.0,) * channels,
                     (1.0,) * channels, parent.num_classes, parent.class_names)


def _half(parent: nn.Module, recipe: dict) -> nn.Module:
    net, _ = build_split(parent.eval(), tuple(recipe["parent_input_size"]), SplitConfig(**recipe["split"]))
    return (DevicePart if recipe["part"] == "device" else ServerPart)(net).eval()


@DERIVED_SOURCES.register(PART_SOURCE)
def rebuild_part(info: ModelInfo, trust_code: bool) -> nn.Module:
    """A new, untrained half of a freshly rebuilt parent (load_model_dir loads the weights into it)."""
    parent = rebuild_model(ModelInfo.from_dict(info.kwargs["parent"]), trust_code)
    return _half(parent, info.kwargs)


def save_part(part: nn.Module, info: ModelInfo, folder: Path, parent: nn.Module, example: torch.Tensor) -> None:
    """Write `part` (unchanged) as a model directory and check that it reloads with identical outputs.

    A parent that cannot be rebuilt by name (built in memory) is stood in for by a copy of `parent`."""
    save_model_dir(part, info, folder)
    by_name = ModelInfo.from_dict(info.kwargs["parent"]).source in ("timm", "torchvision", "file")
    base = None if by_name else _half(copy.deepcopy(parent), info.kwargs)
    # trust_code: the parent's code already ran in this process (the user named it, or allowed it)
    reloaded, _ = load_model_dir(folder, trust_code=True, base=base)
    with torch.no_grad():
        same = torch.equal(reloaded(example), part(example))
    if not same:
        raise SlimkitError(f"{folder} does not reload to the same outputs as the {info.name} part it was saved from")
