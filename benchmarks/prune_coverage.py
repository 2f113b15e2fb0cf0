"""Pruning coverage: every torchvision/timm model of tests/test_prune_coverage.py pruned to half its MACs.

The model list is the test's own (FAST, SLOW and the known UNREACHABLE one), so the README table and the
test cannot drift apart. Per model (random init, 10 classes, 1x3x64x64, `PruneConfig(target="macs=0.5")`
defaults: l2, global, round_to=8): measured MACs and params ratios (slimkit's counter), search trials,
protected modules, whether the forward, the ONNX export checked in ONNX Runtime, and an exact
model-directory reload work. No timing: run it under the shared CPU lock.

    flock -s /tmp/slimkit-cpu.lock .venv/bin/python benchmarks/prune_coverage.py
"""

from __future__ import annotations

import argparse
import sys

from _common import ROOT, environment, prune_half_macs, write_results


def coverage_models() -> list[tuple[str, str, int, dict]]:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_prune_coverage import FAST, SLOW, UNREACHABLE

    return [(test_set, spec, side, kwargs) for test_set, models in (("default", FAST), ("slow", SLOW),
                                                                   ("unreachable", UNREACHABLE))
            for spec, side, kwargs in models]


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="model specs to run (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for test_set, spec, side, kwargs in coverage_models():
        if args.only and spec not in args.only:
            continue
        rows.append({"test_set": test_set, **prune_half_macs(spec, side, kwargs)})
    passed = sum(r["result"] == "pass" for r in rows if r["test_set"] != "unreachable")
    write_results("prune_coverage", {
        "what": "random-init models pruned with prune_(PruneConfig(target='macs=0.5')) at 3x64x64, 10 classes",
        "pass_rule": "MACs ratio within 0.45..0.55, output shape kept, model-directory reload exact",
        "summary": {"models": len(rows), "passed": passed,
                    "reachable": sum(r["test_set"] != "unreachable" for r in rows)},
        "environment": environment(args.threads), "models": rows})
    print("| model | test set | result | MACs ratio | params ratio | search trials | protected |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['test_set']} | {r['result']} | {r.get('macs_ratio', float('nan')):.3f} | "
              f"{r.get('params_ratio', float('nan')):.3f} | {r.get('search_trials', '')} | {len(r.get('protected', []))} |")


if __name__ == "__main__":
    main()
