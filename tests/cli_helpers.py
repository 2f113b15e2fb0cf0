"""Shared by the CLI tests: run `slimkit` in-process, and a tiny user model file."""

from __future__ import annotations

import sys
from pathlib import Path

TINY_MODEL = """
import torch.nn as nn

def tiny(num_classes=10):
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, stride=2, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes))

tiny.input_size = (3, 16, 16)
"""


def tiny_model_file(folder: Path) -> str:
    """Write TINY_MODEL into `folder`; returns its model spec (FILE:FUNCTION)."""
    (folder / "tiny.py").write_text(TINY_MODEL)
    return f"{folder / 'tiny.py'}:tiny"


def run_cli_code(monkeypatch, *args) -> int:
    """`slimkit ARGS` in this process; returns the exit code."""
    from slimkit.cli.main import main

    monkeypatch.setattr(sys, "argv", ["slimkit", *map(str, args)])
    try:
        main()
    except SystemExit as exc:
        return exc.code or 0
    return 0


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run `slimkit ARGS` in this process; returns (exit code, stdout, stderr)."""
    code = run_cli_code(monkeypatch, *args)
    out = capsys.readouterr()
    return code, out.out, out.err
