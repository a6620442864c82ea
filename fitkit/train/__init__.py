"""Training entry points: ``python -m fitkit.train COMMAND --out PATH ...``.

A command is registered with :func:`register_command` from the module that implements it; the
modules listed in :data:`COMMAND_MODULES` are imported by the CLI. Adding a command is one new
module (or function) plus its registration. Every command is resumable; a resume is checked
against the run's saved settings (:func:`settings_mismatch`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fitkit.io.runs import canonical, settings_difference

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


def settings_mismatch(saved: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """``"KEY: checkpoint SAVED, given GIVEN"`` for each setting that differs between those saved
    with a training run and those given to resume it (in key order; empty when they agree)."""
    saved, given = canonical(saved), canonical(given)
    return [f"{key}: checkpoint {saved.get(key)!r}, given {given.get(key)!r}"
            for key in settings_difference(saved, given)]
