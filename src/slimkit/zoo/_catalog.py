"""The zoo's catalogue: slimkit's own architectures plus timm's lightweight families, with measured costs."""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass

__all__ = ["ZooEntry", "zoo_model_names", "TIMM_LIGHTWEIGHT", "catalogue", "measure_entry", "pareto_front"]

# One or two representative sizes per lightweight family that timm already ships.
TIMM_LIGHTWEIGHT = {
    "MobileNetV2": ["mobilenetv2_050", "mobilenetv2_100"],
    "MobileNetV3": ["mobilenetv3_small_100", "mobilenetv3_large_100"],
    "MobileNetV4": ["mobilenetv4_conv_small", "mobilenetv4_hybrid_medium"],
    "MNASNet": ["mnasnet_100"],
    "GhostNet": ["ghostnet_100"],
    "GhostNetV2": ["ghostnetv2_100"],
    "ConvNeXt": ["convnext_atto"],
    "EfficientNet": ["efficientnet_b0"],
    "VoVNet": ["ese_vovnet19b_dw"],
    "NASNet": ["nasnetalarge"],
    "RepViT": ["repvit_m0_9"],
    "FastViT": ["fastvit_t8"],
}


@dataclass
class ZooEntry:
    name: str
    family: str
    source: str  # "slimkit" or "timm"
    input_size: tuple[int, int, int] | None = None
    params: int | None = None
    macs: int | None = None
    latency_ms: float | None = None  # ONNX Runtime median (torch eager if ORT could not run it)
    latency_iqr_ms: float | None = None
    runtime: str | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def zoo_model_names() -> dict[str, str]:
    """slimkit's registered architectures: model name -> family (its module)."""
    import timm.models._registry as registry

    import slimkit.zoo  # noqa: F401  (registers the zoo)

    names = {}
    for name, fn in registry._model_entrypoints.items():
        if fn.__module__.startswith("slimkit.zoo."):
            names[name] = fn.__module__.rsplit(".", 1)[-1]
    return dict(sorted(names.items()))


def catalogue(pattern: str | None = None, include_timm: bool = True) -> list[ZooEntry]:
    entries = [ZooEntry(name, family, "slimkit") for name, family in zoo_model_names().items()]
    if include_timm:
        entries += [ZooEntry(n, fam, "timm") for fam, names in TIMM_LIGHTWEIGHT.items() for n in names]
    if pattern:
        entries = [e for e in entries if fnmatch.fnmatch(e.name, pattern) or fnmatch.fnmatch(e.family, pattern)]
    return entries


def measure_entry(entry: ZooEntry, input_size=None, latency: bool = True, threads: int | None = None) -> ZooEntry:
    """Fill params, MACs and latency of `entry` (a new model at random init is built and profiled)."""
    from slimkit.profile import profile

    try:
        result = profile(f"timm:{entry.name}", input_size, latency=latency, threads=threads, measure_memory=False,
                         repetitions=20, ceiling=False)
    except Exception as exc:  # one broken entry must not sink the table
        entry.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
        return entry
    entry.input_size, entry.params, entry.macs = tuple(result.input_size), result.params, result.macs
    runtime = "onnxruntime" if "onnxruntime" in result.latency_ms else "torch"
    if result.latency_ms:
        entry.latency_ms = result.latency_ms[runtime]["median"]
        entry.latency_iqr_ms = result.latency_ms[runtime]["iqr"]
        entry.runtime = runtime
    return entry


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both coordinates (lower is better on both)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front
