"""Pruning sweep over every timm family: the smallest variant of each timm module pruned to macs=0.5.

Per family (a timm module such as `resnet` or `metaformer`): the registered model with the fewest
parameters (counted on the meta device, no weights), random init, 10 classes, at the smallest input
side of 64/96/128/160/192/224/256 (with `img_size=` where the model takes it) that runs and costs at most
1 GMAC (a registered model above 200M parameters is built with fewer blocks, `depth=`, the
deepest of 12/8/6/4/2 within 60M parameters; the row says so under `reduced`). It is pruned with `prune_(PruneConfig(target="macs=0.5"))` (l2, global, round_to=8) and the row
records the outcome:

* `pass`: MACs ratio within 0.45..0.55, output shape kept, ONNX export verified in ONNX Runtime,
  model-directory reload with identical outputs;
* `fail`: pruned but one of those checks did not hold (the row says which);
* `refused`: `prune_` raised a user-level error (BadInputError) whose message is the reason;
* `internal`: `prune_` raised PruneInternalError (an unexpected failure it caught and named);
* `crash`: any other exception escaped (a bug); `timeout`; `no_input`: no input size up to 224 runs.

Each family runs in its own interpreter with a time limit, and its row is written to the results file
as soon as it ends, so an interrupted sweep resumes where it stopped. No timing figures: run it
under the shared CPU lock.

    flock -s /tmp/slimkit-cpu.lock .venv/bin/python benchmarks/prune_sweep.py [--only F ...] [--rerun OUTCOME ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, environment, write_results

NAME = "prune_sweep"
SIDES = (64, 96, 128, 160, 192, 224, 256)
MAX_MACS = 1e9
MAX_PARAMS = 200e6  # a registered model above this is sized down by depth (deepseek_vit: only a 412M variant) ...
REDUCED_PARAMS = 60e6  # ... to the deepest of DEPTHS within this (at 100M+ each pruning trial's copy outlasts the limit)
DEPTHS = (12, 8, 6, 4, 2)
SMALL_NAMES = ("atto", "femto", "pico", "nano", "tiny", "xxs", "xs", "small", "mini", "micro", "_s", "_t", "lite")


def smallest_variant(family: str) -> tuple[str | None, float | None]:
    """The model of timm module `family` with the fewest parameters (built on the meta device)."""
    import timm

    names = [n for n in timm.list_models(module=family) if not n.startswith("test_")]  # test_* are toy nets
    # Large modules (vision_transformer: hundreds of variants) take too long to build whole: when some
    # names say they are small, the smallest is among them.
    small = [n for n in names if any(token in n for token in SMALL_NAMES)]
    best: tuple[str | None, float | None] = (None, None)
    for name in small or names:
        params = _meta_params(name)  # None: not buildable on meta, not a candidate
        if params is not None and (best[1] is None or params < best[1]):
            best = (name, params)
    return best


def _meta_params(name: str, **kwargs: Any) -> int | None:
    import timm
    import torch

    try:
        with torch.device("meta"):
            return sum(p.numel() for p in timm.create_model(name, num_classes=10, **kwargs).parameters())
    except Exception:  # not buildable on meta: the count is only informative
        return None


def reduced_depth(name: str) -> dict[str, Any] | None:
    """{"depth": d}: the deepest of DEPTHS at which timm builds `name` within REDUCED_PARAMS (the
    same blocks, fewer of them); None when it takes no `depth` or no depth fits."""
    for depth in DEPTHS:
        params = _meta_params(name, depth=depth)
        if params is not None and params <= REDUCED_PARAMS:
            return {"depth": depth}
    return None


def pick_input(name: str, base: dict[str, Any] | None = None) -> tuple[int, dict[str, Any], int] | None:
    """(side, extra kwargs, MACs) of the smallest input the model runs at within MAX_MACS; the
    smallest that runs at all when every size costs more (a wide model such as ConvMixer)."""
    import torch

    from slimkit.models import load_model
    from slimkit.profile import count_macs

    first = None
    for side in SIDES:
        for kwargs in ({**(base or {}), "img_size": side}, dict(base or {})):
            try:
                torch.manual_seed(0)
                model, _ = load_model(f"timm:{name}", num_classes=10, **kwargs)
                macs = count_macs(model, torch.randn(1, 3, side, side)).total
            except Exception:  # that size or keyword does not fit this model: try the next
                continue
            if macs <= MAX_MACS:
                return side, kwargs, int(macs)
            first = first or (side, kwargs, int(macs))
    return first


def run_family(family: str, model: str | None = None) -> dict[str, Any]:
    """The sweep row of one family (runs in a child interpreter); `model`: its smallest variant as a
    stored row found it (sizing a large family on the meta device takes a minute)."""
    start = time.perf_counter()
    name, params = smallest_variant(family) if model is None else (model, _meta_params(model))
    row: dict[str, Any] = {"family": family, "model": name, "params": params}
    if name is None:
        return {**row, "outcome": "no_input", "reason": "no variant builds"}
    base = None
    if params is not None and params > MAX_PARAMS:
        base = reduced_depth(name)
        if base is None:
            return {**row, "outcome": "refused", "seconds": round(time.perf_counter() - start, 1),
                    "reason": f"{name}: {params / 1e6:.0f}M parameters, beyond the sweep's {MAX_PARAMS / 1e6:.0f}M, "
                              "and timm builds it at no smaller depth"}
        row.update(reduced=base, params=_meta_params(name, **base), registered_params=params)
    picked = pick_input(name, base)
    if picked is None:
        return {**row, "outcome": "no_input", "reason": f"no input side in {SIDES} runs"}
    side, kwargs, _ = picked
    row.update(input_size=[3, side, side], kwargs=kwargs)
    row.update(prune_and_check(name, side, kwargs))
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def prune_and_check(name: str, side: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    import torch

    from slimkit.compress.prune import PruneConfig, prune_
    from slimkit.compress.prune.errors import PruneInternalError
    from slimkit.errors import SlimkitError
    from slimkit.models import load_model
    from slimkit.profile import count_macs

    torch.manual_seed(0)
    model, info = load_model(f"timm:{name}", num_classes=10, **kwargs)
    info.input_size = (3, side, side)
    x = torch.randn(2, 3, side, side)
    macs, params = count_macs(model, x[:1]).total, sum(p.numel() for p in model.parameters())
    with torch.no_grad():  # the shape to keep: (2, 10) for a classifier, features for an encoder (gemma4_vit)
        out_shape = tuple(model.eval()(x).shape)
    row: dict[str, Any] = {"macs_before": int(macs), "output_shape": list(out_shape)}
    start = time.perf_counter()
    try:
        result = prune_(model, PruneConfig(target="macs=0.5"), x[:1])
    except PruneInternalError as exc:
        return {**row, "outcome": "internal", "reason": str(exc)}
    except SlimkitError as exc:
        return {**row, "outcome": "refused", "reason": str(exc).splitlines()[0]}
    row.update(prune_seconds=round(time.perf_counter() - start, 1),
               macs_ratio=round(count_macs(model, x[:1]).total / macs, 4),
               params_ratio=round(sum(p.numel() for p in model.parameters()) / params, 4),
               protected=result.protected, notes=result.notes, trials=len(result.trials))
    row["on_target"] = abs(row["macs_ratio"] - 0.5) <= 0.05
    row.update(checks(model, info, x, out_shape))
    failed = [k for k in ("on_target", "forward_ok", "onnx_ok", "reload_exact") if not row.get(k)]
    row["outcome"] = "fail" if failed else "pass"
    row["reason"] = ", ".join(f"not {k}" for k in failed) + (f" ({row['onnx_error']})" if row.get("onnx_error") else "")
    if not row.get("onnx_ok"):  # whose failure: pruning's, or the exporter's on this architecture?
        row["onnx_unpruned_ok"] = _exports(load_model(f"timm:{name}", num_classes=10, **kwargs)[0], x)
        if not row["onnx_unpruned_ok"]:
            row["reason"] += "; the unpruned model fails the same export (an exporter limit, not pruning's)"
    return row


def _exports(model, x) -> bool:
    """Whether `model` exports to ONNX and passes the ORT check (the unpruned reference for a failed export)."""
    from slimkit.deploy.onnx_export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        try:
            export_onnx(model.eval(), tuple(x.shape[1:]), Path(tmp) / "model.onnx")
            return True
        except Exception:  # the caller records only whether it did
            return False


def checks(model, info, x, out_shape: tuple[int, ...]) -> dict[str, Any]:
    import torch

    from slimkit.deploy.onnx_export import export_onnx
    from slimkit.models import load_model_dir, save_model_dir

    found: dict[str, Any] = {}
    with torch.no_grad():
        out = model.eval()(x)
    found["forward_ok"] = tuple(out.shape) == out_shape
    with tempfile.TemporaryDirectory() as tmp:
        try:
            report = export_onnx(model, tuple(x.shape[1:]), Path(tmp) / "model.onnx")
            found.update(onnx_ok=True, onnx_max_abs_diff=report.check.max_abs_diff)
        except Exception as exc:  # recorded: an export failure is a finding of the sweep, not its end
            found.update(onnx_ok=False, onnx_error=f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
        save_model_dir(model, info, Path(tmp) / "pruned")
        reloaded, _ = load_model_dir(Path(tmp) / "pruned")
        with torch.no_grad():
            found["reload_exact"] = bool(torch.equal(reloaded.eval()(x), out))
    return found


def _child(family: str, out: Path, model: str | None) -> None:
    import warnings

    import torch

    from slimkit.utils.io import atomic_write_json

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    try:
        row = run_family(family, model)
    except Exception as exc:  # anything escaping prune_ or the checks is a crash: recorded with its type
        row = {"family": family, "outcome": "crash", "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    atomic_write_json(out, row)


def run_in_child(family: str, timeout: float, model: str | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, __file__, "--child", family, str(out), *([model] if model else [])],
                                  timeout=timeout, capture_output=True, text=True)
        except subprocess.TimeoutExpired:
            return {"family": family, "model": model, "outcome": "timeout", "reason": f"over {timeout:.0f} s",
                    "seconds": timeout}
        if not out.exists():
            tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
            return {"family": family, "outcome": "crash", "reason": tail[0][:300],
                    "seconds": round(time.perf_counter() - start, 1)}
        return json.loads(out.read_text())


def load_rows() -> dict[str, dict[str, Any]]:
    path = RESULTS / f"{NAME}.json"
    if not path.exists():
        return {}
    return {r["family"]: r for r in json.loads(path.read_text()).get("families", [])}


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    return {"families": len(rows), **dict(sorted(counts.items())),
            "pass_rate": round(counts.get("pass", 0) / max(len(rows), 1), 3)}


def save(rows: dict[str, dict[str, Any]], threads: int) -> None:
    ordered = [rows[k] for k in sorted(rows)]
    write_results(NAME, {
        "what": "smallest variant of every timm module, random init, 10 classes, pruned with "
                "prune_(PruneConfig(target='macs=0.5')) at the smallest input side in 64..224 within 1 GMAC",
        "pass_rule": "MACs ratio within 0.45..0.55, output shape kept, ONNX export verified, reload exact",
        "summary": summary(ordered), "environment": environment(threads), "families": ordered})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="families (timm modules) to run")
    parser.add_argument("--rerun", nargs="*", default=[], help="rerun families whose stored outcome is one of these")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per family")
    parser.add_argument("--reverse", action="store_true", help="walk the families from the end (a second process)")
    parser.add_argument("--table", action="store_true", help="print the docs table of the stored results and stop")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], Path(args.child[1]), args.child[2] if len(args.child) > 2 else None)
        return
    if args.table:
        print_table(list(load_rows().values()))
        return
    import timm

    families = timm.list_modules()[::-1] if args.reverse else timm.list_modules()
    for family in families:
        if args.only and family not in args.only:
            continue
        done = load_rows().get(family)  # re-read: another sweep process may have run it meanwhile
        if done is not None and not args.only and done["outcome"] not in args.rerun + ["running"]:
            continue
        if done is not None and done["outcome"] == "running" and _alive(done.get("pid")) and not args.only:
            continue
        _store({"family": family, "outcome": "running", "pid": os.getpid()})
        stored = (done or {}).get("model")  # rows from before test_* toy nets were skipped are sized again
        r = run_in_child(family, args.timeout, stored if stored and not stored.startswith("test_") else None)
        print(f"{family}: {r['outcome']} {r.get('model', '')} {r.get('macs_ratio', '')} {r.get('reason', '')[:160]}", flush=True)
        _store(r)
    print(json.dumps(summary(list(load_rows().values()))))


def print_table(rows: list[dict[str, Any]]) -> None:
    print("| family | model | input | outcome | MACs ratio | params ratio | reason | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: r["family"]):
        side = r.get("input_size", ["", "", ""])[-1]
        reason = (r.get("reason") or "").replace("|", "/")
        print(f"| {r['family']} | {r.get('model', '')} | {side} | {r['outcome']} | {_ratio(r, 'macs_ratio')} | "
              f"{_ratio(r, 'params_ratio')} | {reason} | {r.get('seconds', '')} |")
    print(f"\n{json.dumps(summary(rows))}")


def _ratio(row: dict[str, Any], key: str) -> str:
    return f"{row[key]:.3f}" if isinstance(row.get(key), float) else ""


def _alive(pid: int | None) -> bool:
    try:
        os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
    except (TypeError, ValueError, OSError):
        return False
    return True


def _store(row: dict[str, Any]) -> None:
    """Merge one row into the results file (others' rows written meanwhile are kept)."""
    rows = load_rows()
    rows[row["family"]] = row
    save(rows, threads=1)


if __name__ == "__main__":
    main()
