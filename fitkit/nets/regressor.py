"""The HMR/SPIN regressor: a ResNet on a square crop of a person, and an iterative-error-feedback
(IEF) head that updates SMPL parameters from their mean.

Architecture (the layout of SPIN's ``models/hmr.py``, so its public checkpoints load, see
:mod:`fitkit.nets.spin_official`):

- **Backbone.** A ResNet written here (no torchvision): a 7x7 stride-2 convolution ``conv1`` with
  BatchNorm ``bn1``, ReLU and a 3x3 stride-2 max pool, then four stages ``layer1`` .. ``layer4`` of
  bottleneck blocks (:class:`ResNetBottleneck`: 1x1 -> 3x3 (stride) -> 1x1 convolutions with
  BatchNorm, a projection ``downsample`` where the shape changes), and a global average pool.
  ``"resnet50"``: 64 stem channels, stages of 3, 4, 6, 3 blocks, a 2048-d feature (ResNet-50);
  ``"small"``: 16 stem channels, one block per stage, a 512-d feature (:data:`BACKBONES`).
- **IEF head.** From the mean parameters ``Θ_0`` (buffers ``init_pose`` (1, 144): 24 joint
  rotations in 6D, ``init_shape`` (1, 10), ``init_cam`` (1, 3)), each of ``iterations`` steps
  maps ``[feature, Θ_t]`` through ``fc1``, dropout ``drop1``, ``fc2``, dropout ``drop2`` (no
  non-linearity between them, as in SPIN) and the decoders ``decpose``, ``decshape``,
  ``deccam`` to ``ΔΘ``, and ``Θ_{t+1} = Θ_t + ΔΘ``. The decoders start near zero (Xavier, gain
  0.01, zero biases), so an untrained network returns about the mean parameters.

Outputs: 6D rotations in fitkit's layout (:mod:`fitkit.geometry.rotations`, SPIN's), their
matrices and axis-angle, ``betas``, and a weak-perspective camera ``(s, tx, ty)`` in crop
coordinates (``[-1, 1]`` across the box: a body point ``X`` is at ``s (X_xy + (tx, ty))``; SPIN's
convention), which :func:`fitkit.geometry.weak_perspective_to_full_frame` turns into the full
image's ``transl`` (seed 000, A.1).

Inputs: RGB crops normalised with ImageNet's channel statistics (:meth:`Regressor.normalize_crops`)
and, for a network made with a ``keypoint_format`` (:class:`RegressorConfig`), the person's 2D
keypoints of that format in crop coordinates: each point's ``(x, y, confidence)`` (zeros for a
missing point, :meth:`Regressor.keypoint_features`) joins the image feature at the input of every
IEF step. The 2D points are what a keypoint fit has anyway, and lifting them is far easier to
learn than reading the pose from pixels: a small network trained from scratch on 64-pixel crops
learns the pose from them and not from the image (``docs/spin.md``).

Open mean parameters (:func:`open_mean_params`): SPIN's ``smpl_mean_params.npz`` is licensed with
SMPL, so fitkit builds its own: the body pose is the per-joint weighted chordal mean
(:func:`fitkit.geometry.average_rotations`) of the component means of fitkit's open GMM prior
(trained on fitkit's synthetic poses), weighted by the mixture weights; the global orientation is
upright and facing the camera (a half turn about x: the body's y up becomes the camera's y down);
``betas`` are zero (the open body's mean shape); the camera is
:data:`fitkit.nets.refit.MEAN_CAMERA` (a 1.7 m person filling about 70% of the box). A network
loaded from a checkpoint carries the mean parameters it was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import Tensor, nn

from fitkit.geometry.rotations import (
    average_rotations,
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    matrix_to_rot6d,
    rot6d_to_matrix,
)
from fitkit.io.keypoint_formats import KEYPOINT_FORMATS
from fitkit.nets.checkpoint import register_network
from fitkit.nets.refit import IMAGE_MEAN, IMAGE_STD, MEAN_CAMERA, NUM_BETAS, NUM_JOINTS

POSE_DIM = 6 * NUM_JOINTS
"""Length of the 6D pose vector (144)."""
NUM_CAMERA = 3
"""Weak-perspective camera ``(s, tx, ty)``."""
EXPANSION = 4
"""Output channels of a bottleneck block per channel of its 3x3 convolution."""

BACKBONES: dict[str, tuple[int, tuple[int, int, int, int]]] = {
    "resnet50": (64, (3, 4, 6, 3)),
    "small": (16, (1, 1, 1, 1)),
}
"""Backbone name -> (stem channels, bottleneck blocks of ``layer1`` .. ``layer4``). Stage ``i``
has ``width * 2**i`` channels in its 3x3 convolutions and four times that at its output."""


@dataclass(frozen=True)
class RegressorConfig:
    """Size of a :class:`Regressor` (saved in its checkpoints).

    The defaults are the small CPU variant; :data:`REGRESSOR_CONFIGS` ``["resnet50"]`` is SPIN's
    network (224-pixel crops, ResNet-50, 1024-wide head).

    Attributes:
        backbone: a key of :data:`BACKBONES` (``"resnet50"`` or ``"small"``).
        image_size: side of the square input crops in pixels (a multiple of 32; SPIN: 224).
        iterations: IEF steps from the mean parameters (SPIN: 3).
        hidden: width of ``fc1`` and ``fc2`` (SPIN: 1024).
        dropout: probability of ``drop1`` and ``drop2`` in training (SPIN: 0.5).
        keypoint_format: a keypoint format (:data:`fitkit.io.keypoint_formats.KEYPOINT_FORMATS`)
            whose 2D points the network reads besides the crop, or ``""``: the crop alone
            (SPIN's network).
    """

    backbone: str = "small"
    image_size: int = 64
    iterations: int = 3
    hidden: int = 512
    dropout: float = 0.5
    keypoint_format: str = ""

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"RegressorConfig.backbone must be one of {', '.join(BACKBONES)}, "
                             f"got {self.backbone!r}")
        if self.image_size < 32 or self.image_size % 32:
            raise ValueError(f"RegressorConfig.image_size must be a multiple of 32 and at least "
                             f"32, got {self.image_size}")
        if self.iterations < 1 or self.hidden < 1:
            raise ValueError(f"RegressorConfig.iterations and hidden must be positive, got "
                             f"{self.iterations} and {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"RegressorConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.keypoint_format and self.keypoint_format not in KEYPOINT_FORMATS:
            raise ValueError(f"RegressorConfig.keypoint_format must be empty or one of "
                             f"{', '.join(KEYPOINT_FORMATS)}, got {self.keypoint_format!r}")

    @property
    def keypoint_count(self) -> int:
        """K, the 2D keypoints the network reads (0: the crop alone)."""
        return KEYPOINT_FORMATS[self.keypoint_format].count if self.keypoint_format else 0

    @property
    def feature_dim(self) -> int:
        """Length of the backbone's pooled feature (ResNet-50: 2048)."""
        width, _ = BACKBONES[self.backbone]
        return width * 8 * EXPANSION


REGRESSOR_CONFIGS: dict[str, RegressorConfig] = {
    "small": RegressorConfig(),
    "resnet50": RegressorConfig(backbone="resnet50", image_size=224, hidden=1024),
}
"""Preset sizes: ``small`` (64-pixel crops, about 5 MB; trains on a CPU) and ``resnet50``
(SPIN's network and checkpoint shapes; for a GPU)."""


class ResNetBottleneck(nn.Module):
    """ResNet's bottleneck block with torchvision's/SPIN's parameter names (``conv1``, ``bn1``,
    ``conv2``, ``bn2``, ``conv3``, ``bn3``, ``downsample.0``, ``downsample.1``); the stride is on
    the 3x3 convolution. (:class:`fitkit.nets.blocks.Bottleneck` is stride-1 with other names.)

    Args:
        in_channels: C_in.
        mid_channels: channels of the 3x3 convolution; the output has ``4 * mid_channels``.
        stride: of the 3x3 convolution and of the projection.
    """

    def __init__(self, in_channels: int, mid_channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = EXPANSION * mid_channels
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.conv2 = nn.Conv2d(mid_channels, mid_channels, 3, stride=stride, padding=1,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv3 = nn.Conv2d(mid_channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C_in, H, W)`` -> ``(B, 4 mid, H / stride, W / stride)``."""
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        return self.relu(self.bn3(self.conv3(x)) + shortcut)


def _stage(in_channels: int, mid_channels: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` bottlenecks, the first with ``stride``."""
    layers = [ResNetBottleneck(in_channels, mid_channels, stride)]
    layers += [ResNetBottleneck(EXPANSION * mid_channels, mid_channels)
               for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


@lru_cache(maxsize=1)
def _open_mean_params() -> tuple[Tensor, Tensor, Tensor]:
    from fitkit.priors import load

    gmm = load("gmm")
    means = axis_angle_to_matrix(gmm.means.view(gmm.num_components, NUM_JOINTS - 1, 3))
    body = average_rotations(means.transpose(0, 1), gmm.weights.expand(NUM_JOINTS - 1, -1))
    root = torch.diag(torch.tensor([1.0, -1.0, -1.0]))
    pose = matrix_to_rot6d(torch.cat([root[None], body])).flatten()
    return pose, torch.zeros(NUM_BETAS), torch.tensor(MEAN_CAMERA)


def open_mean_params() -> dict[str, Tensor]:
    """fitkit's open mean parameters (see the module doc), computed once from the open GMM.

    Returns:
        ``"pose"`` ``(144,)`` 6D rotations (root first), ``"shape"`` ``(10,)``, ``"cam"`` ``(3,)``
        (the keys of SPIN's ``smpl_mean_params.npz``).
    """
    pose, shape, cam = _open_mean_params()
    return {"pose": pose.clone(), "shape": shape.clone(), "cam": cam.clone()}


class Regressor(nn.Module):
    """The HMR/SPIN regressor (see the module doc).

    Args:
        config: its size (default: the small CPU variant, :class:`RegressorConfig`).
    """

    def __init__(self, config: RegressorConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or RegressorConfig()
        width, blocks = BACKBONES[config.backbone]
        self.register_buffer("image_mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1),
                             persistent=False)
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = width
        for index, count in enumerate(blocks):
            mid = width * 2 ** index
            setattr(self, f"layer{index + 1}", _stage(channels, mid, count, 1 if index == 0 else 2))
            channels = EXPANSION * mid
        params = POSE_DIM + NUM_BETAS + NUM_CAMERA
        self.fc1 = nn.Linear(config.feature_dim + 3 * config.keypoint_count + params,
                             config.hidden)
        self.drop1 = nn.Dropout(config.dropout)
        self.fc2 = nn.Linear(config.hidden, config.hidden)
        self.drop2 = nn.Dropout(config.dropout)
        self.decpose = nn.Linear(config.hidden, POSE_DIM)
        self.decshape = nn.Linear(config.hidden, NUM_BETAS)
        self.deccam = nn.Linear(config.hidden, NUM_CAMERA)
        mean = open_mean_params()
        self.register_buffer("init_pose", mean["pose"][None])
        self.register_buffer("init_shape", mean["shape"][None])
        self.register_buffer("init_cam", mean["cam"][None])
        self._initialise()

    def _initialise(self) -> None:
        """He-normal convolutions (fan-out), unit BatchNorm, near-zero decoders (Xavier with gain
        0.01 as SPIN, and zero biases, so that an untrained network returns the mean)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        for decoder in (self.decpose, self.decshape, self.deccam):
            nn.init.xavier_uniform_(decoder.weight, gain=0.01)
            nn.init.zeros_(decoder.bias)

    def mean_params(self) -> dict[str, Tensor]:
        """The mean-parameter buffers the IEF loop starts from: ``"init_pose"`` ``(1, 144)``,
        ``"init_shape"`` ``(1, 10)``, ``"init_cam"`` ``(1, 3)``."""
        return {"init_pose": self.init_pose, "init_shape": self.init_shape,
                "init_cam": self.init_cam}

    def normalize_crops(self, crops: Tensor) -> Tensor:
        """Network input from crops: RGB in ``[0, 1]`` with ImageNet's channel mean subtracted
        and divided by its deviation, on the network's device and dtype.

        Args:
            crops: ``(B, S, S, 3)`` uint8 RGB (an image's layout) or ``(B, 3, S, S)`` float RGB in
                ``[0, 1]``.
        Returns:
            ``(B, 3, S, S)`` float.
        Raises:
            ValueError: another shape or dtype.
        """
        if crops.dtype == torch.uint8:
            if crops.ndim != 4 or crops.shape[-1] != 3:
                raise ValueError(f"uint8 crops must have shape (B, S, S, 3), got "
                                 f"{tuple(crops.shape)}")
            crops = crops.permute(0, 3, 1, 2).to(self.image_mean.dtype) / 255.0
        elif not crops.is_floating_point() or crops.ndim != 4 or crops.shape[1] != 3:
            raise ValueError(f"crops must be (B, S, S, 3) uint8 or (B, 3, S, S) float, got "
                             f"{tuple(crops.shape)} {crops.dtype}")
        crops = crops.to(self.image_mean.device, self.image_mean.dtype)
        return (crops - self.image_mean) / self.image_std

    def features(self, images: Tensor) -> Tensor:
        """The backbone's pooled feature ``(B, feature_dim)`` of normalised crops
        ``(B, 3, S, S)``."""
        size = self.config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise ValueError(f"the regressor takes crops of shape (B, 3, {size}, {size}), got "
                             f"{tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"the regressor takes float crops (normalize_crops), got "
                             f"{images.dtype}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return x.mean(dim=(2, 3))

    def keypoint_features(self, keypoints: Tensor) -> Tensor:
        """The network's keypoint input: ``(x, y, confidence)`` of each point, zeros where the
        confidence is not positive or a value is not finite; coordinates clamped to ``[-2, 2]``
        (a box's side each way).

        Args:
            keypoints: ``(B, K, 3)`` crop coordinates (``[-1, 1]`` across the box) and
                confidence, K = ``config.keypoint_count``, in the format's order.
        Returns:
            ``(B, 3 K)``.
        Raises:
            ValueError: another shape.
        """
        count = self.config.keypoint_count
        if keypoints.ndim != 3 or tuple(keypoints.shape[1:]) != (count, 3):
            raise ValueError(f"this regressor reads {count} keypoints "
                             f"({self.config.keypoint_format}) as (B, {count}, 3), got "
                             f"{tuple(keypoints.shape)}")
        keypoints = keypoints.to(self.init_pose)
        used = keypoints.isfinite().all(dim=-1, keepdim=True) & (keypoints[..., 2:] > 0.0)
        points = torch.cat([keypoints[..., :2].clamp(-2.0, 2.0), keypoints[..., 2:]], dim=-1)
        return torch.where(used, points, 0.0).flatten(1)

    def forward(self, images: Tensor, keypoints: Tensor | None = None) -> dict[str, Tensor]:
        """Regress SMPL parameters from crops (and 2D keypoints).

        Args:
            images: ``(B, 3, S, S)`` float crops normalised as :meth:`normalize_crops` does,
                ``S = config.image_size``.
            keypoints: ``(B, K, 3)`` the crops' keypoints (:meth:`keypoint_features`): required
                by a network with a ``keypoint_format``, refused by one without.
        Returns:
            ``"pose6d"`` ``(B, 144)`` (24 joints, root first, 6D), ``"rotmat"`` ``(B, 24, 3, 3)``,
            ``"global_orient"`` ``(B, 3)`` and ``"body_pose"`` ``(B, 69)`` axis-angle,
            ``"betas"`` ``(B, 10)``, ``"cam"`` ``(B, 3)`` weak-perspective ``(s, tx, ty)`` in
            crop coordinates.
        Raises:
            ValueError: crops of another shape or an integer dtype; keypoints missing, of
                another shape, or given to a network that does not read them.
        """
        feature = self.features(images)
        if self.config.keypoint_format:
            if keypoints is None:
                raise ValueError(f"this regressor reads {self.config.keypoint_format} keypoints "
                                 "besides the crop; none were given")
            feature = torch.cat([feature, self.keypoint_features(keypoints)], dim=1)
        elif keypoints is not None:
            raise ValueError("this regressor reads the crop alone; keypoints were given")
        batch = feature.shape[0]
        pose = self.init_pose.expand(batch, -1)
        betas = self.init_shape.expand(batch, -1)
        cam = self.init_cam.expand(batch, -1)
        for _ in range(self.config.iterations):
            x = torch.cat([feature, pose, betas, cam], dim=1)
            x = self.drop2(self.fc2(self.drop1(self.fc1(x))))
            pose = pose + self.decpose(x)
            betas = betas + self.decshape(x)
            cam = cam + self.deccam(x)
        rotmat = rot6d_to_matrix(pose.view(batch, NUM_JOINTS, 6))
        axis_angle = matrix_to_axis_angle(rotmat)
        return {"pose6d": pose, "rotmat": rotmat, "global_orient": axis_angle[:, 0],
                "body_pose": axis_angle[:, 1:].flatten(1), "betas": betas, "cam": cam}



REGRESSOR_KIND = "regressor"
"""The kind of :class:`Regressor` checkpoints (:func:`fitkit.nets.save_network`)."""

register_network(REGRESSOR_KIND, Regressor, RegressorConfig, "regressor")
