"""CBNet's converting autoencoder: a small autoencoder in front of the small model of a cascade.

It is trained to map every training image to an *easy* image of the same class, the training image the
small model is most confident about (and right on). Hard inputs come out looking like easy ones, so the
small model answers more of them with high confidence and fewer are sent on to the big model. The small
model is not changed (frozen, batch-norm statistics included); the result is a new model, converter then
small model, that `deploy cascade` takes as its SMALL.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from slimkit.errors import BadInputError

__all__ = ["ConverterConfig", "Converted", "build_converter", "easy_images", "ConversionLoss", "train_converter",
           "load_converted"]


@dataclass
class ConverterConfig:
    width: int = 16  # channels of the first conv; the bottleneck has 2x at a quarter of the resolution
    epochs: int = 2
    lr: float = 1e-3
    batch_size: int = 128
    seed: int = 0
    # 0: CBNet's objective alone. > 0 adds this x the small model's cross-entropy on the converted image, so
    # the converter keeps what the class needs (not in CBNet; a plain MSE converter can blur classes together)
    ce_weight: float = 0.0

    def __post_init__(self) -> None:
        if min(self.width, self.epochs, self.batch_size) < 1 or self.lr <= 0 or self.ce_weight < 0:
            raise BadInputError("converter: --width, --epochs and --batch-size must be >= 1, --lr > 0, --ce-weight >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


class Converted(nn.Module):
    """The converter, then the frozen classifier; `train()` leaves the classifier in eval mode."""

    def __init__(self, converter: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.converter, self.classifier = converter, classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.converter(x))

    def train(self, mode: bool = True) -> Converted:
        super().train(mode)
        self.classifier.eval()  # its batch-norm statistics must stay those it was trained with
        return self


def build_converter(input_size, width: int = 16) -> nn.Sequential:
    """A new conv autoencoder (two stride-2 convs down, two transposed convs up) of the same input/output shape."""
    c, h, w = input_size
    if h % 4 or w % 4:
        raise BadInputError(f"converter: input height and width must be multiples of 4, got {h}x{w}")
    return nn.Sequential(nn.Conv2d(c, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU(),
                         nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.ReLU(),
                         nn.ConvTranspose2d(width, c, 4, 2, 1))


@torch.no_grad()
def easy_images(small: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: int, batch: int = 512) -> torch.Tensor:
    """(classes, C, H, W): per class, the image of `x` the small model is right on with the highest confidence."""
    small.eval()
    probs = torch.cat([torch.softmax(small(x[i: i + batch]), 1) for i in range(0, len(x), batch)])
    score = probs.gather(1, y.long()[:, None])[:, 0]
    score = torch.where(probs.argmax(1) == y, score, torch.full_like(score, -1.0))  # wrong: never an easy image
    easy = []
    for k in range(classes):
        members = (y == k).nonzero()[:, 0]
        if len(members) == 0 or score[members].max() < 0:
            raise BadInputError(f"converter: the small model gets no training image of class {k} right "
                                "(no easy image to convert toward)")
        easy.append(x[members[score[members].argmax()]])
    return torch.stack(easy)


class ConversionLoss(nn.Module):
    """Mean squared error between the converted input and its class's easy image (the CBNet objective), plus
    `ce_weight` x the cross-entropy of the logits (the small model's, on the converted image)."""

    wants_inputs = True  # fit() passes the input batch

    def __init__(self, converter: nn.Module, easy: torch.Tensor, ce_weight: float = 0.0) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        # a plain reference, not a submodule: its parameters are the model's, not the loss's, in the optimizer
        self.__dict__["_converter"] = converter
        self.register_buffer("easy", easy)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        loss = F.mse_loss(self._converter(inputs), self.easy[targets.long()])
        return loss + self.ce_weight * F.cross_entropy(logits, targets.long()) if self.ce_weight else loss


def train_converter(small: nn.Module, bundle, config: ConverterConfig, out: Path | None = None, info=None,
                    resume: bool = False, easy: torch.Tensor | None = None):
    """A new Converted model (the small model itself is frozen, not changed); with `out`, a model directory.

    `easy`: the targets from `easy_images` on the training images, when already computed."""
    from slimkit.engine import fit
    from slimkit.engine.config import TrainConfig

    torch.manual_seed(config.seed)
    x, y = bundle.train.tensors()
    easy = easy_images(small, x, y, bundle.num_classes) if easy is None else easy
    for p in small.parameters():
        p.requires_grad_(False)
    model = Converted(build_converter(tuple(x.shape[1:]), config.width), small)
    cfg = TrainConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, seed=config.seed,
                      weight_decay=0.0)
    extra = {"converter": config.to_dict(), "easy_image_classes": bundle.num_classes}
    info = None if info is None else replace(info, source="module")  # rebuilt by load_converted, not by name
    return fit(model, bundle, cfg, out_dir=out, resume=resume, info=info, loss_fn=ConversionLoss(model.converter, easy, config.ce_weight),
               extra_metrics=extra)


def load_converted(path: str | Path, small: nn.Module, input_size) -> Converted:
    """A new Converted model rebuilt from a `deploy converter` directory (`small`: the classifier's architecture)."""
    from slimkit.models.modeldir import load_model_dir

    metrics_file = Path(path) / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    if "converter" not in metrics:
        raise BadInputError(f"--converter {path}: not a finished `slimkit deploy converter` output")
    base = Converted(build_converter(tuple(input_size), metrics["converter"]["width"]), small)
    return load_model_dir(path, base=base)[0]
