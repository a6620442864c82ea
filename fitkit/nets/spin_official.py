"""Loaders of SPIN's public files (github.com/nkolot/SPIN) into fitkit's
:class:`~fitkit.nets.regressor.Regressor`.

``model_checkpoint.pt`` (``torch.save`` of a dict; SPIN's trainer also stores ``optimizer``,
``epoch``, ``batch_idx``, ``batch_size``, ``total_step_count``, which are ignored) holds the state
dict of ``models/hmr.py``'s ``HMR`` under ``model``::

    conv1.weight (64, 3, 7, 7), bn1.*                        ResNet-50 stem
    layer{1..4}.{i}.conv{1,2,3}.weight, .bn{1,2,3}.*         bottlenecks (3, 4, 6, 3 blocks)
    layer{1..4}.0.downsample.{0.weight, 1.*}                 projections
    fc1.* (1024, 2048 + 157), fc2.* (1024, 1024)             IEF head
    decpose.* (144, 1024), decshape.* (10, 1024), deccam.* (3, 1024)
    init_pose (1, 144), init_shape (1, 10), init_cam (1, 3)  mean parameters (buffers)

These are exactly the names of fitkit's network, so the state dict maps one to one. BatchNorm's
``num_batches_tracked`` counters (absent from files of older PyTorch versions) are optional; a
``module.`` prefix on every key (a ``DataParallel`` save) is removed.

``smpl_mean_params.npz``: ``pose`` (144,) 6D rotations of the 24 joints (SPIN's layout, which is
fitkit's), ``shape`` (10,), ``cam`` (3,). It is derived from SMPL and licensed with it: fitkit
never ships it (its own open mean parameters: :func:`fitkit.nets.regressor.open_mean_params`).

Loading is strict: keys of the file that the network lacks, parameters the network needs that
the file lacks (both named) and shapes that differ raise
:class:`~fitkit.nets.checkpoint.CheckpointError`. Files are read tensors-only
(:func:`fitkit.io.safe_pickle.safe_torch_load`, :func:`fitkit.io.npz.read_npz`): no code runs.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fitkit.io.npz import FileKeyError, read_npz
from fitkit.io.safe_pickle import safe_torch_load
from fitkit.nets.checkpoint import CheckpointError
from fitkit.nets.regressor import (
    BACKBONES,
    NUM_BETAS,
    NUM_CAMERA,
    POSE_DIM,
    REGRESSOR_CONFIGS,
    Regressor,
    RegressorConfig,
)

MEAN_PARAMS_KEYS: dict[str, int] = {"pose": POSE_DIM, "shape": NUM_BETAS, "cam": NUM_CAMERA}
"""Keys of ``smpl_mean_params.npz`` and their lengths."""
MEAN_BUFFERS: dict[str, str] = {"pose": "init_pose", "shape": "init_shape", "cam": "init_cam"}
"""Mean-parameter file key -> the network's buffer."""
OPTIONAL_SUFFIX = ".num_batches_tracked"
"""BatchNorm counters that files of older PyTorch versions lack."""


class MeanParamsError(FileKeyError):
    """A mean-parameter file that cannot be read, or a key in it missing or malformed."""


def read_spin_state(path: str | os.PathLike) -> dict[str, Tensor]:
    """The HMR state dict of a SPIN checkpoint (under ``model``, or the file itself).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a tensors-only torch file holding a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SPIN checkpoint not found: {path}")
    try:
        state = safe_torch_load(path)
    except FileKeyError as error:
        raise CheckpointError(str(error)) from error
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not (isinstance(state, dict) and state
            and all(isinstance(value, Tensor) for value in state.values())):
        raise CheckpointError(f"{path}: field 'model' is not a state dict of tensors")
    if all(str(key).startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state


def read_mean_params(path: str | os.PathLike) -> dict[str, Tensor]:
    """SPIN's ``smpl_mean_params.npz`` layout (or fitkit's own file in it).

    Args:
        path: the ``.npz``.
    Returns:
        ``"pose"`` ``(144,)``, ``"shape"`` ``(10,)``, ``"cam"`` ``(3,)`` float32 tensors.
    Raises:
        FileNotFoundError: no such file.
        MeanParamsError: unreadable, or a key missing, of another size or not finite (named).
    """
    arrays = read_npz(path, MeanParamsError, "mean-parameter")
    out = {}
    for key, size in MEAN_PARAMS_KEYS.items():
        if key not in arrays:
            raise MeanParamsError(path, key, f"missing (the file has {sorted(arrays)})")
        value = arrays[key]
        if value.dtype.kind not in "fiu" or value.size != size:
            raise MeanParamsError(path, key, f"must hold {size} numbers, got shape "
                                  f"{value.shape} {value.dtype}")
        if not np.isfinite(value).all():
            raise MeanParamsError(path, key, "holds values that are not finite")
        out[key] = torch.from_numpy(value.reshape(size).astype(np.float32))
    return out


def spin_config(state: dict[str, Tensor], image_size: int = 224, iterations: int = 3,
                where: str = "checkpoint") -> RegressorConfig:
    """The fitkit config with the shapes of a SPIN-layout state dict (its backbone from the stem
    width and the blocks per stage, :data:`~fitkit.nets.regressor.BACKBONES`).

    Raises:
        CheckpointError: a key the shapes are read from is missing, or a backbone fitkit does not
            have.
    """
    missing = [key for key in ("conv1.weight", "fc1.weight") if key not in state]
    if missing:
        raise CheckpointError(f"{where}: missing keys {missing}")
    width = int(state["conv1.weight"].shape[0])
    blocks = tuple(
        len({key.split(".")[1] for key in state if key.startswith(f"layer{stage}.")})
        for stage in range(1, 5))
    names = [name for name, spec in BACKBONES.items() if spec == (width, blocks)]
    if not names:
        raise CheckpointError(f"{where}: a backbone with {width} stem channels and "
                              f"{list(blocks)} blocks per stage is none of fitkit's "
                              f"({', '.join(BACKBONES)})")
    return dataclasses.replace(REGRESSOR_CONFIGS["resnet50"], backbone=names[0],
                               image_size=image_size, iterations=iterations,
                               hidden=int(state["fc1.weight"].shape[0]))


def check_state(state: dict[str, Tensor], net: Regressor, where: str = "checkpoint") -> None:
    """Refuse a state dict that does not fit ``net`` exactly.

    Raises:
        CheckpointError: unexpected keys, missing keys (BatchNorm counters excepted) or shapes
            that differ, all named.
    """
    expected = net.state_dict()
    unexpected = sorted(set(state) - set(expected))
    missing = sorted(key for key in set(expected) - set(state)
                     if not key.endswith(OPTIONAL_SUFFIX))
    if unexpected or missing:
        raise CheckpointError(f"{where}: missing keys {missing}, unexpected keys {unexpected}")
    wrong = [f"{key} {tuple(value.shape)} (network: {tuple(expected[key].shape)})"
             for key, value in state.items() if value.shape != expected[key].shape]
    if wrong:
        raise CheckpointError(f"{where}: shapes do not fit: {wrong}")


def load_official_spin(
    path: str | os.PathLike,
    mean_params: str | os.PathLike | None = None,
    image_size: int = 224,
    device: torch.device | str = "cpu",
) -> Regressor:
    """A fitkit :class:`~fitkit.nets.regressor.Regressor` with the weights of a SPIN
    checkpoint.

    Args:
        path: ``model_checkpoint.pt`` (or any file in its layout).
        mean_params: an ``smpl_mean_params.npz`` whose values replace the checkpoint's mean
            buffers (a checkpoint without ``init_*`` buffers needs it); default: the
            checkpoint's own.
        image_size: the crop side it was trained with (SPIN: 224).
        device: where the network goes.
    Returns:
        The network in eval mode.
    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not such a checkpoint; missing, unexpected or misshapen keys (named).
        MeanParamsError: a bad mean-parameter file.
    """
    state = read_spin_state(path)
    if mean_params is not None:
        means = read_mean_params(mean_params)
        state = {**state, **{MEAN_BUFFERS[key]: value[None] for key, value in means.items()}}
    net = Regressor(spin_config(state, image_size, where=str(path)))
    check_state(state, net, str(path))
    net.load_state_dict(state, strict=False)  # only the optional BatchNorm counters may be absent
    return net.to(device).eval()
