"""Params and MACs of the zoo-B families next to the papers' tables (the numbers in the README zoo section).

For every registered variant: parameters, slimkit's MAC count (conv/linear/matmul/attention,
each multiply-accumulate once) at the paper's input size, batch 1, eval mode, random init; then
the same model counted the way the paper counted it (slimkit.zoo._paper_counts), so the
comparison is like for like.

    PYTHONPATH=src .venv/bin/python benchmarks/zoo_b_counts.py [--filter 'osnet*'] [--json out.json]
"""

from __future__ import annotations

import argparse
import fnmatch
import json

import torch

FAMILIES = ["osnet", "skipnet", "mobilemamba", "efficientvmamba", "dhvt", "affnet", "tvconv"]


def measure(name: str) -> dict:
    import timm

    from slimkit.zoo._catalog import zoo_model_names
    from slimkit.zoo._paper_counts import count_like_paper

    family = zoo_model_names()[name]
    kwargs = {"num_classes": 0} if family == "osnet" else {}  # OSNet's table leaves the classifier out
    model = timm.create_model(name, **kwargs).eval()
    if family == "tvconv":
        from slimkit.zoo.tvconv import reparameterize_

        train_params = sum(p.numel() for p in model.parameters())
        reparameterize_(model)
    size = tuple(model.pretrained_cfg["input_size"])
    counts = count_like_paper(model, family, torch.randn(1, *size))
    module = __import__(f"slimkit.zoo.{family}", fromlist=["PAPER_TABLE"])
    paper = getattr(module, "PAPER_TABLE", {}).get(name, {})
    row = {
        "name": name, "family": family, "input_size": list(size),
        "params": sum(p.numel() for p in model.parameters()), "macs": counts["macs"],
        "macs_paper_convention": counts["paper"], "scan_flops": counts["scan"], "paper": paper,
    }  # fmt: skip
    if family == "tvconv":
        row["params_training_form"] = train_params
    return row


def _fmt(v: float | None, unit: float = 1e6) -> str:
    return "-" if v is None else f"{v / unit:.2f}"


def _compare(ours: float, printed: str | None) -> str:
    """Relative difference to the printed number, and whether it is within 3% or its rounding."""
    from slimkit.zoo._paper_counts import parse_printed, within_paper

    if printed is None:
        return "-"
    value = parse_printed(printed)[0]
    return f"{100 * (ours - value) / value:+.1f}% {'ok' if within_paper(ours, printed) else 'OFF'}"


_HEADER = (
    "| variant | input | paper params | ours (M) | diff | paper MACs | ours, slimkit (M) "
    "| ours, counted as the paper (M) | diff |\n|---|---|---|---|---|---|---|---|---|"
)


def _row(r: dict) -> str:
    p = r["paper"]
    size = "x".join(map(str, r["input_size"][1:]))
    params_ref = p.get("params_repo") or p.get("params")
    macs_ref = p.get("macs_repo") or p.get("macs")
    cells = [
        r["name"], size, p.get("params", "-"), _fmt(r["params"]), _compare(r["params"], params_ref),
        p.get("macs", "-"), _fmt(r["macs"]), _fmt(r["macs_paper_convention"]),
        _compare(r["macs_paper_convention"], macs_ref),
    ]  # fmt: skip
    return "| " + " | ".join(cells) + " |"


def markdown(rows: list[dict]) -> str:
    """One table per family; diffs are against the repository's exact figure where one exists."""
    lines = []
    for family in FAMILIES:
        fam = [r for r in rows if r["family"] == family]
        if fam:
            lines += [f"\n### {family}\n", _HEADER] + [_row(r) for r in fam]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter", default="*")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from slimkit.zoo._catalog import zoo_model_names

    names = [n for n, fam in zoo_model_names().items() if fam in FAMILIES and fnmatch.fnmatch(n, args.filter)]
    rows = [measure(n) for n in names]
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"torch": torch.__version__, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
