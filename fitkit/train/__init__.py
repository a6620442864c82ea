"""Training entry points: ``python -m fitkit.train COMMAND --out PATH ...``.

A command is registered with :func:`register_command` from the module that implements it; the
modules listed in :data:`COMMAND_MODULES` are imported by the CLI. Adding a command is one new
module (or function) plus its registration. Every command is resumable; a resume is checked
against the run's saved settings (:func:`settings_mismatch`). Every trainer refuses counts,
steps and rates that would not train (:func:`check_positive`) before it writes anything, and
holds the lock ``OUT.lock`` beside its output while it runs (:func:`output_lock`), so a second
trainer on the same ``--out`` is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fitkit.io.runs import canonical, settings_difference, writer_lock

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


def check_positive(**settings: float) -> None:
    """Refuse a count, step number or rate that is not a finite number > 0.

    Raises:
        ValueError: naming the first such setting and its value.
    """
    for name, value in settings.items():
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_non_negative(**settings: float) -> None:
    """Refuse a weight, noise level or interval that is negative or not finite.

    Raises:
        ValueError: naming the first such setting and its value.
    """
    for name, value in settings.items():
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def output_lock(out: str | os.PathLike) -> contextlib.AbstractContextManager[None]:
    """The writer lock of a training run writing ``out``: ``OUT.lock`` beside it
    (:func:`fitkit.io.runs.writer_lock`).

    Raises:
        RunError: another live process trains into ``out`` (named, with the lock's path).
    """
    out = Path(out)
    return writer_lock(out.with_name(out.name + ".lock"), f"training output {out}")
