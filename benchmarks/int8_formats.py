"""s8 vs s7 int8 weights on this CPU: output error against fp32, speed against fp32, and the exact int8 check.

For each model (torchvision, random init, as in issue 10's table): export fp32 ONNX (verified), calibrate once
on synthetic images, build QDQ int8 with s8 weights ([-127, 127]) and s7 weights ([-64, 64], ONNX Runtime's
reduce_range), then on held-out synthetic images:
  error   = max |logits_int8 - logits_fp32| / max |logits_fp32|   (relative max logit error)
  speedup = fp32 median / int8 median, ORT CPU, batch 1, --threads threads, one interleaved run
  exact   = slimkit's exact int8 check (ORT's int8 ops vs int32 arithmetic): ops that differ on this CPU

    flock -x /tmp/slimkit-cpu.lock .venv/bin/python benchmarks/int8_formats.py --models mobilenet_v2 --size 96
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, environment


def _build(name: str, size: int, tmp: Path, calib: np.ndarray) -> dict[str, Path]:
    import torchvision

    from slimkit.compress.quantize.ptq import QuantSettings, prepare_fp32, quantize_static_qdq
    from slimkit.deploy.onnx_export import export_onnx

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    export_onnx(model, (3, size, size), tmp / "fp32.onnx")
    pre = prepare_fp32(tmp / "fp32.onnx", tmp / "pre.onnx")
    paths = {"fp32": tmp / "fp32.onnx"}
    for weights in ("s8", "s7"):
        paths[weights] = quantize_static_qdq(pre, tmp / f"{weights}.onnx", calib, QuantSettings(weights=weights),
                                             cache_path=tmp / "calib.json")
    return paths


def measure(name: str, size: int, threads: int, reps: int) -> dict:
    from slimkit.compress.quantize.int8_check import int8_exact_check
    from slimkit.compress.quantize.ort_eval import predict
    from slimkit.deploy.onnx_export import ort_session
    from slimkit.profile.timing import measure_interleaved

    rng = np.random.default_rng(0)
    calib = rng.standard_normal((32, 3, size, size)).astype(np.float32)
    held_out = rng.standard_normal((16, 3, size, size)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="int8-formats-") as tmp:
        paths = _build(name, size, Path(tmp), calib)
        ref = predict(paths["fp32"], held_out)
        row: dict = {"model": name, "input": [3, size, size]}
        for w in ("s8", "s7"):
            err = float(np.max(np.abs(predict(paths[w], held_out) - ref)) / np.max(np.abs(ref)))
            check = int8_exact_check(paths[w], held_out[:2])
            row[w] = {"rel_max_logit_error": err, "exact_check_passed": check.passed,
                      "ops_off": len(check.mismatched), "ops_checked": check.ops_checked, "max_steps": check.max_steps}
        x = held_out[:1]
        runs = {k: (lambda s=ort_session(p, threads): s.run(None, {"input": x})) for k, p in paths.items()}
        t = measure_interleaved(runs, repetitions=reps, rounds=10, min_time_s=1.0)
        for w in ("s8", "s7"):
            row[w]["speedup"] = t["fp32"].median / t[w].median
        row["latency_ms"] = {k: v.to_dict() for k, v in t.items()}
    return row


def _cell(weights: str, m: dict) -> str:
    check = "passed" if m["exact_check_passed"] else f"FAILED on {m['ops_off']} of {m['ops_checked']} ops"
    return (f"{weights}: {m['speedup']:.2f}x fp32, rel. max logit error {m['rel_max_logit_error']:.4f}, "
            f"exact check {check}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18,mobilenet_v2")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=60)
    ap.add_argument("--out", type=Path, default=RESULTS / "int8_formats.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(m, args.size, args.threads, args.reps) for m in args.models.split(",")]
    env = environment(args.threads)
    for r in rows:
        cells = "; ".join(_cell(w, r[w]) for w in ("s8", "s7"))
        print(f"{r['model']} {r['input']} on {env['int8_path']} ({env['cpu']}, {args.threads} thread): {cells}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": env, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
