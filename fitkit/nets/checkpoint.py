"""Network checkpoints: one ``torch.save`` layout for every kind of network fitkit trains.

Layout (a dict, loadable with ``torch.load(..., weights_only=True)``)::

    format    "fitkit.network"
    version   1
    kind      the network's kind, a key of NETWORK_KINDS ("flownet", ...)
    config    the fields of the kind's config dataclass (dict)
    model     the network's state dict
    training  optional: what a training run needs to resume (optimizer, step, RNG, ...)

Files of the earlier displacement-network layout (``"format": "fitkit.flownet"``, version 1, no
``kind``; the shipped ``fitkit/nets/data/flownet_open*.pt``) read as kind ``"flownet"``
(:data:`LEGACY_FORMATS`).

A kind is registered with :func:`register_network`: a network class built as ``net_class(config)``
that keeps its config as ``net.config``, and that config's dataclass. :func:`save_network` and
:func:`load_network` then save and load it; :func:`save_flownet` and :func:`load_flownet` are the
same for the displacement network. Files are written atomically
(:func:`fitkit.io.runs.write_torch`), so a checkpoint that exists is complete. Loading is strict:
a file that is not such a checkpoint, a kind that is not registered or not the one asked for, a
config with unknown or missing fields, or weights that do not match the config raise
:class:`CheckpointError` naming the file and field.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fitkit.io.runs import write_torch
from fitkit.io.safe_pickle import error_summary
from fitkit.nets.flownet import FlowNet, FlowNetConfig
from fitkit.nets.refit import ReFit, ReFitConfig

FORMAT = "fitkit.network"
VERSION = 1

FLOWNET_KIND = "flownet"
"""The kind of the displacement network (:class:`~fitkit.nets.flownet.FlowNet`)."""
REFIT_KIND = "refit"
"""The kind of ReFit (:class:`~fitkit.nets.refit.ReFit`)."""

LEGACY_FORMATS: dict[str, str] = {"fitkit.flownet": FLOWNET_KIND}
"""Earlier single-kind layouts (version :data:`LEGACY_VERSION`, no ``kind`` field) -> the kind
they hold."""

LEGACY_VERSION = 1

FIELDS = ("format", "version", "kind", "config", "model", "training")
"""The fields a checkpoint may have (``kind`` is absent from the legacy layouts)."""


class CheckpointError(ValueError):
    """A file that is not a valid fitkit network checkpoint (the message names file and field)."""


@dataclass(frozen=True)
class NetworkKind:
    """A kind of network that checkpoints can hold.

    Attributes:
        name: the ``kind`` field of its checkpoints.
        net_class: the network, built as ``net_class(config)`` and keeping it as ``net.config``.
        config_class: the config dataclass; its fields are saved as a dict, so they must be
            numbers, strings, booleans or tuples and lists of them.
        description: what the network is, for messages (``"displacement-network"``).
    """

    name: str
    net_class: type[nn.Module]
    config_class: type
    description: str


NETWORK_KINDS: dict[str, NetworkKind] = {}
"""Registered kinds of network, by name (:func:`register_network`)."""


def register_network(kind: str, net_class: type[nn.Module], config_class: type,
                     description: str | None = None) -> NetworkKind:
    """Make checkpoints of ``net_class`` savable and loadable under the name ``kind``.

    Args:
        kind: the name written in the ``kind`` field.
        net_class: the network class (see :class:`NetworkKind`).
        config_class: its config dataclass.
        description: what the network is, for messages (default ``kind``).
    Returns:
        The registered kind.
    Raises:
        TypeError: ``config_class`` is not a dataclass.
        ValueError: ``kind`` is already registered for other classes.
    """
    if not (isinstance(config_class, type) and dataclasses.is_dataclass(config_class)):
        raise TypeError(f"network kind {kind!r}: the config class must be a dataclass")
    registered = NETWORK_KINDS.get(kind)
    if registered and (registered.net_class, registered.config_class) != (net_class,
                                                                          config_class):
        raise ValueError(f"network kind {kind!r} is already registered for "
                         f"{registered.net_class.__qualname__}")
    NETWORK_KINDS[kind] = NetworkKind(kind, net_class, config_class, description or kind)
    return NETWORK_KINDS[kind]


def _registered(kind: str) -> NetworkKind:
    """The registered kind ``kind``.

    Raises:
        ValueError: no such kind.
    """
    if kind not in NETWORK_KINDS:
        raise ValueError(f"unknown network kind {kind!r}; registered: "
                         f"{', '.join(sorted(NETWORK_KINDS)) or 'none'}")
    return NETWORK_KINDS[kind]


def kind_of(net: nn.Module) -> str:
    """The registered kind whose network class is ``net``'s class.

    Raises:
        ValueError: the class is not registered.
    """
    for kind in NETWORK_KINDS.values():
        if type(net) is kind.net_class:
            return kind.name
    raise ValueError(f"{type(net).__qualname__} is not a registered network kind; register it "
                     "with fitkit.nets.register_network")


def save_network(path: str | os.PathLike, net: nn.Module, kind: str | None = None,
                 training: dict[str, Any] | None = None) -> Path:
    """Write ``net``, its kind and config (and optionally a training state) to ``path``
    atomically.

    Args:
        path: output file (parent folders are created).
        net: the network, of a registered kind; its ``config`` is saved with it.
        kind: its kind (default: found from ``net``'s class, :func:`kind_of`).
        training: extra state of a training run (tensors, numbers, strings, lists, dicts).
    Returns:
        The path written.
    Raises:
        ValueError: an unregistered kind, or a network or config that is not of the kind.
    """
    registered = _registered(kind if kind is not None else kind_of(net))
    if not isinstance(net, registered.net_class):
        raise ValueError(f"a {type(net).__qualname__} is not a {registered.name!r} network "
                         f"({registered.net_class.__qualname__})")
    if not isinstance(net.config, registered.config_class):
        raise ValueError(f"the config of a {registered.name!r} network must be a "
                         f"{registered.config_class.__qualname__}")
    state: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "kind": registered.name,
        "config": dataclasses.asdict(net.config),
        "model": {key: value.detach().cpu() for key, value in net.state_dict().items()},
    }
    if training is not None:
        state["training"] = training
    return write_torch(path, state)


def read_checkpoint(path: str | os.PathLike, kind: str | None = None) -> dict[str, Any]:
    """The validated contents of a checkpoint, on the CPU, with its ``kind`` (also for the
    legacy layouts).

    Args:
        path: the file.
        kind: the kind it must hold (default: any registered kind).
    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a fitkit network checkpoint (of ``kind``), or a bad field.
        ValueError: ``kind`` is not registered.
    """
    what = _registered(kind).description if kind is not None else "network"
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable torch checkpoint "
                              f"({error_summary(error)})") from error
    layout = state.get("format") if isinstance(state, dict) else None
    if layout != FORMAT and layout not in LEGACY_FORMATS:
        raise CheckpointError(f"{path}: not a fitkit {what} checkpoint "
                              f"(field 'format' should be {FORMAT!r})")
    version = LEGACY_VERSION if layout in LEGACY_FORMATS else VERSION
    if state.get("version") != version:
        raise CheckpointError(f"{path}: unsupported checkpoint version {state.get('version')!r} "
                              f"(this fitkit reads version {version} of {layout!r})")
    unknown = sorted(str(field) for field in state if field not in FIELDS)
    if unknown:
        raise CheckpointError(f"{path}: unknown fields {unknown}")
    if layout in LEGACY_FORMATS:
        state["kind"] = LEGACY_FORMATS[layout]
    saved = state.get("kind")
    if saved not in NETWORK_KINDS:
        raise CheckpointError(f"{path}: field 'kind': unknown network kind {saved!r}; "
                              f"registered: {', '.join(sorted(NETWORK_KINDS))}")
    if kind is not None and saved != kind:
        raise CheckpointError(f"{path}: field 'kind': a {saved!r} checkpoint, not a {what} "
                              f"({kind!r}) one")
    for field, expected in (("config", dict), ("model", dict)):
        if not isinstance(state.get(field), expected):
            raise CheckpointError(f"{path}: field {field!r} is missing or not a "
                                  f"{expected.__name__}")
    if not isinstance(state.get("training", {}), dict):
        raise CheckpointError(f"{path}: field 'training' is not a dict")
    return state


def config_from_dict(values: dict[str, Any], where: str = "config",
                     kind: str = FLOWNET_KIND) -> Any:
    """The config of a network of ``kind`` from saved fields: no unknown field, and no missing
    field but one with a default. A field added to a config later must default to what networks
    did before it (``RegressorConfig.keypoint_format``: ``""``, the crop alone), so that the
    checkpoints written before it load as what they are.

    Raises:
        CheckpointError: naming ``where`` and the offending field.
        ValueError: ``kind`` is not registered.
    """
    config_class = _registered(kind).config_class
    fields = dataclasses.fields(config_class)
    known = {field.name for field in fields}
    required = {field.name for field in fields if field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING}
    unknown, missing = set(values) - known, required - set(values)
    if unknown or missing:
        raise CheckpointError(f"{where}: unknown fields {sorted(unknown)}, missing fields "
                              f"{sorted(missing)}")
    try:
        return config_class(**values)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{where}: {error}") from error


def load_network(path: str | os.PathLike, kind: str | None = None,
                 device: torch.device | str = "cpu") -> nn.Module:
    """The network saved in ``path``, built from its config, in eval mode on ``device``.

    Args:
        path: the checkpoint.
        kind: the kind it must hold (default: any registered kind).
        device: where the network goes.
    Raises:
        FileNotFoundError, CheckpointError, ValueError: see :func:`read_checkpoint`; also
            weights that do not fit the saved config.
    """
    state = read_checkpoint(path, kind)
    registered = NETWORK_KINDS[state["kind"]]
    config = config_from_dict(state["config"], f"{path}: field 'config'", registered.name)
    net = registered.net_class(config)
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: field 'model' does not fit the saved config "
                              f"({error})") from error
    return net.to(device).eval()


def save_flownet(path: str | os.PathLike, net: FlowNet,
                 training: dict[str, Any] | None = None) -> Path:
    """:func:`save_network` for a displacement network."""
    return save_network(path, net, FLOWNET_KIND, training)


def load_flownet(path: str | os.PathLike, device: torch.device | str = "cpu") -> FlowNet:
    """:func:`load_network` for a displacement-network checkpoint (new or legacy layout)."""
    return load_network(path, FLOWNET_KIND, device)


register_network(FLOWNET_KIND, FlowNet, FlowNetConfig, "displacement-network")
register_network(REFIT_KIND, ReFit, ReFitConfig, "ReFit")
