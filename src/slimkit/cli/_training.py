"""Shared by `slimkit train` and `slimkit distill`: the torchrun relaunch and the summary line.

`--nproc N` re-runs the same command line under torch.distributed.run; each child joins
the process group in fit(). Configs, models and data come from the library (slimkit.engine.setup).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from slimkit.errors import BadInputError, SlimkitError

__all__ = ["resolve_config", "load_student", "relaunch_if_needed", "summary_line", "is_main_rank", "strip_nproc",
           "launch_torchrun"]

log = logging.getLogger(__name__)


# The library functions load torch: imported on call, so `slimkit --help` stays quick.
def resolve_config(*args: Any, **kwargs: Any):
    from slimkit.engine.setup import resolve_config as resolve

    return resolve(*args, **kwargs)


def load_student(*args: Any, **kwargs: Any):
    from slimkit.engine.setup import load_student as load

    return load(*args, **kwargs)


def is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def relaunch_if_needed(nproc: int | None, command: str) -> bool:
    """With --nproc N > 1 outside torchrun, run this same command line under torchrun; True if it did."""
    from slimkit.engine.distributed import in_torchrun

    if nproc is None or nproc == 1 or in_torchrun():
        return False
    if nproc < 1:
        raise BadInputError(f"--nproc must be >= 1, got {nproc}")
    argv = sys.argv[1:]
    if command not in argv:
        raise BadInputError("--nproc needs to be run from the slimkit command line")
    launch_torchrun(argv, nproc)
    return True


def summary_line(result: Any, out: Path) -> str:
    m = result.metrics
    warning = (m.get("early_stopping") or {}).get("not_converged_warning")
    return (f"val top-1 {m['accuracy']:.4f}  top-5 {m['top5']:.4f}  loss {m['val_loss']:.4f}  "
            f"after {m['epochs_completed']} epoch(s) -> {out}" + (f"\n{warning}" if warning else ""))


def strip_nproc(argv: Sequence[str]) -> list[str]:
    """The command line without its --nproc option (the children must not launch again)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        out.append(arg)
    return out


def _first_error_line(stderr: str) -> str | None:
    for line in stderr.splitlines():
        if line.startswith("error: "):
            return line[len("error: "):]
    return None


def launch_torchrun(argv: Sequence[str], nproc: int) -> None:
    """Run `slimkit ARGV` in `nproc` processes via torch.distributed.run; raise SlimkitError on failure."""
    if nproc < 1:
        raise BadInputError(f"--nproc must be >= 1, got {nproc}")
    env = dict(os.environ)
    # Split the cores between the ranks rather than letting each one claim them all.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           f"--nproc-per-node={nproc}", "-m", "slimkit.cli.main", *strip_nproc(argv)]
    log.info("launching: %s", " ".join(cmd))
    proc = subprocess.run(cmd, env=env, stderr=subprocess.PIPE, text=True)
    if proc.returncode == 0:
        if proc.stderr:
            sys.stderr.write(proc.stderr)
        return
    message = _first_error_line(proc.stderr)
    if message is None:
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or ["no output"]
        message = f"distributed run failed with exit code {proc.returncode}: {tail[0]}"
    raise SlimkitError(message)
