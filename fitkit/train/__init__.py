"""Training entry points: ``python -m fitkit.train COMMAND --out PATH ...``.

A command is registered with :func:`register_command` from the module that implements it; the
modules listed in :data:`COMMAND_MODULES` are imported by the CLI. Adding a command is one new
module (or function) plus its registration.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

COMMAND_MODULES: tuple[str, ...] = ("fitkit.train.priors", "fitkit.train.flow")
"""Modules whose import registers CLI commands."""


@dataclass(frozen=True)
class Command:
    """A ``python -m fitkit.train`` subcommand.

    Attributes:
        name: subcommand name.
        help: one-line description.
        configure: adds the command's arguments to its parser.
        run: runs it with the parsed arguments.
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


COMMANDS: dict[str, Command] = {}
"""Registered commands, by name."""


def register_command(command: Command) -> None:
    """Make ``command`` available as ``python -m fitkit.train NAME``."""
    COMMANDS[command.name] = command
