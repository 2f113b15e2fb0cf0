"""Zoo under the pruner: which of slimkit's zoo families reach half their MACs.

Per model (random init, 10 classes, `PruneConfig(target="macs=0.5")` defaults, 3x64x64 or 3x32x32 for the
CIFAR models): measured MACs and params ratios, protected modules, forward, ONNX export checked in ONNX Runtime,
exact model-directory reload; or the error a model stops with. tests/test_zoo_prune.py checks four of these.
No timing: run it under the shared CPU lock.

    flock -s /tmp/slimkit-cpu.lock .venv/bin/python benchmarks/zoo_prune.py
"""

from __future__ import annotations

import argparse

from _common import environment, prune_half_macs, write_results

ZOO = [("simplenet_cifar", 32), ("mobilenetv2_ulsam", 64), ("tiny_moat_0", 64), ("osnet_x0_25", 64),
       ("skipnet_m", 64), ("mobilemamba_t2", 64), ("efficientvmamba_t", 64), ("emov2_1m", 64),
       ("cct_7_3x1_32", 32), ("t2t_vit_7", 64)]


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [prune_half_macs(f"timm:{name}", side, {}) for name, side in ZOO]
    write_results("zoo_prune", {
        "what": "zoo models (random init) pruned with prune_(PruneConfig(target='macs=0.5'))",
        "pass_rule": "MACs ratio within 0.45..0.55, output shape kept, model-directory reload exact",
        "summary": {"models": len(rows), "passed": sum(r["result"] == "pass" for r in rows)},
        "environment": environment(args.threads), "models": rows})
    for r in rows:
        print(f"| {r['model']} | {r['input_size'][1]} | {r['result']} | {r.get('macs_ratio', float('nan')):.3f} | "
              f"{r.get('error', '')} |")


if __name__ == "__main__":
    main()
