"""How a subproject declares its subcommands: one decorated function each.

A ``commands`` module creates one :class:`CommandGroup` and decorates a function per subcommand
with :meth:`CommandGroup.command`; the function adds its parser to argparse's subparsers and sets
``run`` (the function that executes it, returning the exit status).  Adding a subcommand is then
one function in the owning subproject's module, and the parser's assembly
(:func:`trustgc_cli.main.build_parser`) never changes.  Declaring imports no implementation:
``run`` functions import theirs when called, so ``trustgc --help`` stays fast and works on an
install without torch.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["CommandGroup", "Subparsers"]

#: What ``ArgumentParser.add_subparsers()`` returns (argparse has no public name for it).
Subparsers = argparse._SubParsersAction  # noqa: SLF001
AddCommand = Callable[[Subparsers], None]


@dataclass
class CommandGroup:
    """The subcommands of one subproject, in the order they were declared."""

    name: str
    adders: list[AddCommand] = field(default_factory=list)
    #: Subcommands left out of this install's parser, with why (see :meth:`register`).
    unavailable: dict[str, str] = field(default_factory=dict)

    def command(self, add: AddCommand) -> AddCommand:
        """Decorator: declare ``add`` (it adds one subparser) as a subcommand of this group."""
        self.adders.append(add)
        return add

    def register(self, commands: Subparsers) -> None:
        """Add every declared subcommand to ``commands``.

        A subcommand whose options need a package this install lacks (a client-only install
        has no Pillow, no torch) is left out and recorded in :attr:`unavailable`, so the rest
        of the command line (``trustgc classify``) still works there.
        """
        for add in self.adders:
            try:
                add(commands)
            except ModuleNotFoundError as error:
                self.unavailable[add.__name__.removeprefix("add_")] = f"needs {error.name}"
