"""The ``trustgc`` entry point: one parser assembled from every subproject's subcommands.

Each group in :data:`COMMAND_GROUPS` is a module with a ``COMMANDS`` :class:`CommandGroup`; a new
subcommand is one decorated function in its owner's module, a new group one line here.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from typing import TypeVar

from trustgc_cli.registry import CommandGroup

__all__ = ["COMMAND_GROUPS", "build_parser", "guard_interrupt", "main"]

T = TypeVar("T")

#: Modules whose ``COMMANDS`` make up the command line, in the order ``--help`` lists them.
COMMAND_GROUPS = ("training.commands", "trustgc_cli.core_commands", "serving.commands")
#: Packages whose errors are failures of a server or the network, reported without a traceback.
_SERVICE_ERRORS = {"serving", "requests", "grpc"}


def command_groups() -> list[CommandGroup]:
    """Every group's ``COMMANDS`` (importing a commands module imports no implementation)."""
    return [importlib.import_module(name).COMMANDS for name in COMMAND_GROUPS]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trustgc", description="The trustgc command line: one subcommand per job."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    missing: list[str] = []
    for group in command_groups():
        group.register(commands)
        missing += [f"{group.name} {name} ({why})" for name, why in group.unavailable.items()]
    if missing:
        parser.epilog = (
            f"Not available in this install: {', '.join(missing)}; install the extra that "
            "brings them, e.g. pip install 'trustgc[train]' or 'trustgc[serve]'."
        )
    return parser


def guard_interrupt(label: str, run: Callable[[], T]) -> T | int:
    """``run()``, or after Ctrl-C the line ``LABEL: interrupted`` and status 130 (128 + SIGINT):
    no traceback.  The foreground server stops java itself (serving.server.run_foreground)."""
    try:
        return run()
    except KeyboardInterrupt:
        print(f"{label}: interrupted", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    args = guard_interrupt("trustgc", lambda: build_parser().parse_args(argv))
    if not isinstance(args, argparse.Namespace):
        return args  # interrupted while loading the subcommands
    return guard_interrupt(f"trustgc {args.command}", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, TimeoutError, ConnectionError) as error:
        print(f"trustgc {args.command}: error: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # client/server failures: a message, not a traceback
        if type(error).__module__.split(".")[0] not in _SERVICE_ERRORS:
            raise
        print(f"trustgc {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
