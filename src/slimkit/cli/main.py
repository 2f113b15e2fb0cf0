"""Entry point: registers every command module and turns SlimkitError into one line + exit 2."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys

import typer

from slimkit.errors import SlimkitError

app = typer.Typer(
    name="slimkit",
    help="Compress vision models to a budget, and tell the truth about the result.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# One module per command; each defines register(app). Modules that are not written yet are skipped.
COMMAND_MODULES = (
    "profile_cmd",
    "train_cmd",
    "distill_cmd",
    "prune_cmd",
    "export_cmd",
    "quantize_cmd",
    "compress_cmd",
    "zoo_cmd",
    "search_cmd",
    "deploy_cmd",
)

_STATE = {"debug": False}


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log slimkit's progress messages."),
) -> None:
    _STATE["debug"] = debug
    if verbose or debug:
        logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _register_commands() -> None:
    for name in COMMAND_MODULES:
        full = f"slimkit.cli.{name}"
        if importlib.util.find_spec(full) is None:
            continue
        importlib.import_module(full).register(app)


_register_commands()


def _click_types(name: str) -> tuple[type, ...]:
    """Exception class `name` of every click the CLI may raise from: Typer >= 0.29 bundles its own
    copy (typer._click), whose classes are not click's."""
    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def main() -> None:
    """Console-script entry: user errors print one line and exit 2 (traceback only with --debug)."""
    debug = "--debug" in sys.argv[1:] or os.environ.get("SLIMKIT_DEBUG") == "1"
    try:
        app(standalone_mode=False, prog_name="slimkit")
    except SlimkitError as exc:
        if debug:
            raise
        typer.echo(f"error: {_one_line(exc)}", err=True)
        sys.exit(exc.exit_code)
    except (typer.Exit, SystemExit) as exc:
        sys.exit(getattr(exc, "exit_code", getattr(exc, "code", 0)))
    except (typer.Abort, *_click_types("Abort")):
        typer.echo("aborted", err=True)
        sys.exit(130)
    except _click_types("ClickException") as exc:  # usage errors: usage + message, exit 2
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:
        if debug:
            raise
        typer.echo(f"error: {type(exc).__name__}: {_one_line(exc)} (run with --debug for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
