"""The int8 path of a CPU: which instructions multiply uint8 activations by int8 weights, and can they saturate.

ONNX Runtime's int8 matrix kernels (MLAS) take one of these paths:

* x86-vnni: AVX512-VNNI or AVX-VNNI (VPDPBUSD) accumulate u8*s8 products straight into int32: exact.
* x86-avx2: x86 without VNNI (AVX2, or AVX-512 alone) use VPMADDUBSW, which adds each PAIR of u8*s8
  products into a saturating int16 before widening. 255*127 + 255*127 = 64770 does not fit in int16, so a
  pair of large activations times large weights of one sign is clipped at 32767: int8 output silently wrong.
  7-bit weights (|w| <= 64) make every pair fit: 255*64*2 = 32640 <= 32767.
* arm64-dotprod / arm64: the dot-product extension (SDOT/UDOT), or widening multiplies without it; both
  accumulate in 32 bits: exact.

`--target-cpu` names the machine a model ships to (auto: the one running the command).
"""

from __future__ import annotations

import functools
import platform
import sys
from typing import Literal

__all__ = ["TARGET_CPUS", "int8_path", "resolve_target", "saturates", "cpu_flags", "path_of_flags"]

TargetCpu = Literal["auto", "x86-vnni", "x86-avx2", "arm64"]
TARGET_CPUS = ("auto", "x86-vnni", "x86-avx2", "arm64")
PATHS = ("x86-vnni", "x86-avx2", "arm64-dotprod", "arm64", "other")
# Which target family each detected path belongs to.
_TARGET_OF = {"x86-vnni": "x86-vnni", "x86-avx2": "x86-avx2", "arm64-dotprod": "arm64", "arm64": "arm64"}


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
    """CPU feature flags (Linux /proc/cpuinfo `flags` or arm64 `Features`); empty where unreadable."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def path_of_flags(machine: str, flags: frozenset[str] | set[str]) -> str:
    """The int8 path of a CPU from its architecture name and feature flags."""
    machine = machine.lower()
    if machine in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "x86-vnni" if {"avx512_vnni", "avx_vnni", "avx512vnni", "avxvnni"} & set(flags) else "x86-avx2"
    if machine in ("aarch64", "arm64"):
        # Every Apple arm64 chip has the dot product; macOS has no /proc/cpuinfo to say so.
        return "arm64-dotprod" if "asimddp" in flags or sys.platform == "darwin" else "arm64"
    return "other"


@functools.lru_cache(maxsize=None)
def int8_path() -> str:
    """The int8 path of this machine: x86-vnni | x86-avx2 | arm64-dotprod | arm64 | other.

    An x86 machine whose flags cannot be read (Windows) counts as x86-avx2: assuming saturation costs
    at most 7-bit weights, assuming none can cost accuracy silently.
    """
    return path_of_flags(platform.machine(), cpu_flags())


def resolve_target(target: str) -> str:
    """The target family of `--target-cpu`: x86-vnni | x86-avx2 | arm64 (auto: this machine's, or other)."""
    if target == "auto":
        return _TARGET_OF.get(int8_path(), "other")  # other CPUs: no known saturating int8 kernel
    if target not in TARGET_CPUS:
        from slimkit.errors import BadInputError

        raise BadInputError(f"unknown target CPU {target!r}; choose {', '.join(TARGET_CPUS)}")
    return target


def saturates(path_or_target: str) -> bool:
    """True where u8*s8 pair sums pass through a saturating int16 (x86 without VNNI)."""
    return path_or_target == "x86-avx2"
