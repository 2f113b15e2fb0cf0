"""Which int8 weight format a target CPU gets, and why (recorded in every quantize report).

s8: symmetric int8 weights in [-127, 127]; exact on VNNI and arm64.
s7: symmetric 7-bit weights in [-64, 64] (ONNX Runtime's `reduce_range`), so that on x86 without VNNI
    every VPMADDUBSW pair fits in int16: 255*64 + 255*64 = 32640 <= 32767. Stored as int8; same speed.
    The cost is one bit of weight resolution (measured in docs/int8.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from slimkit.utils.cpu import int8_path, resolve_target, saturates

__all__ = ["WeightFormat", "choose_format", "WEIGHT_QMAX"]

WEIGHT_QMAX = {"s8": 127, "s7": 64}  # symmetric weight range [-qmax, qmax]


@dataclass(frozen=True)
class WeightFormat:
    weights: str  # s8 | s7
    target_cpu: str  # the resolved target: x86-vnni | x86-avx2 | arm64
    requested: str  # what the user asked: auto | a target name
    host: str  # the int8 path of the machine running the command
    why: str

    @property
    def qmax(self) -> int:
        return WEIGHT_QMAX[self.weights]

    @property
    def reduce_range(self) -> bool:
        return self.weights == "s7"

    def to_dict(self) -> dict:
        return {**asdict(self), "weight_range": [-self.qmax, self.qmax]}


def choose_format(target_cpu: str = "auto", weight_format: str = "auto") -> WeightFormat:
    """The weight format for `target_cpu` (auto: this machine); `weight_format` s8/s7 overrides the choice."""
    target, host = resolve_target(target_cpu), int8_path()
    where = f"this machine ({host})" if target_cpu == "auto" else f"target {target}"
    if weight_format in ("s8", "s7"):
        risky = weight_format == "s8" and saturates(target)
        why = f"asked for {weight_format}" + (f"; {where} can saturate int16 pair sums with s8" if risky else "")
        return WeightFormat(weight_format, target, target_cpu, host, why)
    if saturates(target):
        why = f"{where} has no VNNI: u8*s8 pair sums saturate int16 (VPMADDUBSW); 7-bit weights cannot"
        return WeightFormat("s7", target, target_cpu, host, why)
    return WeightFormat("s8", target, target_cpu, host, f"{where} accumulates u8*s8 in int32 exactly")
