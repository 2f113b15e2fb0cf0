"""Search spaces: small declarative configs (YAML/JSON round-trip), and the architectures they contain.

A space is a stack: a stem, stages of inverted-residual blocks, a 1x1 head, pooling and a classifier.
The blocks are MBConv (`block: mbconv`, MobileNetV2/MnasNet) or EMOv2's iRMB (`block: irmb`: pre-norm, a 1x1
mixer or attention, depthwise conv with an inner skip, projection; see slimkit.search.irmb). Each stage has
its own choices of depth; every block chooses its depthwise kernel and expand ratio, and in an iRMB stage
marked `attention` every block after the first chooses attention on or off; the whole net chooses a width
multiplier and an input resolution. An `Arch` is one point of a space (one child of the supernet).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from slimkit.errors import BadInputError
from slimkit.utils.registry import Registry

__all__ = ["StageSpec", "SearchSpace", "Arch", "SPACES", "load_space", "make_divisible"]

SPACE_VERSION = 1


def make_divisible(value: float, divisor: int) -> int:
    """Round a channel count to a multiple of `divisor`, never dropping more than 10% (MobileNet's rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class StageSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    channels: int = Field(gt=0, description="output channels at width multiplier 1.0")
    depths: list[int] = Field(min_length=1, description="block-count choices")
    stride: int = Field(1, ge=1, le=2, description="stride of the stage's first block")
    attention: bool = Field(False, description="irmb: blocks after the stage's first may switch attention on")

    @model_validator(mode="after")
    def _check(self) -> "StageSpec":
        if min(self.depths) < 1:
            raise ValueError("stage depths must be >= 1")
        self.depths = sorted(set(self.depths))
        return self


class SearchSpace(BaseModel):
    """A declarative search space; `slimkit search ... SPACE` takes a built-in name or such a YAML file."""

    model_config = ConfigDict(extra="forbid")

    version: int = SPACE_VERSION
    name: str
    in_chans: int = Field(3, gt=0)
    num_classes: int = Field(10, gt=0)
    stem_channels: int = Field(gt=0)
    stem_stride: int = Field(2, ge=1, le=2)
    head_channels: int = Field(gt=0)
    stages: list[StageSpec] = Field(min_length=1)
    kernels: list[int] = Field(min_length=1)
    expands: list[int] = Field(min_length=1)
    widths: list[float] = Field(min_length=1)
    resolutions: list[int] = Field(min_length=1)
    channel_divisor: int = Field(8, ge=1)
    block: Literal["mbconv", "irmb"] = "mbconv"
    head_dim: int = Field(16, gt=0, description="irmb attention: channels per head (at least one head)")

    @model_validator(mode="after")
    def _check(self) -> "SearchSpace":
        if any(k < 1 or k % 2 == 0 for k in self.kernels):
            raise ValueError(f"kernels must be odd and positive, got {self.kernels}")
        if min(self.expands) < 1 or min(self.widths) <= 0 or min(self.resolutions) < 4:
            raise ValueError("expands must be >= 1, widths > 0 and resolutions >= 4")
        if self.version > SPACE_VERSION:
            raise ValueError(f"space version {self.version} is newer than this slimkit ({SPACE_VERSION})")
        if self.block != "irmb" and any(s.attention for s in self.stages):
            raise ValueError("stage attention needs block: irmb")
        for key in ("kernels", "expands", "widths", "resolutions"):
            setattr(self, key, sorted(set(getattr(self, key))))
        return self

    # -- the choices -------------------------------------------------------------------------------
    def channels(self, stage: int, width: float) -> int:
        return make_divisible(self.stages[stage].channels * width, self.channel_divisor)

    def stem_out(self, width: float) -> int:
        return make_divisible(self.stem_channels * width, self.channel_divisor)

    def attention_options(self, stage: int, block: int) -> list[bool]:
        """A block's attention choices, off before on (on is the larger child); [False] where it is no choice."""
        return [False, True] if self.stages[stage].attention and block > 0 else [False]

    def attention_for(self, depths: list[int], choose) -> list[list[bool]] | None:
        """Attention per block, `choose(options)` picking each block's; None in MBConv spaces."""
        if self.block != "irmb":
            return None  # MBConv spaces have no such choice (and their archs stay as they were)
        return [[choose(self.attention_options(si, bi)) for bi in range(d)] for si, d in enumerate(depths)]

    def largest(self) -> "Arch":
        return self.smallest(0.0)

    def smallest(self, fraction: float = 1.0) -> "Arch":
        """The smallest child whose choices are all open at `fraction` (1.0: the space's smallest)."""
        def low(options: list) -> Any:
            return options[_first_open(len(options), fraction)]

        depths = [low(s.depths) for s in self.stages]
        return Arch(resolution=low(self.resolutions), width=low(self.widths), depths=depths,
                    kernels=[[low(self.kernels)] * d for d in depths], expands=[[low(self.expands)] * d for d in depths],
                    attention=self.attention_for(depths, low))

    def sample(self, rng: random.Random, fraction: float = 1.0) -> "Arch":
        """A random child; with `fraction` < 1 only the largest ceil(fraction * n) of each choice list
        is open (delayed, progressive shrinking)."""
        def pick(options: list) -> Any:
            return rng.choice(options[_first_open(len(options), fraction):])

        depths = [pick(s.depths) for s in self.stages]
        kernels = [[pick(self.kernels) for _ in range(d)] for d in depths]
        expands = [[pick(self.expands) for _ in range(d)] for d in depths]
        return Arch(resolution=pick(self.resolutions), width=pick(self.widths), depths=depths, kernels=kernels,
                    expands=expands, attention=self.attention_for(depths, pick))

    def validate_arch(self, arch: "Arch") -> "Arch":
        problems = []
        if arch.resolution not in self.resolutions or arch.width not in self.widths:
            problems.append(f"resolution {arch.resolution} / width {arch.width} not among the choices")
        if len(arch.depths) != len(self.stages):
            problems.append(f"{len(arch.depths)} stage depths for {len(self.stages)} stages")
        for i, (d, ks, es) in enumerate(zip(arch.depths, arch.kernels, arch.expands)):
            if d not in self.stages[i].depths or len(ks) != d or len(es) != d:
                problems.append(f"stage {i}: depth {d} with {len(ks)} kernels and {len(es)} expands")
            if set(ks) - set(self.kernels) or set(es) - set(self.expands):
                problems.append(f"stage {i}: kernel/expand choices outside the space")
        problems += self._attention_problems(arch)
        if problems:
            raise BadInputError(f"architecture is not in space {self.name!r}: {problems[0]}")
        return arch

    def _attention_problems(self, arch: "Arch") -> list[str]:
        if (arch.attention is None) != (self.block != "irmb"):
            return [f"attention choices {'missing' if arch.attention is None else 'given'} for {self.block} blocks"]
        if arch.attention is None:
            return []
        if [len(a) for a in arch.attention] != list(arch.depths):
            return ["one attention choice per block needed"]
        return [f"stage {si} block {bi}: attention not allowed" for si, blocks in enumerate(arch.attention)
                for bi, on in enumerate(blocks) if on not in self.attention_options(si, bi)]

    def size(self) -> int:
        """How many distinct children the space holds."""
        per_block = len(self.kernels) * len(self.expands)

        def blocks(si: int, d: int) -> int:
            return math.prod(per_block * len(self.attention_options(si, bi)) for bi in range(d))

        stages = math.prod(sum(blocks(si, d) for d in s.depths) for si, s in enumerate(self.stages))
        return len(self.widths) * len(self.resolutions) * stages

    # -- files -------------------------------------------------------------------------------------
    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.model_dump(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: Any, where: str = "space") -> "SearchSpace":
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "space"
            raise BadInputError(f"{where}: {loc}: {err['msg']}") from None


def _first_open(n: int, fraction: float) -> int:
    """Index of the smallest open choice of n sorted ones: only the largest at 0, all at 1."""
    return n - max(1, math.ceil(round(fraction * n, 9)))


class Arch(BaseModel):
    """One child of a space: its resolution, width multiplier, depth per stage, kernel and expand per block
    (and attention on/off per block in iRMB spaces; None elsewhere)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resolution: int
    width: float
    depths: list[int]
    kernels: list[list[int]]
    expands: list[list[int]]
    attention: list[list[bool]] | None = None

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        # an MBConv arch dumps (and keys) exactly as before iRMB spaces existed: saved runs stay valid
        kwargs.setdefault("exclude_none", True)
        return super().model_dump(**kwargs)

    def key(self) -> str:
        return json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))


SPACES: Registry[dict] = Registry("search space")

SPACES.add("mbv2", {
    "name": "mbv2", "in_chans": 1, "num_classes": 10, "stem_channels": 16, "stem_stride": 2, "head_channels": 256,
    "stages": [{"channels": 16, "depths": [1, 2], "stride": 1}, {"channels": 24, "depths": [1, 2, 3], "stride": 2},
               {"channels": 40, "depths": [2, 3], "stride": 2}, {"channels": 80, "depths": [2, 3, 4], "stride": 2},
               {"channels": 112, "depths": [1, 2], "stride": 1}],
    "kernels": [3, 5, 7], "expands": [3, 4, 6], "widths": [0.5, 0.75, 1.0], "resolutions": [24, 32],
}, description="MobileNetV2/MnasNet-like: kernel 3/5/7, expand 3/4/6, depth per stage, width, resolution")
SPACES.add("emov2", {
    "name": "emov2", "in_chans": 1, "num_classes": 10, "stem_channels": 16, "stem_stride": 2, "head_channels": 256,
    "block": "irmb", "head_dim": 16,
    "stages": [{"channels": 24, "depths": [1, 2], "stride": 1}, {"channels": 40, "depths": [1, 2, 3], "stride": 2},
               {"channels": 80, "depths": [2, 3, 4], "stride": 2, "attention": True},
               {"channels": 112, "depths": [1, 2], "stride": 1, "attention": True}],
    "kernels": [3, 5], "expands": [2, 3, 4], "widths": [0.5, 0.75, 1.0], "resolutions": [24, 32],
}, description="EMOv2-like, iRMB blocks: kernel 3/5, expand 2/3/4, attention on/off (last 2 stages), depth, width, resolution")
SPACES.add("tiny_irmb", {
    "name": "tiny_irmb", "in_chans": 1, "num_classes": 10, "stem_channels": 8, "stem_stride": 2, "head_channels": 16,
    "block": "irmb", "head_dim": 4,
    "stages": [{"channels": 8, "depths": [1, 2], "stride": 1},
               {"channels": 12, "depths": [1, 2], "stride": 2, "attention": True}],
    "kernels": [3, 5], "expands": [2, 3], "widths": [0.5, 1.0], "resolutions": [12, 16], "channel_divisor": 4,
}, description="a few-channel iRMB space with attention, for tests")
SPACES.add("tiny", {
    "name": "tiny", "in_chans": 1, "num_classes": 10, "stem_channels": 8, "stem_stride": 2, "head_channels": 16,
    "stages": [{"channels": 8, "depths": [1, 2], "stride": 1}, {"channels": 12, "depths": [1, 2], "stride": 2}],
    "kernels": [3, 5], "expands": [2, 3], "widths": [0.5, 1.0], "resolutions": [12, 16], "channel_divisor": 4,
}, description="a few-channel space for tests")


def load_space(spec: str | Path | SearchSpace) -> SearchSpace:
    """A built-in space by name (`mbv2`, `emov2`, `tiny`, `tiny_irmb`) or a YAML/JSON file holding one."""
    if isinstance(spec, SearchSpace):
        return spec
    path = Path(str(spec)).expanduser()
    if path.suffix.lower() in (".yaml", ".yml", ".json") or path.is_file():
        if not path.is_file():
            raise BadInputError(f"search space file {str(path)!r} not found")
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise BadInputError(f"cannot read search space {path}: {str(exc).splitlines()[0]}") from None
        return SearchSpace.from_dict(data, str(path))
    if str(spec) not in SPACES.names():
        raise BadInputError(f"unknown search space {str(spec)!r}: give a YAML file or one of {', '.join(SPACES.names())}")
    return SearchSpace.from_dict(SPACES.get(str(spec)), str(spec))
