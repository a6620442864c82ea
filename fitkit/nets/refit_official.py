"""Loader of the public ReFit checkpoints (github.com/yufu-wang/ReFit, ``REFIT`` in
``lib/models/refit.py``) into fitkit's :class:`~fitkit.nets.refit.ReFit`.

Layout of such a file (a ``torch.save`` dict; the state dict under ``model``)::

    backbone.*                              HRNet-W48 (720 feature channels at 1/4, 384-dim vector)
    init_layer.{weight,bias}                (26 H, 384)        -> init_hidden
    corr_layer.{0,3}.weight, {1,4}.*        3x3 conv + BN      -> keypoint_maps (same indices)
    corr_layer.6.weight                     (K, 256, 1, 1)     -> keypoint_maps.6
    flow_layer.{weight,bias}                (K, 5, 49)         -> window_layer (window transposed)
    local_layer.{weight,bias}               (256, 5 K)         -> feedback_layer
    update_block.pose_gru.{lz,lr,lq}.*      (24, H, H + D)     -> update.gru_x / gru_h rows 0-23
    update_block.{shape,cam}_gru.{lz,lr,lq} (H, H + D)         -> rows 24 and 25
    regressor.{p,s,c}.0.*                   (24, H, H + 3), (H, H + 3)  -> update.mlp
    regressor.{decpose,decshape,deccam}.*                      -> update.out_{pose,shape,camera}
    init_pose (1, 144), init_shape (1, 10), init_cam (1, 3)    -> mean_pose, mean_betas, mean_camera
    smpl.*, smpl_male.*, smpl_female.*      SMPL buffers       -> ignored

The public GRU is Cho et al.'s form (``q = tanh(W_q [r h, x])``, ``h' = (1 - z) h + z q``), so the
network gets ``reset_after=False`` and the z gate's weights negated (fitkit's ``h' = (1 - z) n +
z h``); the public window is read with ``align_corners=True`` at ``crop pixel / 4`` and laid out
x-major, so ``window_offset=0.5`` and the 7x7 inputs of ``flow_layer`` are transposed. With these,
the head maps exactly.

What does not map: the backbone. fitkit has no HRNet-W48 (its :class:`ConvBackbone` only matches
HRNet's output shapes), so ``backbone.*`` cannot be loaded; :func:`load_official_refit` refuses
such a file unless ``head_only=True``, which loads everything else and leaves the backbone as
built (trained separately or from fitkit's own checkpoint). The feedback keypoints must be the
checkpoint's: SMPL's 67 mocap markers of the public code (a body whose marker set is that one).

Loading is strict: any key of the file that is neither mapped nor ignored, and any parameter the
mapping needs that the file lacks, raise :class:`~fitkit.nets.CheckpointError` naming the keys.
Files are read with ``torch.load(weights_only=True)`` (no code runs).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fitkit.io.safe_pickle import error_summary
from fitkit.nets.checkpoint import CheckpointError
from fitkit.nets.refit import REFIT_CONFIGS, ReFit, ReFitConfig

IGNORED_PREFIXES = ("smpl.", "smpl_male.", "smpl_female.")
"""Keys of the public checkpoints that hold SMPL's buffers (not the network's)."""
BACKBONE_PREFIX = "backbone."
"""Keys of the public HRNet-W48 backbone."""
DIRECT = {
    "init_layer.weight": "init_hidden.weight", "init_layer.bias": "init_hidden.bias",
    "flow_layer.bias": "window_layer.bias",
    "local_layer.weight": "feedback_layer.weight", "local_layer.bias": "feedback_layer.bias",
    "regressor.decpose.weight": "update.out_pose.weight",
    "regressor.decpose.bias": "update.out_pose.bias",
    "regressor.decshape.weight": "update.out_shape.weight",
    "regressor.decshape.bias": "update.out_shape.bias",
    "regressor.deccam.weight": "update.out_camera.weight",
    "regressor.deccam.bias": "update.out_camera.bias",
    "init_pose": "mean_pose", "init_shape": "mean_betas", "init_cam": "mean_camera",
}
"""Public key -> fitkit key for the tensors that map as they are."""
GRUS = ("update_block.pose_gru", "update_block.shape_gru", "update_block.cam_gru")
MLPS = ("regressor.p.0", "regressor.s.0", "regressor.c.0")


@dataclass
class OfficialLoad:
    """A network loaded from a public checkpoint.

    Attributes:
        net: the network (eval mode).
        skipped: keys of the file that were not loaded (the backbone's with ``head_only``).
    """

    net: ReFit
    skipped: list[str]


def read_official_state(path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict of a public ReFit checkpoint (under ``model``, or the file itself).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a readable tensors-only checkpoint with a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ReFit checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable torch checkpoint "
                              f"({error_summary(error)})") from error
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: field 'model' is not a state dict of tensors")
    return state


def official_config(state: dict[str, Tensor], image_size: int = 256,
                    where: str = "checkpoint") -> ReFitConfig:
    """The fitkit config whose head has the shapes of a public state dict.

    Raises:
        CheckpointError: a key the shapes are read from is missing (named).
    """
    needed = ("flow_layer.weight", "local_layer.weight", "init_layer.weight",
              "update_block.pose_gru.lz.weight", "corr_layer.0.weight")
    missing = [key for key in needed if key not in state]
    if missing:
        raise CheckpointError(f"{where}: missing keys {missing}")
    count, features, window = state["flow_layer.weight"].shape
    convs = sorted(int(key.split(".")[1]) for key in state
                   if key.startswith("corr_layer.") and key.endswith(".weight")
                   and state[key].ndim == 4)
    return dataclasses.replace(
        REFIT_CONFIGS["paper"], image_size=image_size, keypoints="markers",
        num_keypoints=int(count), radius=(round(int(window) ** 0.5) - 1) // 2,
        window_features=int(features), feedback_size=int(state["local_layer.weight"].shape[0]),
        hidden=int(state["update_block.pose_gru.lz.weight"].shape[1]),
        feature_channels=int(state["corr_layer.0.weight"].shape[1]),
        global_channels=int(state["init_layer.weight"].shape[1]),
        keypoint_layers=len(convs) - 1, keypoint_width=int(state["corr_layer.0.weight"].shape[0]),
        reset_after=False, window_offset=0.5)


def official_to_fitkit(state: dict[str, Tensor], net: ReFit,
                       where: str = "checkpoint") -> tuple[dict[str, Tensor], list[str]]:
    """Map a public state dict onto ``net``'s (see the module doc).

    Returns:
        fitkit's state dict without the backbone's entries, and the file's backbone keys.
    Raises:
        CheckpointError: keys of the file that map nowhere, or entries the head needs that the
            file lacks (both named), or shapes that do not fit ``net``.
    """
    hidden = net.config.hidden
    used: set[str] = set()

    def take(key: str) -> Tensor:
        used.add(key)
        return state[key]

    needed = [*DIRECT, "flow_layer.weight"]
    needed += [f"{gru}.{gate}.{part}" for gru in GRUS for gate in ("lz", "lr", "lq")
               for part in ("weight", "bias")]
    needed += [f"{mlp}.{part}" for mlp in MLPS for part in ("weight", "bias")]
    needed += [key.replace("keypoint_maps.", "corr_layer.", 1) for key in net.state_dict()
               if key.startswith("keypoint_maps.")]
    missing = [key for key in needed if key not in state]
    if missing:
        raise CheckpointError(f"{where}: missing keys {missing}")

    out: dict[str, Tensor] = {new: take(old) for old, new in DIRECT.items()}
    side = 2 * net.config.radius + 1
    flow = take("flow_layer.weight")
    out["window_layer.weight"] = flow.unflatten(-1, (side, side)).transpose(-1, -2).flatten(-2)
    for key in list(state):
        if key.startswith("corr_layer."):
            out[key.replace("corr_layer.", "keypoint_maps.", 1)] = take(key)

    def stacked(gate: str, part: str) -> Tensor:
        """The gate's 26 streams: pose (24, ...) then shape and camera."""
        pose, shape, cam = (take(f"{gru}.{gate}.{part}") for gru in GRUS)
        return torch.cat([pose, shape[None], cam[None]])

    x_weights, h_weights, x_biases = [], [], []
    for gate, sign in (("lr", 1.0), ("lz", -1.0), ("lq", 1.0)):  # fitkit's z is 1 - theirs
        weight = sign * stacked(gate, "weight")  # (26, H, H + D): [h, x] columns
        h_weights.append(weight[..., :hidden])
        x_weights.append(weight[..., hidden:])
        x_biases.append(sign * stacked(gate, "bias"))
    out["update.gru_x.weight"] = torch.cat(x_weights, dim=1)
    out["update.gru_x.bias"] = torch.cat(x_biases, dim=1)
    out["update.gru_h.weight"] = torch.cat(h_weights, dim=1)
    out["update.gru_h.bias"] = torch.zeros_like(out["update.gru_x.bias"])
    pose, shape, cam = (take(f"{mlp}.weight") for mlp in MLPS)
    out["update.mlp.weight"] = torch.cat([pose, shape[None], cam[None]])
    pose, shape, cam = (take(f"{mlp}.bias") for mlp in MLPS)
    out["update.mlp.bias"] = torch.cat([pose, shape[None], cam[None]])

    backbone = [key for key in state if key.startswith(BACKBONE_PREFIX)]
    unexpected = [key for key in state if key not in used and key not in backbone
                  and not key.startswith(IGNORED_PREFIXES)]
    if unexpected:
        raise CheckpointError(f"{where}: unexpected keys {unexpected}")
    expected = {key: value.shape for key, value in net.state_dict().items()
                if not key.startswith(BACKBONE_PREFIX)}
    absent = sorted(set(expected) - set(out))
    if absent:
        raise CheckpointError(f"{where}: no entry for {absent}")
    wrong = [f"{key} {tuple(out[key].shape)} (network: {tuple(expected[key])})" for key in out
             if key in expected and out[key].shape != expected[key]]
    if wrong:
        raise CheckpointError(f"{where}: shapes do not fit: {wrong}")
    return {key: out[key] for key in expected}, backbone


def load_official_refit(path: str | os.PathLike, head_only: bool = False,
                        image_size: int = 256, device: torch.device | str = "cpu"
                        ) -> OfficialLoad:
    """A fitkit ReFit with the weights of a public checkpoint (see the module doc).

    Args:
        path: the ``.pth`` / ``.pth.tar`` file.
        head_only: load all but the HRNet-W48 backbone (which fitkit lacks) and report its keys
            as skipped; ``False`` refuses a file with backbone weights.
        image_size: the crop side it was trained with (the public configs: 256).
        device: where the network goes.
    Raises:
        FileNotFoundError: no such file.
        CheckpointError: a file that is not such a checkpoint; missing or unexpected keys
            (named); backbone weights without ``head_only``.
    """
    state = read_official_state(path)
    net = ReFit(official_config(state, image_size, str(path)))
    mapped, backbone = official_to_fitkit(state, net, str(path))
    if backbone and not head_only:
        raise CheckpointError(
            f"{path}: holds an HRNet-W48 backbone ({len(backbone)} keys, e.g. {backbone[0]!r}), "
            "which fitkit does not implement; pass head_only=True to load the rest")
    net.load_state_dict({**net.state_dict(), **mapped})
    return OfficialLoad(net.to(device).eval(), backbone)
