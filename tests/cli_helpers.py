"""Running the slimkit CLI inside a test process."""

from __future__ import annotations

import sys

from slimkit.cli.main import main


def run_cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run `slimkit ARGS` in this process; returns (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["slimkit", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err
