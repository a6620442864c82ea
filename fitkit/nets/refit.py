"""ReFit (seed 001 §3, supplement A.1-A.2): a recurrent feedback-update network, a learned
optimizer of SMPL parameters on a square crop of a person.

One step of the loop, for the current estimate ``Θ_t = (pose, betas, cam)``:

1. **Feedback.** The body's keypoints (24 SMPL joints by default, or the open body's mocap
   markers) are posed with ``Θ_t`` and reprojected with the *full-frame adjusted camera*
   (:func:`fitkit.geometry.fullframe.full_frame_adjusted_projection`: the full image's camera, then
   crop coordinates), each onto its own channel of the keypoint feature maps (one channel per
   keypoint, at 1/4 of the crop's resolution). A window of radius ``r = 3`` (7 x 7 feature pixels)
   around each reprojection is read by bilinear sampling (:func:`sample_windows`), mapped 49 -> 5
   per keypoint (one einsum for all keypoints, :class:`MultiLinear`) and 5K -> 256 by a linear
   layer. In training, *feedback dropout* zeroes the windows of whole keypoints (p = 0.25).
2. **Update.** The feedback, the bounding-box information (CLIFF's normalised box centre and
   size, :func:`box_info`) and ``Θ_t`` (6D pose, betas, weak-perspective camera) form the input of
   26 update streams (24 joint rotations, shape, camera). Each is a GRU with hidden size 32 and a
   2-layer MLP that maps ``[hidden, box info]`` to the stream's update ``ΔΘ``; all 26 run as
   batched einsums (:class:`UpdateStreams`). ``Θ_{t+1} = Θ_t + ΔΘ_t``.

The initial estimate ``Θ_0`` comes from the backbone's global vector: a linear layer and ``tanh``
give the 26 streams' hidden states, whose MLPs update the mean parameters (supplement A.2: the
update module predicts ``Θ_mean + ΔΘ_mean``). The loop then starts from zero hidden states, as the
public implementation does. The estimate is detached between iterations (RAFT-style: each update
is supervised, not the path to it; seed 001 §3.4).

Conventions: 6D rotations in fitkit's layout (:mod:`fitkit.geometry.rotations`); the camera is a
weak-perspective ``(s, tx, ty)`` on the crop in crop coordinates (``[-1, 1]`` across the box,
:mod:`fitkit.geometry.crop`), turned into the full image's ``transl`` by
:func:`fitkit.geometry.fullframe.weak_perspective_to_full_frame`. Feature pixel ``i`` of an
``S``-pixel map sits at crop coordinate ``(2 i + 1) / S - 1`` (``grid_sample``'s
``align_corners=False``); ``window_offset`` shifts the windows by that many feature pixels (the
public checkpoints sample half a feature pixel further, see :mod:`fitkit.nets.refit_official`).

Sizes (:data:`REFIT_CONFIGS`): ``cpu`` (64-pixel crops, a small convolutional backbone, trains on
a laptop CPU) and ``paper`` (256-pixel crops, HRNet-W48-sized features: 720 channels at 1/4 and a
384-dim global vector, 67-style markers, 256-channel keypoint layers: the shapes of the public
checkpoint's ReFit head). The backbone here is fitkit's own multi-branch convolutional network
(:class:`ConvBackbone`), not HRNet.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fitkit.body.keypoints import SAMPLED_VERTICES
from fitkit.geometry.camera import Camera
from fitkit.geometry.fullframe import (
    full_frame_adjusted_projection,
    full_frame_to_weak_perspective,
    weak_perspective_to_full_frame,
)
from fitkit.geometry.rotations import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    matrix_to_rot6d,
    rot6d_to_matrix,
)

NUM_JOINTS = 24
"""SMPL joints (the 24 rotation streams)."""
NUM_BETAS = 10
"""Shape coefficients."""
NUM_STREAMS = NUM_JOINTS + 2
"""Update streams: 24 joint rotations, shape, camera."""
KEYPOINT_TYPES = ("smpl24", "markers", "sampled")
"""Keypoints a ReFit network can reproject (the body's keypoint sets): the 24 semantic joints,
the body's mocap markers, or :data:`~fitkit.body.keypoints.SAMPLED_VERTICES` vertices spread
evenly over the body (seed 001's three kinds)."""
IMAGE_MEAN = (0.485, 0.456, 0.406)
"""Channel means (ImageNet) subtracted from RGB crops in [0, 1]."""
IMAGE_STD = (0.229, 0.224, 0.225)
"""Channel deviations (ImageNet) the crops are divided by."""
MEAN_CAMERA = (0.8, 0.0, 0.0)
"""Weak-perspective camera of the mean estimate: a 1.7 m person filling 70% of the box."""

Constraint = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]
"""A map of estimates ``(pose6d (B, 24, 6), betas (B, 10), camera (B, 3)) -> same shapes``
that :meth:`ReFit.forward` applies to every estimate of its loop (e.g. one body pooled over the
views of a group, a known shape put in place of the predicted one)."""


@dataclass(frozen=True)
class ReFitConfig:
    """Size of a ReFit network (saved in its checkpoints).

    Attributes:
        image_size: side of the square crops (pixels, a multiple of 16).
        keypoints: the keypoint set reprojected for feedback (:data:`KEYPOINT_TYPES`).
        num_keypoints: K, the keypoints of that set (24 joints; the body's markers; 231
            sampled vertices).
        width: channels of the backbone's 1/4-resolution branch (1/8: twice, 1/16: four times).
        blocks: residual blocks per backbone branch.
        feature_channels: channels of the backbone's 1/4-resolution feature maps; 0: the
            concatenated branches (7 ``width``).
        global_channels: length of the global feature vector; 0: the 1/16 branch (4 ``width``).
        keypoint_layers: 3x3 conv + BN + ReLU layers before the 1x1 conv to K channels.
        keypoint_width: channels of those layers.
        radius: window radius in feature pixels (a ``2 r + 1`` square).
        window_features: per-keypoint feedback length after the 49 -> 5 map.
        feedback_size: length of the feedback vector after the 5K -> 256 map.
        hidden: hidden size of each GRU stream (and of its MLP).
        feedback_dropout: probability that a keypoint's window is zeroed in training.
        reset_after: the GRU's candidate gate applies the reset gate after the hidden
            state's linear map (``torch.nn.GRUCell``); ``False``: before it, on the hidden state
            (Cho et al.; the public ReFit code).
        window_offset: shift of the windows in feature pixels (0 here; 0.5 for the public
            checkpoints' sampling convention).
        iterations: T, feedback-update steps in training and by default.
    """

    image_size: int = 64
    keypoints: str = "smpl24"
    num_keypoints: int = NUM_JOINTS
    width: int = 32
    blocks: int = 1
    feature_channels: int = 0
    global_channels: int = 0
    keypoint_layers: int = 1
    keypoint_width: int = 64
    radius: int = 3
    window_features: int = 5
    feedback_size: int = 256
    hidden: int = 32
    feedback_dropout: float = 0.25
    reset_after: bool = True
    window_offset: float = 0.0
    iterations: int = 5

    def __post_init__(self) -> None:
        if self.image_size % 16 or self.image_size < 32:
            raise ValueError(f"image_size must be a multiple of 16 and at least 32, got "
                             f"{self.image_size}")
        if self.keypoints not in KEYPOINT_TYPES:
            raise ValueError(f"keypoints must be one of {', '.join(KEYPOINT_TYPES)}, got "
                             f"{self.keypoints!r}")
        if self.keypoints == "smpl24" and self.num_keypoints != NUM_JOINTS:
            raise ValueError(f"keypoints 'smpl24' has {NUM_JOINTS} points, got "
                             f"num_keypoints={self.num_keypoints}")
        if self.keypoints == "sampled" and self.num_keypoints != SAMPLED_VERTICES:
            raise ValueError(f"keypoints 'sampled' has {SAMPLED_VERTICES} points, got "
                             f"num_keypoints={self.num_keypoints}")
        if not 0.0 <= self.feedback_dropout < 1.0:
            raise ValueError(f"feedback_dropout must be in [0, 1), got {self.feedback_dropout}")
        for name in ("num_keypoints", "width", "blocks", "keypoint_width", "window_features",
                     "feedback_size", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.radius < 0 or self.iterations < 0 or self.keypoint_layers < 0:
            raise ValueError("radius, iterations and keypoint_layers must be >= 0")

    @property
    def feature_dim(self) -> int:
        """Channels of the 1/4-resolution feature maps."""
        return self.feature_channels or 7 * self.width

    @property
    def global_dim(self) -> int:
        """Length of the global feature vector."""
        return self.global_channels or 4 * self.width

    @property
    def window_size(self) -> int:
        """Values in one window, ``(2 r + 1)^2``."""
        return (2 * self.radius + 1) ** 2

    @property
    def update_input(self) -> int:
        """Length of the update streams' input: feedback, box info, 6D pose, betas, camera."""
        return self.feedback_size + 3 + 6 * NUM_JOINTS + NUM_BETAS + 3


REFIT_CONFIGS: dict[str, ReFitConfig] = {
    "cpu": ReFitConfig(),
    "paper": ReFitConfig(image_size=256, keypoints="markers", num_keypoints=67, width=64,
                         blocks=2, feature_channels=720, global_channels=384,
                         keypoint_layers=2, keypoint_width=256),
}
"""Preset sizes: ``cpu`` (trains on this machine's CPU) and ``paper`` (seed 001's sizes; for a
GPU). The paper's marker count is SMPL's 67; the open body has its own count, so a ``paper``
network on the open body sets ``num_keypoints`` to ``len(body.marker_ids)``."""


class MultiLinear(nn.Module):
    """N independent linear maps as one ``(N, out, in)`` weight and one einsum.

    Args:
        heads: N.
        in_features, out_features: sizes of each map.
    """

    def __init__(self, heads: int, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(heads, out_features, in_features)
                                   .uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(heads, out_features).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, N, in)`` -> ``(B, N, out)``."""
        return torch.einsum("noi,bni->bno", self.weight, x) + self.bias


class ResidualBlock(nn.Module):
    """Two 3x3 conv + BN layers added to the input, then ReLU (ResNet's basic block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        return F.relu(x + self.body(x))


def _down(in_channels: int, out_channels: int) -> nn.Sequential:
    """Strided 3x3 conv + BN + ReLU (halves the resolution)."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class ConvBackbone(nn.Module):
    """Pixel-aligned features at 1/4 resolution and a global vector (HRNet's outputs, small).

    A stride-4 stem, then branches at 1/4, 1/8 and 1/16 (``width``, 2 and 4 ``width``
    channels, ``blocks`` residual blocks each); the features are the three branches upsampled
    to 1/4 and concatenated (as HRNet's representation head), projected to ``feature_dim``
    channels when that differs; the global vector is the 1/16 branch average-pooled (projected
    likewise).
    """

    def __init__(self, config: ReFitConfig) -> None:
        super().__init__()
        width, blocks = config.width, config.blocks
        self.stem = nn.Sequential(_down(3, width), _down(width, width))
        self.branch4 = nn.Sequential(*(ResidualBlock(width) for _ in range(blocks)))
        self.branch8 = nn.Sequential(_down(width, 2 * width),
                                     *(ResidualBlock(2 * width) for _ in range(blocks)))
        self.branch16 = nn.Sequential(_down(2 * width, 4 * width),
                                      *(ResidualBlock(4 * width) for _ in range(blocks)))
        self.features: nn.Module = nn.Identity()
        if config.feature_dim != 7 * width:
            self.features = nn.Conv2d(7 * width, config.feature_dim, 1)
        self.global_vector: nn.Module = nn.Identity()
        if config.global_dim != 4 * width:
            self.global_vector = nn.Linear(4 * width, config.global_dim)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, 3, R, R)`` normalised crops -> features ``(B, feature_dim, R/4, R/4)`` and
        global vectors ``(B, global_dim)``."""
        x4 = self.branch4(self.stem(image))
        x8 = self.branch8(x4)
        x16 = self.branch16(x8)
        size = x4.shape[-2:]
        up = [F.interpolate(x, size=size, mode="bilinear", align_corners=False)
              for x in (x8, x16)]
        features = self.features(torch.cat([x4, *up], dim=1))
        return features, self.global_vector(x16.mean(dim=(-2, -1)))


class UpdateStreams(nn.Module):
    """The 26 update streams (seed 001 §3.3): per stream a GRU cell and a 2-layer MLP, all as
    batched einsums over the stream axis.

    GRU of stream n with input ``x`` and hidden ``h`` (gates in ``torch.nn.GRUCell``'s order
    r, z, n; ``W_x`` ``(3H, D)``, ``W_h`` ``(3H, H)``)::

        r = σ(W_xr x + b_xr + W_hr h + b_hr),  z = σ(W_xz x + b_xz + W_hz h + b_hz)
        n = tanh(W_xn x + b_xn + r * (W_hn h + b_hn))      (reset_after)
        n = tanh(W_xn x + b_xn + W_hn (r * h) + b_hn)      (not reset_after)
        h' = (1 - z) * n + z * h

    MLP: ``[h', box_info]`` -> Linear(H + 3, H) -> ReLU -> Linear(H, out_n), with out 6 for the
    24 joint rotations (one ``(24, 6, H)`` einsum), 10 for the shape and 3 for the camera.
    """

    def __init__(self, input_size: int, hidden: int, reset_after: bool = True) -> None:
        super().__init__()
        self.hidden, self.reset_after = hidden, reset_after
        self.gru_x = MultiLinear(NUM_STREAMS, input_size, 3 * hidden)
        self.gru_h = MultiLinear(NUM_STREAMS, hidden, 3 * hidden)
        self.mlp = MultiLinear(NUM_STREAMS, hidden + 3, hidden)
        self.out_pose = MultiLinear(NUM_JOINTS, hidden, 6)
        self.out_shape = nn.Linear(hidden, NUM_BETAS)
        self.out_camera = nn.Linear(hidden, 3)
        with torch.no_grad():  # small first updates (HMR's decoders start near the mean)
            for layer in (self.out_pose, self.out_shape, self.out_camera):
                layer.weight.mul_(0.01)
                layer.bias.zero_()

    def gru(self, x: Tensor, h: Tensor) -> Tensor:
        """One GRU step of every stream.

        Args:
            x: ``(B, D)`` the input, shared by the streams.
            h: ``(B, 26, H)`` hidden states.
        Returns:
            ``(B, 26, H)`` new hidden states.
        """
        gx = torch.einsum("noi,bi->bno", self.gru_x.weight, x) + self.gru_x.bias
        xr, xz, xn = gx.chunk(3, dim=-1)
        if self.reset_after:
            hr, hz, hn = self.gru_h(h).chunk(3, dim=-1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
        else:
            weight_rz, weight_n = self.gru_h.weight.split([2 * self.hidden, self.hidden], 1)
            bias_rz, bias_n = self.gru_h.bias.split([2 * self.hidden, self.hidden], 1)
            hr, hz = (torch.einsum("noi,bni->bno", weight_rz, h) + bias_rz).chunk(2, dim=-1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            n = torch.tanh(xn + torch.einsum("noi,bni->bno", weight_n, r * h) + bias_n)
        return (1.0 - z) * n + z * h

    def decode(self, h: Tensor, box: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The streams' MLPs.

        Args:
            h: ``(B, 26, H)`` hidden states.
            box: ``(B, 3)`` box information.
        Returns:
            updates of the 6D pose ``(B, 24, 6)``, betas ``(B, 10)`` and camera ``(B, 3)``.
        """
        inner = F.relu(self.mlp(torch.cat([h, box[:, None].expand(-1, NUM_STREAMS, -1)], -1)))
        return (self.out_pose(inner[:, :NUM_JOINTS]), self.out_shape(inner[:, NUM_JOINTS]),
                self.out_camera(inner[:, NUM_JOINTS + 1]))


@dataclass
class ReFitEstimate:
    """One estimate ``Θ_t`` of the loop, and what the losses and the next step read.

    Attributes:
        pose6d: ``(B, 24, 6)`` joint rotations (root first), 6D.
        betas: ``(B, 10)``.
        camera: ``(B, 3)`` weak-perspective ``(s, tx, ty)`` on the crop.
        transl: ``(B, 3)`` the full image's translation of the body.
        joints: ``(B, 24, 3)`` posed joints in the full image's camera frame (with ``transl``).
        keypoints: ``(B, K, 3)`` the feedback keypoints, camera frame.
    """

    pose6d: Tensor
    betas: Tensor
    camera: Tensor
    transl: Tensor
    joints: Tensor
    keypoints: Tensor

    def rotmat(self) -> Tensor:
        """``(B, 24, 3, 3)`` rotation matrices."""
        return rot6d_to_matrix(self.pose6d)

    def params(self) -> dict[str, Tensor]:
        """``global_orient`` (B, 3), ``body_pose`` (B, 69) axis-angle, ``betas``, ``transl``."""
        axis_angle = matrix_to_axis_angle(self.rotmat())
        return {"global_orient": axis_angle[:, 0], "body_pose": axis_angle[:, 1:].flatten(1),
                "betas": self.betas, "transl": self.transl}


@dataclass
class CropInfo:
    """Where the crops come from: boxes in the full images and the full images' cameras.

    Attributes:
        box_center: ``(B, 2)`` box centres, full-image pixels.
        box_size: ``(B,)`` box sides, pixels.
        camera: the full images' cameras (batch B).
    """

    box_center: Tensor
    box_size: Tensor
    camera: Camera


def box_info(crop: CropInfo) -> Tensor:
    """CLIFF's bounding-box information: the box centre relative to the principal point and its
    size, normalised by the focal length (``2.8 (c - p) / f`` and ``(b - 0.24 f) / (0.06 f)``).

    Returns:
        ``(B, 3)``.
    """
    focal = crop.camera.focal_length.mean(dim=-1)
    centre = (crop.box_center - crop.camera.principal_point) / focal[:, None] * 2.8
    size = (crop.box_size - 0.24 * focal) / (0.06 * focal)
    return torch.cat([centre, size[:, None]], dim=-1)


def sample_windows(maps: Tensor, points: Tensor, radius: int, offset: float = 0.0) -> Tensor:
    """Bilinear read of a ``(2 r + 1)^2`` window of one map channel around each point.

    Point ``k`` reads channel ``k`` only. Window values are at feature pixels
    ``(i + dx, j + dy)``, ``dx, dy`` in ``-r .. r``, around the point's feature-pixel position
    ``(i, j) = ((c + 1) S / 2 - 1/2 + offset)`` for crop coordinate ``c`` and map side ``S``;
    reads off the map are zero.

    Args:
        maps: ``(B, K, S, S)`` keypoint feature maps.
        points: ``(B, K, 2)`` crop coordinates ``(x, y)`` in ``[-1, 1]`` across the crop.
        radius: r.
        offset: shift in feature pixels.
    Returns:
        ``(B, K, (2 r + 1)^2)``, row-major over ``(dy, dx)``.
    """
    batch, count, height, width = maps.shape
    steps = torch.arange(-radius, radius + 1, device=maps.device, dtype=maps.dtype)
    dy, dx = torch.meshgrid(steps, steps, indexing="ij")
    size = points.new_tensor([width, height])
    shift = torch.stack([dx, dy], dim=-1) + offset  # (2r+1, 2r+1, 2) feature pixels
    grid = points[:, :, None, None, :] + 2.0 * shift / size  # normalised, align_corners=False
    side = 2 * radius + 1
    values = F.grid_sample(maps.reshape(batch * count, 1, height, width),
                           grid.reshape(batch * count, side, side, 2), mode="bilinear",
                           padding_mode="zeros", align_corners=False)
    return values.reshape(batch, count, side * side)


class ReFit(nn.Module):
    """The ReFit network (see the module doc).

    Args:
        config: its size.
    """

    def __init__(self, config: ReFitConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or REFIT_CONFIGS["cpu"]
        self.register_buffer("image_mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1),
                             persistent=False)
        self.backbone = ConvBackbone(config)
        layers: list[nn.Module] = []
        channels = config.feature_dim
        for _ in range(config.keypoint_layers):
            layers += [nn.Conv2d(channels, config.keypoint_width, 3, padding=1, bias=False),
                       nn.BatchNorm2d(config.keypoint_width), nn.ReLU(inplace=True)]
            channels = config.keypoint_width
        layers.append(nn.Conv2d(channels, config.num_keypoints, 1, bias=False))
        self.keypoint_maps = nn.Sequential(*layers)
        self.init_hidden = nn.Linear(config.global_dim, NUM_STREAMS * config.hidden)
        self.window_layer = MultiLinear(config.num_keypoints, config.window_size,
                                        config.window_features)
        self.feedback_layer = nn.Linear(config.num_keypoints * config.window_features,
                                        config.feedback_size)
        self.update = UpdateStreams(config.update_input, config.hidden, config.reset_after)
        root = matrix_to_rot6d(torch.diag(torch.tensor([1.0, -1.0, -1.0])))  # upright, y down
        mean_pose = matrix_to_rot6d(torch.eye(3)).repeat(NUM_JOINTS, 1)
        mean_pose[0] = root
        self.register_buffer("mean_pose", mean_pose.flatten()[None])
        self.register_buffer("mean_betas", torch.zeros(1, NUM_BETAS))
        self.register_buffer("mean_camera", torch.tensor([MEAN_CAMERA]))

    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Keypoint feature maps ``(B, K, R/4, R/4)`` and global vectors ``(B, G)`` of crops
        ``(B, 3, R, R)`` (RGB in [0, 1])."""
        size = self.config.image_size
        if images.ndim != 4 or images.shape[1:] != (3, size, size):
            raise ValueError(f"ReFit takes crops of shape (B, 3, {size}, {size}), got "
                             f"{tuple(images.shape)}")
        features, vector = self.backbone((images - self.image_mean) / self.image_std)
        return self.keypoint_maps(features), vector

    def feedback(self, maps: Tensor, points: Tensor, keep: Tensor | None) -> Tensor:
        """The feedback vector (seed 001 Eq. 1-2, supplement A.2).

        Args:
            maps: ``(B, K, S, S)`` keypoint feature maps.
            points: ``(B, K, 2)`` full-frame adjusted reprojections (crop coordinates).
            keep: ``(B, K)`` feedback-dropout factors (0 for a dropped keypoint,
                ``1 / (1 - p)`` for a kept one), or ``None``.
        Returns:
            ``(B, feedback_size)``.
        """
        windows = sample_windows(maps, points, self.config.radius, self.config.window_offset)
        if keep is not None:
            windows = windows * keep[..., None]
        return self.feedback_layer(self.window_layer(windows).flatten(1))

    def dropout_mask(self, batch: int, device: torch.device) -> Tensor | None:
        """``(B, K)`` feedback-dropout factors in training (whole keypoints dropped with
        probability p, the others scaled by ``1 / (1 - p)``, as dropout does), else ``None``."""
        p = self.config.feedback_dropout
        if not self.training or p == 0.0:
            return None
        kept = torch.rand(batch, self.config.num_keypoints, device=device) >= p
        return kept.to(self.mean_pose.dtype) / (1.0 - p)

    def estimate(self, pose6d: Tensor, betas: Tensor, camera: Tensor, crop: CropInfo,
                 body: nn.Module) -> ReFitEstimate:
        """Pose the body with ``Θ`` and place it in the full image's camera frame.

        Args:
            pose6d: ``(B, 24, 6)``; betas: ``(B, 10)``; camera: ``(B, 3)``.
            crop: boxes and full-image cameras.
            body: a :class:`fitkit.body.BodyModel`.
        """
        axis_angle = matrix_to_axis_angle(rot6d_to_matrix(pose6d))
        ids = body.selector.vertex_ids(self.config.keypoints)
        output = body(global_orient=axis_angle[:, 0], body_pose=axis_angle[:, 1:].flatten(1),
                      betas=betas, vertex_ids=ids)
        transl = weak_perspective_to_full_frame(camera, crop.box_center, crop.box_size,
                                                crop.camera)
        keypoints = output.keypoints(self.config.keypoints)
        return ReFitEstimate(pose6d, betas, camera, transl, output.joints + transl[:, None],
                             keypoints + transl[:, None])

    def initial_estimate(self, vector: Tensor, info: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``Θ_0`` from the global vector: ``Θ_mean`` updated by the streams' MLPs whose hidden
        states are ``tanh`` of a linear map of ``vector`` ``(B, G)``; box info ``(B, 3)``."""
        hidden = torch.tanh(self.init_hidden(vector)).unflatten(1, (NUM_STREAMS, -1))
        d_pose, d_betas, d_camera = self.update.decode(hidden, info)
        batch = vector.shape[0]
        return (self.mean_pose.view(1, NUM_JOINTS, 6) + d_pose,
                self.mean_betas.expand(batch, -1) + d_betas,
                self.mean_camera.expand(batch, -1) + d_camera)

    def forward(
        self,
        images: Tensor,
        crop: CropInfo,
        body: nn.Module,
        iterations: int | None = None,
        init: dict[str, Tensor] | None = None,
        constrain: Constraint | None = None,
    ) -> list[ReFitEstimate]:
        """Run the feedback-update loop.

        Args:
            images: ``(B, 3, R, R)`` crops, RGB in [0, 1] (:func:`fitkit.geometry.crop_images`).
            crop: their boxes in the full images and the full images' cameras.
            body: the body model the parameters drive.
            iterations: T (default ``config.iterations``).
            init: start from these parameters instead of the network's own guess
                (``global_orient`` (B, 3), ``body_pose`` (B, 69), ``betas`` (B, 10),
                ``transl`` (B, 3) with ``transl_z > 0``; missing ones come from the guess).
            constrain: applied to ``Θ_0`` and to every updated ``Θ_{t+1}`` before the body is
                posed with it (:data:`Constraint`): multi-view pooling, a known shape
                (:mod:`fitkit.fitting.refit_solver`); ``None``: the plain loop.
        Returns:
            T + 1 estimates ``Θ_0 ... Θ_T`` (``Θ_0``: the initial guess or ``init``); the loop
            detaches each estimate before updating it, so gradients reach every update but do
            not flow across iterations.
        """
        iterations = self.config.iterations if iterations is None else iterations
        maps, vector = self.features(images)
        info = box_info(crop)
        pose6d, betas, camera = self.initial_estimate(vector, info)
        if init:
            pose6d, betas, camera = self._from_params(init, crop, pose6d, betas, camera)
        if constrain is not None:
            pose6d, betas, camera = constrain(pose6d, betas, camera)
        current = self.estimate(pose6d, betas, camera, crop, body)
        estimates = [current]
        keep = self.dropout_mask(images.shape[0], images.device)
        hidden = vector.new_zeros(images.shape[0], NUM_STREAMS, self.config.hidden)
        for _ in range(iterations):
            pose6d, betas, camera = (current.pose6d.detach(), current.betas.detach(),
                                     current.camera.detach())
            points = full_frame_adjusted_projection(current.keypoints.detach(), crop.box_center,
                                                    crop.box_size, crop.camera)
            feedback = self.feedback(maps, points, keep)
            x = torch.cat([feedback, info, pose6d.flatten(1), betas, camera], dim=-1)
            hidden = self.update.gru(x, hidden)
            d_pose, d_betas, d_camera = self.update.decode(hidden, info)
            pose6d, betas, camera = pose6d + d_pose, betas + d_betas, camera + d_camera
            if constrain is not None:
                pose6d, betas, camera = constrain(pose6d, betas, camera)
            current = self.estimate(pose6d, betas, camera, crop, body)
            estimates.append(current)
        return estimates

    @staticmethod
    def _from_params(init: dict[str, Tensor], crop: CropInfo, pose6d: Tensor, betas: Tensor,
                     camera: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``Θ`` from axis-angle parameters, the guess where a parameter is missing."""
        pose6d = pose6d.clone()
        if "global_orient" in init:
            pose6d[:, 0] = matrix_to_rot6d(axis_angle_to_matrix(init["global_orient"]))
        if "body_pose" in init:
            pose6d[:, 1:] = matrix_to_rot6d(axis_angle_to_matrix(
                init["body_pose"].unflatten(-1, (NUM_JOINTS - 1, 3))))
        if "betas" in init:
            betas = init["betas"].to(betas.dtype)
        if "transl" in init:
            camera = full_frame_to_weak_perspective(init["transl"].to(camera.dtype),
                                                    crop.box_center, crop.box_size, crop.camera)
        return pose6d, betas, camera


@dataclass(frozen=True)
class LossWeights:
    """Weights of the per-iteration loss (seed 001 Eq. 5; the public code's values).

    Attributes:
        keypoints2d: squared error of the joints' full-frame adjusted reprojections (crop
            coordinates).
        joints3d: squared error of the pelvis-aligned 3D joints (meters).
        pose: squared error of the joint rotation matrices.
        betas: squared error of the shape coefficients.
        gamma: iteration t of T is weighted ``gamma ** (T - t)`` (Eq. 6).
    """

    keypoints2d: float = 5.0
    joints3d: float = 5.0
    pose: float = 1.0
    betas: float = 0.001
    gamma: float = 0.85


@dataclass
class ReFitTarget:
    """Ground truth of a training batch.

    Attributes:
        joints: ``(B, 24, 3)`` true joints in the full image's camera frame.
        rotmat: ``(B, 24, 3, 3)`` true joint rotations.
        betas: ``(B, 10)``.
    """

    joints: Tensor
    rotmat: Tensor
    betas: Tensor


def refit_loss(estimates: list[ReFitEstimate], target: ReFitTarget, crop: CropInfo,
               weights: LossWeights | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """``sum_t gamma^(T - t) L_t`` over the estimates ``Θ_0 ... Θ_T`` (seed 001 Eq. 5-6).

    ``L_t`` = 2D (both the estimate's and the true joints reprojected with the full-frame
    adjusted camera, :func:`fitkit.geometry.fullframe.full_frame_adjusted_projection`) + 3D
    joints (pelvis-aligned) + parameters (rotation matrices, betas); each a mean squared error.

    Returns:
        the loss (scalar) and the last estimate's unweighted terms (detached).
    """
    weights = weights or LossWeights()
    target2d = full_frame_adjusted_projection(target.joints, crop.box_center, crop.box_size,
                                              crop.camera)
    target3d = target.joints - target.joints[:, :1]
    count = len(estimates) - 1
    total = target2d.new_zeros(())
    terms: dict[str, Tensor] = {}
    for t, estimate in enumerate(estimates):
        projected = full_frame_adjusted_projection(estimate.joints, crop.box_center,
                                                   crop.box_size, crop.camera)
        terms = {
            "keypoints2d": (projected - target2d).square().mean(),
            "joints3d": (estimate.joints - estimate.joints[:, :1] - target3d).square().mean(),
            "pose": (estimate.rotmat() - target.rotmat).square().mean(),
            "betas": (estimate.betas - target.betas).square().mean(),
        }
        step = sum(getattr(weights, name) * value for name, value in terms.items())
        total = total + weights.gamma ** (count - t) * step
    return total, {name: value.detach() for name, value in terms.items()}
