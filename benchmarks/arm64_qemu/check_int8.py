"""int8 on arm64, emulated: ONNX Runtime's aarch64 kernels, with and without the dot product, against exact int32.

    sudo .venv/bin/python benchmarks/arm64_qemu/check_int8.py [--work runs/arm64_int8]

Builds s8 QDQ models here (PyTorch, slimkit's quantizer), captures every int8 op ORT runs on arm64 under qemu-user
(run.sh, `--cpu max`: arm64-dotprod; `--cpu cortex-a53`: arm64), and recomputes each captured output here with
exact integer accumulation (slimkit.compress.quantize.int8_check.compare_captured). The same check runs on this
machine's own path for comparison. Models: the hand-built 1x1 conv whose 8-bit pairs saturate on x86 without VNNI,
random-init resnet18 and mobilenet_v3_small at 3x64x64 (8-bit weights, no equalization), and attention scores
(a MatMul of two activations). Writes benchmarks/results/arm64_int8_check.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn as nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from _common import RESULTS, environment  # noqa: E402

CPUS = {"max": "arm64-dotprod", "cortex-a53": "arm64"}


class AttentionScores(nn.Module):
    """q @ k^T: both operands of the MatMul are activations (QLinearMatMul with an activation B)."""

    def __init__(self):
        super().__init__()
        self.q, self.k = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return self.q(x) @ self.k(x).transpose(-1, -2)


def ones_conv() -> nn.Module:
    net = nn.Conv2d(8, 8, 1, bias=False)
    nn.init.ones_(net.weight)
    return net


def models() -> dict[str, tuple[nn.Module, tuple, np.ndarray]]:
    import torchvision

    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    return {
        "ones_conv": (ones_conv(), (8, 4, 4), np.ones((4, 8, 4, 4), np.float32)),
        "resnet18": (torchvision.models.resnet18(num_classes=10), (3, 64, 64),
                     rng.standard_normal((8, 3, 64, 64)).astype(np.float32)),
        "mobilenet_v3_small": (torchvision.models.mobilenet_v3_small(num_classes=10), (3, 64, 64),
                               rng.standard_normal((8, 3, 64, 64)).astype(np.float32)),
        "attention_scores": (AttentionScores(), (1, 6, 8), rng.standard_normal((8, 1, 6, 8)).astype(np.float32)),
    }


def build(work: Path, names: list[str] | None = None) -> None:
    from slimkit.compress.quantize.ptq import QuantSettings, prepare_fp32, quantize_static_qdq
    from slimkit.deploy import export_onnx

    for name, (net, size, x) in models().items():
        if names and name not in names:
            continue
        folder = work / name
        folder.mkdir(parents=True, exist_ok=True)
        export_onnx(net.eval(), size, folder / "fp32.onnx")
        pre = prepare_fp32(folder / "fp32.onnx", folder / "pre.onnx")
        quantize_static_qdq(pre, folder / "model.onnx", x, QuantSettings(weights="s8"))
        np.save(folder / "x.npy", x[:2])


def compare(folder: Path, tag: str) -> dict:
    from slimkit.compress.quantize.int8_check import compare_captured

    out = folder / tag
    names = json.loads((out / "names.json").read_text())
    with np.load(out / "values.npz") as arrays:
        values = {name: arrays[f"arr_{i}"] for i, name in enumerate(names)}
    meta = json.loads((out / "meta.json").read_text())
    check = compare_captured(onnx.load(str(out / "capture.onnx")), values, meta["int8_path"], 2)
    return {**check.to_dict(), "machine": meta["machine"], "logits": np.load(out / "logits.npy")}


def host_check(folder: Path) -> dict:
    from slimkit.compress.quantize.int8_check import int8_exact_check
    from slimkit.compress.quantize.ort_eval import predict

    x = np.load(folder / "x.npy")
    return {**int8_exact_check(folder / "model.onnx", x).to_dict(), "logits": predict(folder / "model.onnx", x)}


def capture_on_arm64(work: Path) -> None:
    """Every WORK/<model>/model.onnx captured on both emulated arm64 cores (WORK/<model>/<cpu>/)."""
    for cpu in CPUS:
        subprocess.run(["bash", str(HERE / "run.sh"), "--cpu", cpu, str(HERE / "arm_capture.py"), str(work), cpu],
                       check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/arm64_int8"))
    args = parser.parse_args()
    work = args.work.resolve()
    build(work)
    capture_on_arm64(work)
    rows = []
    for folder in sorted(p for p in work.iterdir() if (p / "model.onnx").exists()):
        host = host_check(folder)
        row = {"model": folder.name, "host": {k: v for k, v in host.items() if k != "logits"}}
        for cpu, path in CPUS.items():
            arm = compare(folder, cpu)
            assert arm["int8_path"] == path and arm["machine"] == "aarch64", arm
            scale = float(np.max(np.abs(host["logits"]))) or 1.0
            row[path] = {**{k: v for k, v in arm.items() if k != "logits"},
                         "rel_max_logit_diff_vs_host": float(np.max(np.abs(arm["logits"] - host["logits"]))) / scale}
        rows.append(row)
        cells = [f"{p}: {'exact' if row[p]['passed'] else 'OFF'} ({row[p]['ops_checked']} ops, max "
                 f"{row[p]['max_steps']:.2f} steps)" for p in ("host", *CPUS.values())]
        print(f"{folder.name}: " + "; ".join(cells), flush=True)
    payload = {"rows": rows, "environment": environment(1),
               "conditions": "qemu-user (Debian) emulating an arm64 core; 2 images per model; s8 weights"}
    (RESULTS / "arm64_int8_check.json").write_text(json.dumps(payload, indent=2, default=float))
    print(f"wrote {RESULTS / 'arm64_int8_check.json'}")


if __name__ == "__main__":
    main()
