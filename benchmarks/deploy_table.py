"""The markdown table of benchmarks/results/deploy_bench.json, written between markers in docs/deploy-runtimes.md."""

from __future__ import annotations

from pathlib import Path

RUNTIMES = ("onnx", "openvino", "tflite", "executorch")
TITLES = {"onnx": "ORT", "openvino": "OpenVINO", "tflite": "LiteRT", "executorch": "ExecuTorch"}  # short column names
BEGIN, END = "<!-- deploy_bench:begin -->", "<!-- deploy_bench:end -->"


def _cell(row: dict, rt: str, precision: str, threads: str) -> str:
    cell = row["runtimes"].get(rt, {})
    if "error" in cell or (precision == "int8" and "int8_error" in cell):
        return "n/a¹"
    entry = cell.get("artifacts", {}).get(f"{rt}:{precision}")
    lat = row.get("timing", {}).get("latency", {}).get(threads, {})
    if entry is None:
        return "n/a"
    ms = lat.get(f"{rt}:{precision}")
    return f"{ms['median']:.2f}" if ms else "-"


def _fastest(row: dict, precision: str, threads: str) -> str:
    lat = row.get("timing", {}).get("latency", {}).get(threads, {})
    keys = [k for k in lat if k.endswith(f":{precision}") and not k.startswith("pytorch")]
    if not keys:
        return "-"
    best = min(keys, key=lambda k: lat[k]["median"])
    return TITLES[best.split(":")[0]]


def _parity(row: dict, precision: str) -> str:
    parts = []
    for rt in RUNTIMES:
        entry = row["runtimes"].get(rt, {}).get("artifacts", {}).get(f"{rt}:{precision}")
        if entry:
            c = entry["check"]
            parts.append(f"{TITLES[rt]} {c['max_abs_diff'] / max(1.0, c['output_scale']):.0e}")
    return ", ".join(parts)


def _top1(row: dict) -> str:
    parts = []
    for rt in RUNTIMES:
        entry = row["runtimes"].get(rt, {}).get("artifacts", {}).get(f"{rt}:int8")
        if entry and entry.get("accuracy"):
            parts.append(f"{TITLES[rt]} {entry['accuracy']['change']:+.1f}")
    return ", ".join(parts)


def table(results: dict) -> str:
    c = results.get("conditions", {})
    lines = []
    for threads in ("1", "2"):
        lines += [f"**{threads} thread{'s' if threads != '1' else ''}**, median ms (batch 1, 3x224x224):", "",
                  "| model | PyTorch fp32 | " + " | ".join(f"{TITLES[r]} fp32" for r in RUNTIMES) + " | "
                  + " | ".join(f"{TITLES[r]} int8" for r in RUNTIMES) + " | fastest fp32 | fastest int8 |",
                  "|---" * (3 + 2 * len(RUNTIMES) + 1) + "|"]
        for name, row in results["models"].items():
            lat = row.get("timing", {}).get("latency", {}).get(threads, {})
            torch_ms = f"{lat['pytorch:fp32']['median']:.2f}" if "pytorch:fp32" in lat else "-"
            cells = [_cell(row, rt, p, threads) for p in ("fp32", "int8") for rt in RUNTIMES]
            lines.append(f"| {name} | {torch_ms} | " + " | ".join(cells)
                         + f" | {_fastest(row, 'fp32', threads)} | {_fastest(row, 'int8', threads)} |")
        lines.append("")
    lines += ["Parity (max |diff| / max(1, output scale); fp32 vs PyTorch, int8 vs its fake-quant reference) and "
              f"int8 top-1 change (points vs PyTorch fp32 on {c.get('val', '?')} Fashion-MNIST test images):", "",
              "| model | PyTorch fp32 top-1 | fp32 parity | int8 parity | int8 top-1 change |", "|---|---|---|---|---|"]
    for name, row in results["models"].items():
        lines.append(f"| {name} | {row['pytorch_fp32_top1']:.1f} | {_parity(row, 'fp32')} | {_parity(row, 'int8')} | "
                     f"{_top1(row)} |")
    errors = [(n, f"{TITLES[rt]}{' int8' if key == 'int8_error' else ''}", cell[key])
              for n, row in results["models"].items() for rt, cell in row["runtimes"].items()
              for key in ("error", "int8_error") if key in cell]
    lines.append("")
    if errors:
        lines += ["¹ not produced:"] + [f"- {n} / {what}: `{e}`" for n, what, e in errors]
    for name, row in results["models"].items():
        t = row.get("timing")
        where = t.get("cpu", c) if t else c  # rows timed before the CPU was recorded per model ran where `c` says
        path = "AVX-512 VNNI" if where.get("avx512_vnni") else "no VNNI (AVX2-class)"
        lines.append(f"- {name}: " + (f"timed on {where.get('cpu')} ({path}) under a {t.get('cpu_lock', 'exclusive')} "
                                      f"CPU lock, load average {' '.join(t['load_avg'])} after timing"
                                      if t else "prepared, not timed"))
    missing = [m for m in ("resnet18", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "emov2_1m")
               if m not in results["models"]]
    if missing:
        lines.append(f"- not measured yet: {', '.join(missing)} (run the three phases with --models)")
    lines += ["", f"Last prepared on: {c.get('cpu')} ({c.get('cores')} cores, AVX-512 VNNI: {c.get('avx512_vnni')}, "
              f"AVX-512 BF16: {c.get('avx512_bf16')}), 2 cores shared with other jobs. Versions: " + ", ".join(f"{TITLES.get(k, k)} {v}" for k, v in c.get("versions", {}).items())]
    return "\n".join(lines)


def write_table(results: dict, doc: Path) -> None:
    text = doc.read_text() if doc.exists() else f"{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    doc.write_text(f"{head}{BEGIN}\n{table(results)}\n{END}{tail}")
    print(table(results))
