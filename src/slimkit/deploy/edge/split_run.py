"""The run directory of `deploy split`: lambdas, settings check on --resume, and the INCOMPLETE marker.

Layout of OUT:
    INCOMPLETE              present until the whole sweep is measured and reported (removed last)
    run.json                the resolved settings; --resume refuses other settings
    lambda-L/               one finished split per lambda: device/, server/ (model directories + ONNX +
                            prior.json), split.json, report.json
    .work/                  training checkpoints of the lambda in progress, cached baselines (removed at the end)
    report.json, report.html, args.json   the sweep, written at the end
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from slimkit.errors import BadInputError
from slimkit.utils.io import atomic_write_json

__all__ = ["parse_lambdas", "open_run", "close_run", "RUN_FILE", "INCOMPLETE_MARKER"]

RUN_FILE = "run.json"
INCOMPLETE_MARKER = "INCOMPLETE"


def parse_lambdas(text: str) -> list[float]:
    """'0.001,0.01,0.1' -> [0.001, 0.01, 0.1]: distinct, non-negative rate weights."""
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise BadInputError(f"--lambda {text!r}: expected numbers separated by commas, e.g. 0.01,0.1,1") from None
    if not values or any(v < 0 or v != v for v in values):
        raise BadInputError(f"--lambda {text!r}: every lambda must be a number >= 0")
    if len({f"{v:g}" for v in values}) != len(values):
        raise BadInputError(f"--lambda {text!r}: a lambda is repeated")
    return values


def open_run(out: Path, settings: dict[str, Any], *, resume: bool, overwrite: bool, write: bool = True) -> None:
    """Check that `out` may hold this run (a previous one needs --resume or --overwrite), then mark it started.

    With write=False only the check runs (before any heavy loading)."""
    saved = out / RUN_FILE
    if out.exists() and not out.is_dir():
        raise BadInputError(f"--out {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        if resume and saved.is_file():
            before = json.loads(saved.read_text())
            changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
            if changed:
                raise BadInputError(f"--resume: {out} was started with other settings ({', '.join(changed)}); "
                                    "resume with the same arguments or use --overwrite")
        elif resume:
            raise BadInputError(f"--resume: {out} holds no split run ({RUN_FILE}) to continue")
        elif not overwrite:
            raise BadInputError(f"{out} already exists; pass --resume to continue it or --overwrite to start again")
        elif not saved.is_file():
            raise BadInputError(f"--overwrite: {out} is not a split run ({RUN_FILE} missing); choose another --out")
        elif write:
            shutil.rmtree(out)
    if write:
        out.mkdir(parents=True, exist_ok=True)
        (out / INCOMPLETE_MARKER).write_text("this split run has not finished; rerun with --resume to continue it\n")
        atomic_write_json(saved, settings)


def close_run(out: Path) -> None:
    (out / INCOMPLETE_MARKER).unlink(missing_ok=True)
