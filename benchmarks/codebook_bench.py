"""Codebook compression figures: file bytes and top-1 of the digits test CNN at 4 and 2 bits.

The model is tests/quant_helpers.py's `trained("plain")` (3 convs + linear on 1x16x16 digits, trained 5
epochs on one thread, seed 0), the one tests/test_quant_codebook.py asserts on. The two big convs
(`min_params=700`) get `groups=2` codebooks; the first conv and the head stay float. For each bit width:
k-means only, and + 1 epoch learning centroids and mappings (lr 1e-3, the full digits train split).
Sizes are the bytes of the saved files (fp32: safetensors of the model; codebook: save_codebook's file);
top-1 is on the 359 digits val images. No timing: run it under the shared CPU lock.

    flock -s /tmp/slimkit-cpu.lock .venv/bin/python benchmarks/codebook_bench.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from _common import ROOT, environment, write_results


def main() -> None:
    import torch
    from safetensors.torch import save_model

    from slimkit.compress.quantize.codebook import codebook_compress, save_codebook
    from slimkit.compress.quantize.config import CodebookConfig

    sys.path.insert(0, str(ROOT / "tests"))
    from quant_helpers import digits_tensors, torch_accuracy, trained

    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    torch.set_num_threads(1)
    model = trained("plain")
    (x, y), (vx, _) = digits_tensors()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        save_model(model, str(Path(tmp) / "fp32.safetensors"))
        rows.append({"variant": "fp32 safetensors", "bits": 32, "epochs": 0,
                     "file_bytes": (Path(tmp) / "fp32.safetensors").stat().st_size, "top1": torch_accuracy(model)})
        for bits in (4, 2):
            for epochs in (0, 1):
                torch.manual_seed(0)
                cfg = CodebookConfig(bits=bits, groups=2, min_params=700, epochs=epochs, lr=1e-3)
                result = codebook_compress(model, cfg, x, y)
                path = save_codebook(result, Path(tmp) / f"cb{bits}-{epochs}.safetensors")
                rows.append({"variant": f"{bits}-bit, " + ("k-means only" if epochs == 0 else f"+ {epochs} epoch"),
                             "bits": bits, "epochs": epochs, "layers": sorted(result.codes),
                             "file_bytes": path.stat().st_size, "top1": torch_accuracy(result.model.eval())})
    compressed = sum(model.get_submodule(n).weight.numel() for n in rows[-1]["layers"])
    total = sum(m.weight.numel() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    write_results("codebook_bench", {
        "model": "tests/quant_helpers.py trained('plain'): 3 convs + linear, 1x16x16 digits, 5 epochs",
        "config": {"groups": 2, "min_params": 700, "lr": 1e-3}, "val_images": int(len(vx)),
        "compressed_weights": compressed, "conv_linear_weights": total,
        "environment": environment(1), "rows": rows})
    print("| | file bytes | top-1 |\n|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['file_bytes']:,} | {r['top1']:.2f} |")


if __name__ == "__main__":
    main()
