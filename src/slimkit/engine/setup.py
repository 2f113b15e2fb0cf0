"""Setting up a training run: its TrainConfig (file, checkpoint, flags) and a model paired with its data.

Shared by `slimkit train`, `slimkit distill` and the library's distill(): the classes come
from the data, the input format from the model (trained or pretrained ones keep the
normalisation they learned with) or from an explicit input size.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from slimkit.errors import BadInputError

__all__ = ["resolve_config", "load_student", "load_weights_into"]


def resolve_config(config_file: str | Path | None, flags: dict[str, Any], resume_from: str | Path | None = None):
    """A TrainConfig from a YAML/JSON file, or when resuming the checkpoint's, with `flags` (None: unset) on top."""
    from slimkit.engine.checkpoint import CHECKPOINT_FILE, read_checkpoint_config
    from slimkit.engine.config import TrainConfig

    if config_file is not None:
        base = TrainConfig.load(config_file)
    elif resume_from is not None and (Path(resume_from) / CHECKPOINT_FILE).is_file():
        base = TrainConfig.from_dict(read_checkpoint_config(Path(resume_from) / CHECKPOINT_FILE))
    else:
        base = TrainConfig()
    return base.replace(**flags)


def _data_format(info: Any, bundle: Any, input_size: tuple | None, keep_model_format: bool) -> tuple:
    size = tuple(input_size) if input_size is not None else tuple(info.input_size)
    if keep_model_format:  # a trained or pretrained model keeps the normalisation it learned with
        return size, tuple(info.mean), tuple(info.std)
    return size, tuple(bundle.mean), tuple(bundle.std)


def _reformat(bundle: Any, size: tuple, mean: tuple, std: tuple) -> Any:
    from slimkit.data import ImageTensorDataset

    make = lambda ds: ImageTensorDataset(ds.images, ds.labels, size, mean, std)  # noqa: E731
    return dataclasses.replace(bundle, train=make(bundle.train), val=make(bundle.val), input_size=size,
                               mean=mean, std=std)


def load_student(spec: str, *, data: str, input_size: str | tuple | None = None, train_samples: int | None = None,
                 val_samples: int | None = None, seed: int = 0, trust_code: bool = False, pretrained: bool = False,
                 weights: str | Path | None = None, data_seed: int = 0) -> tuple[Any, Any, Any]:
    """(model, ModelInfo, DataBundle): classes come from the data, the input format from the model or `input_size`."""
    import torch

    from slimkit.data import load_data
    from slimkit.models import is_model_dir, load_model, load_model_dir
    from slimkit.utils.parse import parse_input_size

    size = parse_input_size(input_size) if input_size else None
    bundle = load_data(data, size or (3, 32, 32), train_samples=train_samples, val_samples=val_samples,
                       seed=data_seed)
    if is_model_dir(spec):
        model, info = load_model_dir(spec, trust_code=trust_code)
        if info.num_classes is not None and info.num_classes != bundle.num_classes:
            raise BadInputError(f"{spec} has {info.num_classes} classes but {data} has {bundle.num_classes}")
        keep = True
    else:
        torch.manual_seed(seed)  # the initial weights depend only on the seed
        in_chans = size[0] if size is not None and size[0] != 3 else None
        model, info = load_model(spec, num_classes=bundle.num_classes, in_chans=in_chans, pretrained=pretrained,
                                 trust_code=trust_code)
        keep = pretrained
    if weights is not None:
        load_weights_into(model, weights)
    size, mean, std = _data_format(info, bundle, size, keep)
    return model, info, _reformat(bundle, size, mean, std)


def load_weights_into(model: Any, path: str | Path) -> None:
    """Initial weights from a .safetensors or torch file (never unpickling code)."""
    from slimkit.engine.checkpoint import load_state_file

    state = load_state_file(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise BadInputError(f"weights {path} do not fit the model: {str(exc).splitlines()[0]}") from exc
