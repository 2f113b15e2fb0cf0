"""Usage errors of every command: usage text, the message, exit code 2, no traceback."""

import sys

import pytest

from slimkit.cli.main import app, main

COMMANDS = sorted(c.name or c.callback.__name__ for c in app.registered_commands)


def run(monkeypatch, capsys, *argv):
    monkeypatch.setattr(sys, "argv", ["slimkit", *argv])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    return exc.value.code, out.out + out.err


def test_every_command_is_registered():
    assert {"profile", "train", "distill", "prune", "export", "quantize", "compress", "zoo"} <= set(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_unknown_option_shows_usage_and_exits_2(monkeypatch, capsys, command):
    code, text = run(monkeypatch, capsys, command, "--bogus")
    assert code == 2, text
    assert f"Usage: slimkit {command}" in text and "No such option: --bogus" in text
    assert "Traceback" not in text and "NoSuchOption" not in text


def test_unknown_command_and_missing_argument_exit_2(monkeypatch, capsys):
    code, text = run(monkeypatch, capsys, "bogus")
    assert code == 2 and "No such command 'bogus'" in text
    code, text = run(monkeypatch, capsys, "prune", "--out", "x")
    assert code == 2 and "Missing argument" in text and "Usage: slimkit prune" in text
