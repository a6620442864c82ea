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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fitkit.io.runs import canonical, settings_difference, writer_lock

COMMAND_MODULES: tuple[str, ...] = ("fitkit.train.priors", "fitkit.train.flow",
                                     "fitkit.train.refit", "fitkit.train.spin")
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


def size_type(configs: Mapping[str, Any]) -> Callable[[str], Any]:
    """An argparse ``type`` for ``--size``: the config of a size name in ``configs``; an
    unknown name is refused with the sizes listed (exit code 2)."""

    def size(text: str) -> Any:
        if text not in configs:
            raise argparse.ArgumentTypeError(f"unknown size {text!r}; choose one of "
                                             f"{', '.join(configs)}")
        return configs[text]

    return size


def restore_training(state: dict[str, Any] | None, net: Any,
                     optimizer: Any) -> tuple[int, list[dict[str, Any]]]:
    """Put a resumed run's saved training state back: the network's weights, the optimizer's
    state and torch's global random state (the dropout masks' generator).

    Args:
        state: the checkpoint's contents (``model``, ``training``), or ``None`` for a fresh run.
        net: the network (``torch.nn.Module``); optimizer: its optimizer.
    Returns:
        The steps done and the validation history (0 and ``[]`` for a fresh run).
    """
    if state is None:
        return 0, []
    import torch

    training = state["training"]
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(training["optimizer"])
    torch.set_rng_state(training["rng"])
    return training["step"], list(training["history"])


def read_resume_state(out: str | os.PathLike, kind: str, settings: dict[str, Any],
                      config: Any, steps: int) -> tuple[dict[str, Any], Any]:
    """The checkpoint a network trainer resumes from, checked against the run's settings.

    Args:
        out: the run's checkpoint.
        kind: its network kind (:data:`fitkit.nets.NETWORK_KINDS`).
        settings: the settings given to resume, compared with those saved.
        config: the network config given, or ``None`` (then the checkpoint's is used).
        steps: the run's total steps (not fewer than those done).
    Returns:
        The checkpoint's contents and its network config.
    Raises:
        FileNotFoundError: no checkpoint at ``out``.
        CheckpointError: no or an incomplete training state.
        ValueError: settings or config that differ from the run's (named), or ``steps`` below
            the steps done.
    """
    from fitkit.nets.checkpoint import CheckpointError, config_from_dict, read_checkpoint

    if not Path(out).is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {out}")
    state = read_checkpoint(out, kind)
    if "training" not in state:
        raise CheckpointError(f"{out}: no training state to resume from (field 'training')")
    missing = [name for name in ("step", "settings", "optimizer", "rng", "history")
               if name not in state["training"]]
    if missing:
        raise CheckpointError(f"{out}: field 'training' lacks {', '.join(missing)}")
    saved = config_from_dict(state["config"], f"{out}: field 'config'", kind)
    mismatch = settings_mismatch(state["training"]["settings"], settings)
    if config is not None and config != saved:
        mismatch.append(f"config: checkpoint {saved}, given {config}")
    if mismatch:
        raise ValueError(f"{out}: resume with the run's own settings ({'; '.join(mismatch)})")
    done = state["training"]["step"]
    if done > steps:
        raise ValueError(f"{out}: the checkpoint is at step {done}, past steps={steps}; "
                         f"resume with at least {done} steps")
    return state, saved
