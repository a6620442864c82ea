"""Displacement-network checkpoints: one ``torch.save`` file with the network's config.

Layout (a dict, loadable with ``torch.load(..., weights_only=True)``)::

    format    "fitkit.flownet"
    version   1
    config    FlowNetConfig fields (dict)
    model     the network's state dict
    training  optional: what a training run needs to resume (optimizer, step, RNG, ...)

Files are written to a temporary name and renamed, so a checkpoint that exists is complete.
Loading is strict: a file that is not such a checkpoint, a config with unknown or missing fields
or weights that do not match the config raise :class:`CheckpointError` naming the file and field.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from fitkit.nets.flownet import FlowNet, FlowNetConfig

FORMAT = "fitkit.flownet"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a valid displacement-network checkpoint."""


def save_flownet(path: str | os.PathLike, net: FlowNet,
                 training: dict[str, Any] | None = None) -> Path:
    """Write ``net`` (and optionally a training state) to ``path`` atomically.

    Args:
        path: output file (parent folders are created).
        net: the network; its config is saved with it.
        training: extra state of a training run (tensors, numbers, strings, lists, dicts).
    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "config": dataclasses.asdict(net.config),
        "model": {key: value.detach().cpu() for key, value in net.state_dict().items()},
    }
    if training is not None:
        state["training"] = training
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The validated contents of a checkpoint, on the CPU.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a fitkit displacement-network checkpoint, or a bad field.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({error})") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a fitkit displacement-network checkpoint "
                              f"(field 'format' should be {FORMAT!r})")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint version {state.get('version')!r} "
                              f"(this fitkit reads version {VERSION})")
    for field, kind in (("config", dict), ("model", dict)):
        if not isinstance(state.get(field), kind):
            raise CheckpointError(f"{path}: field {field!r} is missing or not a {kind.__name__}")
    return state


def config_from_dict(values: dict[str, Any], where: str = "config") -> FlowNetConfig:
    """A :class:`FlowNetConfig` from saved fields, exactly (no missing or unknown field).

    Raises:
        CheckpointError: naming ``where`` and the offending field.
    """
    known = {field.name for field in dataclasses.fields(FlowNetConfig)}
    unknown, missing = set(values) - known, known - set(values)
    if unknown or missing:
        raise CheckpointError(f"{where}: unknown fields {sorted(unknown)}, missing fields "
                              f"{sorted(missing)}")
    try:
        return FlowNetConfig(**values)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{where}: {error}") from error


def load_flownet(path: str | os.PathLike, device: torch.device | str = "cpu") -> FlowNet:
    """The network saved in ``path``, with its config, in eval mode on ``device``.

    Raises:
        FileNotFoundError, CheckpointError: see :func:`read_checkpoint`; also weights that do not
            fit the saved config.
    """
    state = read_checkpoint(path)
    net = FlowNet(config_from_dict(state["config"], f"{path}: field 'config'"))
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: field 'model' does not fit the saved config "
                              f"({error})") from error
    return net.to(device).eval()
