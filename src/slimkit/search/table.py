"""LatencyTable: build, save, load, look up and predict (see slimkit.search.latency for the method)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from slimkit.errors import BadInputError
from slimkit.search.latency import (arch_parts, calibration_archs, condition_mismatches, conditions, error_summary,
                                    fit_line, measure_archs, measure_modules, part_module, space_parts)
from slimkit.search.child import ChildNet, child_spec
from slimkit.search.space import Arch, SearchSpace

__all__ = ["LatencyTable", "build_table", "TABLE_FORMAT"]

log = logging.getLogger(__name__)

TABLE_FORMAT, TABLE_VERSION = "slimkit-latency-table", 1


@dataclass
class LatencyTable:
    space: SearchSpace
    conditions: dict[str, Any]
    entries: dict[str, dict[str, float]]  # key -> median_ms, iqr_ms, p90_ms, min_ms, repetitions
    overhead: dict[str, float]  # one session.run of an empty graph (every standalone part paid it once)
    scale: float = 1.0
    offset_ms: float = 0.0
    calibration: dict[str, Any] = field(default_factory=dict)
    statistic: str = "median"  # or "min": the figure per part that predictions add up

    def lookup(self, key: str) -> float:
        """The stored figure (ms, the table's statistic) of one part."""
        if key not in self.entries:
            raise BadInputError(f"latency table has no entry {key!r}: it was built for another space")
        return self.entries[key][f"{self.statistic}_ms"]

    @property
    def overhead_ms(self) -> float:
        return self.overhead[f"{self.statistic}_ms"]

    def raw_ms(self, arch: Arch) -> float:
        """Sum of the parts, with the per-call overhead counted once for the whole network."""
        parts = arch_parts(self.space, arch)
        return sum(self.lookup(k) for k in parts) - (len(parts) - 1) * self.overhead_ms

    def predict_ms(self, arch: Arch) -> float:
        return self.scale * self.raw_ms(arch) + self.offset_ms

    def check_conditions(self, threads: int | None = None) -> list[str]:
        """Where this machine differs from the table's; logs a warning for each (empty list: it matches)."""
        problems = condition_mismatches(self.conditions, threads)
        for p in problems:
            log.warning("latency table measured elsewhere: %s", p)
        return problems

    def check_space(self, space: SearchSpace) -> None:
        if space.model_dump() != self.space.model_dump():
            raise BadInputError(f"latency table is for space {self.space.name!r}, not this {space.name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"format": TABLE_FORMAT, "version": TABLE_VERSION, "space": self.space.model_dump(),
                "conditions": self.conditions, "statistic": self.statistic, "overhead": self.overhead,
                "correction": {"scale": self.scale, "offset_ms": self.offset_ms, **self.calibration},
                "entries": self.entries}

    def save(self, path: str | Path) -> Path:
        from slimkit.utils.io import atomic_write_json

        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        from slimkit.utils.io import read_versioned_json

        data = read_versioned_json(path, TABLE_FORMAT, TABLE_VERSION, "latency table")
        corr = dict(data["correction"])
        scale, offset = corr.pop("scale"), corr.pop("offset_ms")
        return cls(SearchSpace.from_dict(data["space"], str(path)), data["conditions"], data["entries"],
                   data["overhead"], float(scale), float(offset), corr, data.get("statistic", "median"))

    def validate(self, n: int, seed: int = 1, threads: int | None = None, **kw: Any) -> dict[str, Any]:
        """Predicted against measured latency of `n` sampled children (exported and timed now)."""
        archs = calibration_archs(self.space, n, seed)
        measured = measure_archs(self.space, archs, int(threads or self.conditions["threads"]), self.statistic, **kw)
        predicted = [self.predict_ms(a) for a in archs]
        return {**error_summary(predicted, measured), "measured_ms": measured,
                "predicted_ms": [round(p, 5) for p in predicted], "archs": [a.model_dump() for a in archs]}


def table_modules(space: SearchSpace, calibrate: int, validate: int, seed: int) -> tuple[dict, list[Arch], list[Arch]]:
    """What a table build times: the call overhead, every part, the calibration and validation children."""
    calib = calibration_archs(space, calibrate, seed)
    check = calibration_archs(space, validate + 2, seed + 1)[2:] if validate else []
    modules = {k: part_module(k) for k in [f"call:{space.in_chans}@{min(space.resolutions)}", *space_parts(space)]}
    modules.update({f"child:{i}": (ChildNet(child_spec(space, a)), (space.in_chans, a.resolution, a.resolution))
                    for i, a in enumerate(calib + check)})
    return modules, calib, check


def build_table(space: SearchSpace, threads: int, *, repetitions: int = 40, rounds: int = 5, calibrate: int = 12,
                validate: int = 0, seed: int = 0, statistic: str = "min",
                progress: Callable[[], None] | None = None, export_dir: str | Path | None = None) -> LatencyTable:
    """Time every part of `space` on this machine, fit the correction on `calibrate` whole children, and check
    it on `validate` other ones. Parts and children are timed in the same interleaved rounds, so load that
    drifts during the build hits the table and the children alike. `export_dir` keeps (and reuses) the ONNX files."""
    if statistic not in ("median", "min"):
        raise BadInputError(f"latency statistic must be median or min, got {statistic!r}")
    keys = space_parts(space)
    call_key = f"call:{space.in_chans}@{min(space.resolutions)}"
    modules, calib, check = table_modules(space, calibrate, validate, seed)
    start = time.perf_counter()
    got = measure_modules(modules, threads, repetitions=repetitions, rounds=rounds, progress=progress,
                          export_dir=export_dir)
    table = LatencyTable(space, conditions(threads, repetitions, rounds), {k: got[k].to_dict() for k in keys},
                         got[call_key].to_dict(), statistic=statistic)
    children = [got[f"child:{i}"].to_dict() for i in range(len(calib) + len(check))]
    table.calibration = {"seed": seed, "build_seconds": round(time.perf_counter() - start, 1),
                         "calibration_children": [{"arch": a.model_dump(), **m} for a, m in zip(calib, children)],
                         "validation_children": [{"arch": a.model_dump(), **m}
                                                 for a, m in zip(check, children[len(calib):])]}
    return refit(table, statistic)


def refit(table: LatencyTable, statistic: str) -> LatencyTable:
    """Changes `table` in place (and returns it): predictions use `statistic`, the correction is fitted again on
    the calibration children and checked on the validation children, all from the stored measurements."""
    table.statistic = statistic
    key = f"{statistic}_ms"
    calib = [(Arch.model_validate(c["arch"]), c[key]) for c in table.calibration["calibration_children"]]
    check = [(Arch.model_validate(c["arch"]), c[key]) for c in table.calibration["validation_children"]]
    table.scale, table.offset_ms = 1.0, 0.0
    if len(calib) >= 3:
        table.scale, table.offset_ms = fit_line([table.raw_ms(a) for a, _ in calib], [m for _, m in calib])
    table.calibration["fitted_on"] = len(calib)
    if calib:
        table.calibration["fit_errors"] = error_summary([table.predict_ms(a) for a, _ in calib], [m for _, m in calib])
    if check:
        table.calibration["validation"] = {
            **error_summary([table.predict_ms(a) for a, _ in check], [m for _, m in check]),
            "statistic": statistic, "timed": "in the same interleaved rounds as the parts"}
    return table
