"""Training the HMR/SPIN regressor with SMPLify in the loop (seed 002):
``python -m fitkit.train spin --data DIR --out OUT``.

**Data.** A dataset folder of images with 2D keypoints (``images/NAME.png``,
``keypoints/NAME_keypoints.json``; the "unpaired" setting: no 3D ground truth is used for
training). The cameras are ``init.npz``'s ``focal_length`` and ``camera_center`` when the folder
has one (only those keys are read), else fitkit's default camera of each image. A ``gt.npz``
(what ``python -m fitkit.synth`` writes) is read for reporting only: the dictionary's PA-MPJPE in
the history, never a training signal.

**The loop** (:class:`SpinTrainer`), per step of ``batch_size`` draws (every image once per
epoch, in a fresh order each epoch):

1. crop each image around its keypoints (the box of :func:`fitkit.regress.person_boxes`, the one
   ``fitkit.regress`` uses), jittered in scale, turned and mirrored as SPIN does
   (:class:`SpinAugment`, :func:`augmented_crops`);
2. regress from the crop and (``keypoint_input``, the default) the keypoints moved into the
   augmented crop (:func:`crop_keypoints`); take the estimate back to the un-augmented image
   (:func:`fitkit.train.fits.unaugment_pose`; its weak-perspective camera becomes the full-frame
   translation, :func:`fitkit.geometry.weak_perspective_to_full_frame`);
3. SMPLify from it with the keypoints term in the full image's camera (:func:`spin_fit_config`:
   SPIN's SMPLify, Adam at 1e-2, ``fit_iterations`` per stage, residuals in pixels of a
   224-pixel crop around the person);
4. re-score the stored fits with the same keypoints and camera and keep, per sample, the better
   of the stored and the new fit (:meth:`fitkit.train.fits.FitsDictionary.update`);
5. supervise the network (SPIN §3: rotation matrices weight 1 and betas 0.001 against the valid
   fits, 2D keypoints 5, the camera-scale term, all times 60, :class:`SpinWeights`).

``static=True`` skips 2-4: the network learns from the initial dictionary, which never changes
(the baseline of seed 002's Table 1). The initial dictionary is SMPLify from the mean pose (the
regressor's mean parameters) on every image (``fits_initial.npz``).

**The output folder** (a :class:`fitkit.io.runs.RunStore`)::

    settings.json        the run's settings (a resume must repeat them)
    parts/               the initial fits, by row range (an interrupted run resumes them)
    fits_initial.npz     the initial dictionary (fitkit.train.fits layout)
    checkpoint.pt        network, optimizer, dictionary, random state, history (kind regressor)
    fits.npz             the dictionary at the last checkpoint
    history.json         training curves (losses, valid and updated fits, validation errors)
    regressor.pt         the trained network alone, written at the end

Every file is written atomically; the dictionary lives inside the checkpoint, so a run killed at
any moment resumes (``resume=True``) from a dictionary that belongs to its weights and redoes the
steps since, exactly as an uninterrupted run does them: each draw's augmentation and each chunk's
dropout masks come from their own generators (:func:`fitkit.io.runs.seed_stream`).

**Distributed.** ``torchrun --nproc_per_node K -m fitkit.train spin ...`` trains with
DistributedDataParallel (gloo on the CPU, nccl on GPUs). A step's ``batch_size`` draws form
chunks of ``chunk`` samples (one forward pass each, gradients accumulated); rank ``r`` takes the
chunks ``c`` with ``c % K == r``, fits and scores its own samples, and every rank applies all
ranks' new fits, gathered in draw order, so each holds the same dictionary and rank 0 writes it.
A run's numbers depend on ``batch_size`` and ``chunk`` but not on K: BatchNorm statistics are
over a chunk, and the gradients of the chunks are averaged; with 1 or 2 ranks the dictionary
file is the same bit for bit (more ranks may sum the gradients in another order, the last bit
then differs).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from fitkit.body.model import BodyModel, load_body
from fitkit.eval.metrics import mpjpe, pa_mpjpe
from fitkit.fitting import SMPLify
from fitkit.fitting.config import FitConfig
from fitkit.fitting.settings import fit_config, resolve_prior
from fitkit.geometry import (
    Camera,
    axis_angle_to_matrix,
    crop_to_pixels,
    pixels_to_crop,
    rot6d_to_axis_angle,
    weak_perspective_to_full_frame,
)
from fitkit.io.dataset import DatasetError, open_dataset
from fitkit.io.inputs import image_sizes, read_images, read_keypoints
from fitkit.io.keypoint_formats import KeypointFormat, resolve_format
from fitkit.io.params import CAMERA_KEYS
from fitkit.io.runs import (
    RunError,
    RunStore,
    check_device,
    file_digest,
    non_negative_int,
    positive_float,
    positive_int,
    read_npz_arrays,
    seed_stream,
    write_json,
)
from fitkit.nets.checkpoint import save_network
from fitkit.nets.regressor import (
    REGRESSOR_CONFIGS,
    REGRESSOR_KIND,
    Regressor,
    RegressorConfig,
    open_mean_params,
)
from fitkit.regress import person_boxes, regress
from fitkit.terms.keypoints import KeypointsTerm, default_joint_weights
from fitkit.train import (
    Command,
    check_non_negative,
    check_positive,
    read_resume_state,
    register_command,
    size_type,
)
from fitkit.train.fits import (
    FIT_PARAMS,
    VALID_THRESHOLD,
    FitsDictionary,
    fit_targets,
    keypoint_loss,
    mirror_permutation,
    rotate_crop_points,
    unaugment_pose,
)

CHECKPOINT = "checkpoint.pt"
FITS = "fits.npz"
FITS_INITIAL = "fits_initial.npz"
HISTORY = "history.json"
NETWORK = "regressor.pt"
OUTPUTS = (CHECKPOINT, FITS, FITS_INITIAL, HISTORY, NETWORK)
"""The files of an output folder besides ``settings.json`` and ``parts/``."""

INITIAL_BATCH = 64
"""Images per SMPLify batch of the initial fits (and per part file)."""
ORDER_STREAM, AUGMENT_STREAM, DROPOUT_STREAM = 11, 12, 13
"""Keys of the epoch orders', the draws' augmentation and the chunks' dropout generators
(:func:`fitkit.io.runs.seed_stream`)."""

CROP_SIZE = 224.0
"""SMPLify's keypoint residuals are pixels of a crop of this side around the person (SPIN's
224-pixel crops), so SPIN's weights and its validity threshold carry over."""
CROP_FOCAL = 2.0 * 5000.0 / 224.0
"""Focal length of the network's crop camera in crop coordinates (SPIN's 5000 pixels on a
224-pixel crop): a weak-perspective ``(s, tx, ty)`` places the body at depth
``CROP_FOCAL / s``."""
PARAM_COLUMNS = sum({"global_orient": 3, "body_pose": 69, "betas": 10, "transl": 3}.values())


@dataclass(frozen=True)
class SpinAugment:
    """SPIN's augmentation of the training crops (``utils/train_options.py`` defaults).

    Attributes:
        scale: the box side is multiplied by ``1 + scale * N(0, 1)`` clipped to
            ``[1 - scale, 1 + scale]``.
        rotation: the crop turns by ``rotation * N(0, 1)`` degrees clipped to ``±2 rotation``,
            for a share ``rotation_probability`` of the samples (the others not at all).
        rotation_probability: see ``rotation``.
        flip: probability of mirroring the crop left-right.
    """

    scale: float = 0.25
    rotation: float = 30.0
    rotation_probability: float = 0.4
    flip: float = 0.5

    def __post_init__(self) -> None:
        check_non_negative(scale=self.scale, rotation=self.rotation)
        for name in ("rotation_probability", "flip"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if self.scale >= 1.0:
            raise ValueError(f"scale must be below 1, got {self.scale!r}")

    def draw(self, seed: int, draws: Sequence[int]) -> tuple[Tensor, Tensor, Tensor]:
        """Each draw's box scale ``(B,)``, angle ``(B,)`` degrees and flip ``(B,)`` bool, from
        its own generator (so a draw's augmentation does not depend on its batch)."""
        values = torch.stack([torch.cat([
            torch.randn(2, generator=g), torch.rand(2, generator=g)])
            for g in (seed_stream(seed, AUGMENT_STREAM, draw) for draw in draws)])
        scale = (1.0 + self.scale * values[:, 0]).clamp(1.0 - self.scale, 1.0 + self.scale)
        angle = (self.rotation * values[:, 1]).clamp(-2 * self.rotation, 2 * self.rotation)
        angle = torch.where(values[:, 2] < self.rotation_probability, angle, 0.0)
        return scale, angle, values[:, 3] < self.flip


@dataclass(frozen=True)
class SpinWeights:
    """SPIN's loss weights (seed 002 §3: pose 1, betas 0.001, 2D keypoints 5, all times 60; the
    camera term keeps the weak-perspective scale positive, as SPIN's trainer)."""

    pose: float = 1.0
    betas: float = 0.001
    keypoints: float = 5.0
    camera: float = 1.0
    total: float = 60.0

    def __post_init__(self) -> None:
        check_non_negative(**dataclasses.asdict(self))


def spin_fit_config(iterations: int) -> FitConfig:
    """SPIN's SMPLify (the ``spin`` preset: a camera stage and a body stage, Adam at 1e-2, GMM
    4.78, shape 5, bending 15.2, the depth prior) with ``iterations`` per stage, in the full
    image with keypoint residuals in pixels of a 224-pixel crop around the person."""
    return fit_config("spin", iterations=iterations, focal_length=None,
                      term_options={"keypoints": {"crop_size": CROP_SIZE}})


def keypoint_flip_permutation(fmt: KeypointFormat) -> list[int]:
    """For each point of a keypoint format, the point that takes its place in a mirrored image
    (left and right swapped: ``LShoulder`` <-> ``RShoulder``, ``left_eye`` <-> ``right_eye``)."""
    return mirror_permutation(fmt.names)


def augmented_crops(images: Sequence[Tensor], box_center: Tensor, box_size: Tensor,
                    resolution: int, angle: Tensor, flip: Tensor) -> Tensor:
    """Crops of boxes turned by ``angle`` and mirrored where ``flip`` (the content rotates
    counter-clockwise as seen, :func:`fitkit.train.fits.in_plane_rotation`), sampled straight
    from the full images, so the corners hold image and not padding. With ``angle = 0`` and no
    flip this is :func:`fitkit.geometry.crop_images`.

    Args:
        images: B tensors ``(3, H_i, W_i)`` in [0, 1].
        box_center: ``(B, 2)``; box_size: ``(B,)`` (pixels); angle: ``(B,)`` degrees;
            flip: ``(B,)`` bool.
    Returns:
        ``(B, 3, resolution, resolution)``, zeros outside the images.
    """
    steps = (2.0 * torch.arange(resolution, dtype=box_center.dtype) + 1.0) / resolution - 1.0
    v, u = torch.meshgrid(steps, steps, indexing="ij")
    crop = torch.stack([u, v], dim=-1).reshape(1, -1, 2).repeat(len(images), 1, 1)
    crop[..., 0] = torch.where(flip[:, None], -crop[..., 0], crop[..., 0])
    pixels = crop_to_pixels(rotate_crop_points(crop, -angle), box_center, box_size)
    crops = []
    for i, image in enumerate(images):
        size = pixels.new_tensor([image.shape[-1], image.shape[-2]])
        grid = (2.0 * (pixels[i] + 0.5) / size - 1.0).view(1, resolution, resolution, 2)
        crops.append(F.grid_sample(image[None].to(grid.dtype), grid, mode="bilinear",
                                   padding_mode="zeros", align_corners=False))
    return torch.cat(crops)


def crop_keypoints(keypoints: Tensor, box_center: Tensor, box_size: Tensor, angle: Tensor,
                   flip: Tensor, permutation: Sequence[int]) -> Tensor:
    """Image keypoints in the augmented crop's coordinates (``[-1, 1]`` across the box).

    Args:
        keypoints: ``(B, K, 3)`` ``(u, v, confidence)`` image pixels; box_center ``(B, 2)``,
            box_size ``(B,)``, angle ``(B,)``, flip ``(B,)`` as :func:`augmented_crops`;
            permutation: the format's mirror permutation (:func:`keypoint_flip_permutation`).
    Returns:
        ``(B, K, 3)``: crop coordinates and confidence (0 where missing or not finite).
    """
    usable = keypoints.isfinite().all(dim=-1)
    keypoints = torch.where(usable[..., None], keypoints, 0.0)
    crop = rotate_crop_points(pixels_to_crop(keypoints[..., :2], box_center, box_size), angle)
    crop = torch.cat([crop, keypoints[..., 2:].clamp(min=0.0)], dim=-1)
    mirrored = crop[:, list(permutation)] * crop.new_tensor([-1.0, 1.0, 1.0])
    return torch.where(flip[:, None, None], mirrored, crop)


def crop_projection(points: Tensor, weak_camera: Tensor) -> Tensor:
    """SPIN's projection of body points into the crop: a pinhole of focal length
    :data:`CROP_FOCAL` (crop coordinates) with the body at ``(tx, ty, CROP_FOCAL / s)``.

    Args:
        points: ``(B, N, 3)`` body points (zero translation); weak_camera: ``(B, 3)``.
    Returns:
        ``(B, N, 2)`` crop coordinates.
    """
    scale, shift = weak_camera[:, :1], weak_camera[:, 1:]
    depth = CROP_FOCAL / (scale + 1e-9)
    placed = points + torch.cat([shift, depth], dim=-1)[:, None]
    return CROP_FOCAL * placed[..., :2] / placed[..., 2:]


class KeypointFolder:
    """A dataset folder of images with 2D keypoints, the training set of a SPIN run (module
    doc).

    Args:
        root: the folder.
    Attributes:
        names: the N image names (``init.npz``'s rows, else the images', sorted).
        keypoints: ``(N, K, 3)`` float32, image pixels.
        format: their keypoint format.
        camera: the N full-image cameras.
        gt: ``gt.npz``'s rows by name (for reports), or ``None``.
    Raises:
        DatasetError: no folder, no images, no ``keypoints/`` folder (each names the path).
        FileNotFoundError, KeypointFileError: a missing or malformed keypoint file (named).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        dataset = open_dataset(self.root)
        self.names = dataset.names
        self.paths = [dataset.image_path(name) for name in self.names]
        if not (self.root / "keypoints").is_dir():
            raise DatasetError(f"{self.root / 'keypoints'} not found: SPIN training needs 2D "
                               "keypoints of every image (keypoints/NAME_keypoints.json)")
        self.keypoint_paths = dataset.files(KeypointsTerm.dataset_pattern, self.names)
        read = read_keypoints(self.keypoint_paths)
        codes = {int(code) for code in read["keypoint_format"].tolist() if code}
        named = None
        if codes:
            from fitkit.io.keypoint_formats import KEYPOINT_FORMATS
            named = list(KEYPOINT_FORMATS)[min(codes) - 1]
        self.format = resolve_format(read["keypoints"].shape[1], None, named)
        self.keypoints = torch.from_numpy(read["keypoints"])
        if self.keypoints.shape[1] == 0:
            raise DatasetError(f"{self.root / 'keypoints'}: no keypoints in any file")
        for path in self.paths:
            if not path.is_file():
                raise DatasetError(f"image not found: {path.with_suffix('')}.png|jpg|jpeg")
        self.image_size = torch.from_numpy(image_sizes(self.paths).astype(np.float32))
        if all(key in dataset.init for key in CAMERA_KEYS):
            self.camera_source = "init.npz"
            self.camera = Camera(torch.from_numpy(dataset.init["focal_length"]).float(),
                                 torch.from_numpy(dataset.init["camera_center"]).float(),
                                 self.image_size)
        else:
            self.camera_source = "default"
            self.camera = Camera.default(self.image_size)
        self.gt = dataset.gt

    def __len__(self) -> int:
        """N, the images."""
        return len(self.names)

    def cameras(self, rows: Sequence[int]) -> Camera:
        """The cameras of ``rows``."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        return Camera(self.camera.focal_length[index], self.camera.principal_point[index],
                      self.camera.image_size[index])

    def images(self, rows: Sequence[int]) -> list[Tensor]:
        """The images of ``rows``, ``(3, H, W)`` float in [0, 1]."""
        return [torch.tensor(image).permute(2, 0, 1).float().div(255.0)
                for image in read_images([self.paths[row] for row in rows])]

    def digest(self) -> dict[str, str]:
        """The content training reads (image and keypoint files, ``init.npz`` for the
        cameras), for a run's resume settings."""
        import hashlib

        digest = hashlib.sha256()
        for name, image, keypoints in zip(self.names, self.paths, self.keypoint_paths,
                                          strict=True):
            digest.update(f"{name}\0{file_digest(image)}\0{file_digest(keypoints)}\0".encode())
        result = {"files": f"sha256:{digest.hexdigest()}", "cameras": self.camera_source}
        if self.camera_source == "init.npz":
            result["init.npz"] = file_digest(self.root / "init.npz")
        return result

    def rows(self, seed: int, draws: Sequence[int]) -> list[int]:
        """The rows of ``draws``: every row once per epoch of N draws, in an order drawn for
        each epoch."""
        count, result, orders = len(self), [], {}
        for draw in draws:
            epoch = draw // count
            if epoch not in orders:
                orders[epoch] = torch.randperm(count, generator=seed_stream(
                    seed, ORDER_STREAM, epoch))
            result.append(int(orders[epoch][draw % count]))
        return result

    def boxes(self, rows: Sequence[int]) -> tuple[Tensor, Tensor]:
        """The crop boxes of ``rows`` (:func:`fitkit.regress.person_boxes` of the keypoints):
        ``(M, 2)`` centres and ``(M,)`` sides."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        center, size, _ = person_boxes(self.image_size[index], keypoints=self.keypoints[index])
        return center, size


def mean_pose(count: int) -> dict[str, Tensor]:
    """The regressor's open mean parameters as SMPLify's start (seed 002's "mean pose init"):
    ``global_orient`` ``(count, 3)``, ``body_pose`` ``(count, 69)``, ``betas`` ``(count, 10)``."""
    mean = open_mean_params()
    rotations = rot6d_to_axis_angle(mean["pose"].view(-1, 6))
    return {"global_orient": rotations[0].expand(count, 3).clone(),
            "body_pose": rotations[1:].flatten().expand(count, -1).clone(),
            "betas": mean["shape"].expand(count, -1).clone()}


def fit_images(smplify: SMPLify, folder: KeypointFolder, rows: Sequence[int],
               init: dict[str, Tensor]) -> tuple[dict[str, Tensor], Tensor]:
    """SMPLify on the keypoints of ``rows`` from ``init``, in the full images' cameras.

    Returns:
        The fitted ``global_orient``, ``body_pose``, ``betas``, ``transl`` ``(M, ...)`` and
        their keypoint losses ``(M,)`` (inf for a fit that failed, :func:`keypoint_loss`).
    """
    body = smplify.body
    index = torch.as_tensor(list(rows), dtype=torch.long)
    camera = folder.cameras(rows).to(body.device)
    term = keypoint_term(smplify, folder.keypoints[index].to(body.device))
    result = smplify.fit({"keypoints": term}, camera, {k: v.to(body.device)
                                                       for k, v in init.items()})
    params = {key: result.params[key] for key in FIT_PARAMS}
    loss = score(body, term, params, camera)
    failed = result.flags["nan"] | result.flags["diverged"]
    return {k: v.cpu() for k, v in params.items()}, torch.where(failed, torch.inf, loss).cpu()


def keypoint_term(smplify: SMPLify, keypoints: Tensor) -> KeypointsTerm:
    """The keypoints term of ``smplify``'s config for ``(M, K, 3)`` image keypoints."""
    return smplify.config.build_term("keypoints", keypoints=keypoints)


@torch.no_grad()
def score(body: BodyModel, term: KeypointsTerm, params: dict[str, Tensor],
          camera: Camera) -> Tensor:
    """The keypoint loss ``(M,)`` of fits ``params`` (:func:`fitkit.train.fits.keypoint_loss`)."""
    output = body(**{key: params[key].to(body.device) for key in FIT_PARAMS},
                  vertex_ids=term.body_vertices(body))
    return keypoint_loss(term, output, camera)


@dataclass
class Ranks:
    """This process's place in a distributed run (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        """Whether other ranks exist."""
        return self.world > 1

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.distributed:
            dist.barrier()

    def agree(self, message: str | None) -> None:
        """Share rank 0's failure: raise :class:`RunError` with its message on every rank."""
        if self.distributed:
            shared = [message]
            dist.broadcast_object_list(shared, src=0)
            message = shared[0]
        if message is not None:
            raise RunError(message)


@contextlib.contextmanager
def distributed_ranks(device: str) -> Iterator[tuple[Ranks, str]]:
    """The ranks of a ``torchrun`` launch (``WORLD_SIZE`` > 1: a process group, gloo on the
    CPU, nccl on GPUs, each rank on GPU ``LOCAL_RANK``), else one rank; yields them and the
    device of this rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield Ranks(), device
        return
    cuda = torch.device(device).type == "cuda"
    if cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size()), device
    finally:
        dist.destroy_process_group()


@dataclass
class SpinSettings:
    """What a SPIN run trains with (saved and compared on resume).

    Attributes:
        batch_size: draws per step (SPIN: 64); chunk: samples per forward pass (default
            ``batch_size / ranks``; it must divide ``batch_size / ranks``). BatchNorm sees a
            chunk, so a run's numbers depend on it, not on the number of ranks.
        lr: Adam's learning rate (SPIN: 3e-5 from an ImageNet backbone).
        seed: draws, augmentation, initialization and dropout.
        fit_iterations: SMPLify's iterations per stage in the loop (SPIN's supplement: 50).
        initial_iterations: per stage, for the initial fits from the mean pose (default twice
            ``fit_iterations``, the measured configuration of ``docs/results.md``: 50 in the
            loop and 100 initially, SPIN's code's length; with 10 and 10 the dictionary got
            worse in the loop).
        threshold: the keypoint loss of a valid fit.
        static: train on the initial dictionary only.
        keypoint_input: the network reads the folder's 2D keypoints besides the crop
            (:class:`fitkit.nets.regressor.RegressorConfig` ``keypoint_format``); ``False``:
            the crop alone, as SPIN's.
        augment, weights: :class:`SpinAugment`, :class:`SpinWeights`.
    """

    batch_size: int = 16
    chunk: int | None = None
    lr: float = 2e-4
    seed: int = 1
    fit_iterations: int = 50
    initial_iterations: int | None = None
    threshold: float = VALID_THRESHOLD
    static: bool = False
    keypoint_input: bool = True
    augment: SpinAugment = dataclasses.field(default_factory=SpinAugment)
    weights: SpinWeights = dataclasses.field(default_factory=SpinWeights)

    def __post_init__(self) -> None:
        self.initial_iterations = self.initial_iterations or 2 * self.fit_iterations
        check_positive(batch_size=self.batch_size, chunk=self.chunk or 1, lr=self.lr,
                       fit_iterations=self.fit_iterations,
                       initial_iterations=self.initial_iterations, threshold=self.threshold)

    def for_ranks(self, world: int) -> SpinSettings:
        """The settings with ``chunk`` resolved for ``world`` ranks (default: the batch split
        evenly over them).

        Raises:
            ValueError: chunks that do not divide the batch or do not split over the ranks.
        """
        chunk = self.chunk or self.batch_size // world
        if not chunk or self.batch_size % chunk or (self.batch_size // chunk) % world:
            raise ValueError(f"batch_size {self.batch_size} does not split into chunks of "
                             f"{self.chunk or 'batch_size / ranks'} shared by {world} ranks")
        return dataclasses.replace(self, chunk=chunk)


class SpinTrainer:
    """A SPIN training run (module doc): see :func:`train_spin` for the arguments."""

    def __init__(self, data: str | os.PathLike, out: str | os.PathLike,
                 settings: SpinSettings, config: RegressorConfig | None, steps: int,
                 device: str, resume: bool, checkpoint_every: int, val: str | None,
                 val_every: int, val_size: int, body: str, prior: str, progress: bool,
                 ranks: Ranks, log_every: int = 10,
                 initial: str | os.PathLike | None = None) -> None:
        check_positive(steps=steps, checkpoint_every=checkpoint_every, log_every=log_every)
        check_non_negative(val_every=val_every, val_size=val_size)
        check_device(device)
        settings = settings.for_ranks(ranks.world)
        self.folder = KeypointFolder(data)
        if config is not None:
            config = self.network_config(config, settings)
        self.settings, self.steps, self.device, self.ranks = settings, steps, device, ranks
        self.out, self.checkpoint_every, self.val_every = Path(out), checkpoint_every, val_every
        self.progress = progress and ranks.rank == 0
        self.log_every = log_every
        self.permutation = keypoint_flip_permutation(self.folder.format)
        self.joint_weights = default_joint_weights(self.folder.format.name)
        self.val = KeypointFolder(val) if val is not None else None
        if self.val is not None and self.val.gt is None:
            raise DatasetError(f"{self.val.root / 'gt.npz'} not found: validation needs the "
                               "ground truth of its images")
        self.val_size = min(val_size, len(self.val)) if self.val is not None else 0
        self.body = load_body(body).to(device)
        self.smplify = SMPLify(self.body, resolve_prior(prior),
                               spin_fit_config(settings.fit_iterations))
        self.initial = SMPLify(self.body, self.smplify.prior,
                               spin_fit_config(settings.initial_iterations))
        self.config = config
        self.run_settings = {
            **{key: value for key, value in dataclasses.asdict(settings).items()},
            "body": file_digest(self.body.source) if Path(self.body.source).is_file()
            else str(self.body.source),
            "prior": prior if prior in ("gmm", "vposer", "cnf") else file_digest(prior),
            "data": self.folder.digest(), "format": self.folder.format.name}
        self.initial_file = None if initial is None else Path(initial)
        if self.initial_file is not None:
            self.run_settings["initial"] = file_digest(self.initial_file)
        self.resume = resume
        self.store: RunStore | None = None

    def network_config(self, config: RegressorConfig,
                       settings: SpinSettings) -> RegressorConfig:
        """``config`` reading the folder's keypoints where ``settings.keypoint_input``, else the
        crop alone."""
        name = self.folder.format.name if settings.keypoint_input else ""
        return dataclasses.replace(config, keypoint_format=name)

    # ------------------------------------------------------------------ the output folder

    def open_store(self) -> None:
        """Rank 0 opens (or resumes) the output folder; the others join it; a refusal ends
        every rank with rank 0's message."""
        message = None
        if self.ranks.rank == 0:
            try:
                self.store = RunStore(self.out, self.run_settings, OUTPUTS, resume=self.resume,
                                      writer=RunStore.SOLE_WRITER)
            except (RunError, OSError) as error:
                message = str(error)
        self.ranks.agree(message)
        self.ranks.barrier()
        if self.ranks.rank != 0:
            self.store = RunStore(self.out, self.run_settings, OUTPUTS, shared=True)

    def initial_fits(self) -> FitsDictionary:
        """The initial dictionary: ``fits_initial.npz``, made first where missing (SMPLify from
        the mean pose, batches of :data:`INITIAL_BATCH` images shared by the ranks, each batch
        a part of the run store)."""
        path = self.out / FITS_INITIAL
        if not path.is_file() and self.initial_file is not None:
            if self.ranks.rank == 0:
                self.given_initial().write(path)
            self.ranks.barrier()
        if not path.is_file():
            store, count = self.store, len(self.folder)
            done = store.parts()
            batches = [(start, min(start + INITIAL_BATCH, count))
                       for start in range(0, count, INITIAL_BATCH)]
            mine = [batch for index, batch in enumerate(batches)
                    if index % self.ranks.world == self.ranks.rank and batch not in done]
            for start, stop in tqdm(mine, desc="initial fits", disable=not self.progress):
                rows = list(range(start, stop))
                params, loss = fit_images(self.initial, self.folder, rows, mean_pose(len(rows)))
                store.write_part(start, stop, {**{k: v.numpy() for k, v in params.items()},
                                               "keypoint_loss": loss.numpy()})
            self.ranks.barrier()
            if self.ranks.rank == 0:
                parts = [read_npz_arrays(store.part_path(*batch)) for batch in batches]
                params = {key: torch.from_numpy(np.concatenate([p[key] for p in parts]))
                          for key in FIT_PARAMS}
                params["focal_length"] = self.folder.camera.focal_length
                params["camera_center"] = self.folder.camera.principal_point
                loss = torch.from_numpy(np.concatenate([p["keypoint_loss"] for p in parts]))
                FitsDictionary(self.folder.names, params, loss,
                               threshold=self.settings.threshold).write(path)
            self.ranks.barrier()
        fits = FitsDictionary.read(path, self.settings.threshold)
        if fits.names != self.folder.names:
            raise RunError(f"{path}: its rows are not the images of {self.folder.root}")
        return fits

    def given_initial(self) -> FitsDictionary:
        """The initial dictionary given as a file (e.g. another run's ``fits_initial.npz``),
        its rows in the folder's order.

        Raises:
            FileNotFoundError, ParamsFileError: a missing or malformed file.
            RunError: a file without a row of every image of the folder.
        """
        given = FitsDictionary.read(self.initial_file, self.settings.threshold)
        index = {name: row for row, name in enumerate(given.names)}
        missing = [name for name in self.folder.names if name not in index]
        if missing:
            raise RunError(f"{self.initial_file}: key 'image_names' lacks {missing[:5]} of "
                           f"{self.folder.root}")
        rows = [index[name] for name in self.folder.names]
        return FitsDictionary(self.folder.names, given.rows(rows), given.keypoint_loss[rows],
                              given.updates[rows], self.settings.threshold)

    # ------------------------------------------------------------------ training

    def run(self) -> Regressor:
        """Train (module doc) and return the network (eval mode)."""
        self.open_store()
        try:
            fits = self.initial_fits()
            return self._train(fits)
        finally:
            if self.store is not None:
                self.store.close()

    def _train(self, fits: FitsDictionary) -> Regressor:
        settings, device, ranks = self.settings, self.device, self.ranks
        state = None
        checkpoint = self.out / CHECKPOINT
        if checkpoint.is_file():
            state, self.config = read_resume_state(checkpoint, REGRESSOR_KIND,
                                                   self.run_settings, self.config, self.steps)
            if "fits" not in state["training"]:
                raise RunError(f"{checkpoint}: field 'training' lacks the fits dictionary")
            fits = FitsDictionary.from_state_dict(state["training"]["fits"], str(checkpoint))
        config = self.config or self.network_config(REGRESSOR_CONFIGS["small"], settings)
        torch.manual_seed(settings.seed)
        net = Regressor(config).to(device)
        optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
        start, history = 0, []
        if state is not None:
            training = state["training"]
            net.load_state_dict(state["model"])
            optimizer.load_state_dict(training["optimizer"])
            torch.set_rng_state(training["rng"])
            start, history = training["step"], list(training["history"])
        model = (torch.nn.parallel.DistributedDataParallel(net) if ranks.distributed else net)
        net.train()

        def save(step: int) -> None:
            if ranks.rank != 0:
                return
            save_network(checkpoint, net, REGRESSOR_KIND, training={
                "step": step, "optimizer": optimizer.state_dict(),
                "rng": torch.get_rng_state(), "settings": self.run_settings,
                "history": history, "fits": fits.state_dict()})
            fits.write(self.out / FITS)
            write_json(self.out / HISTORY, history)

        if start == 0 and not history:
            history.append(_plain({"step": 0, **self.report(net, fits)}))
        window: list[dict[str, float]] = []
        bar = tqdm(range(start + 1, self.steps + 1), initial=start, total=self.steps,
                   desc="spin static" if settings.static else "spin training",
                   disable=not self.progress)
        step = start
        for step in bar:
            window.append(self.step(step, model, net, optimizer, fits))
            if step % self.log_every == 0 or step == self.steps:
                entry = {"step": step, **{key: sum(w[key] for w in window) / len(window)
                                          for key in window[0]}}
                entry["skipped"] = sum(w["skipped"] for w in window)
                window = []
                if (self.val_every and step % self.val_every == 0) or step == self.steps:
                    entry |= self.report(net, fits)
                history.append(_plain(entry))
                bar.set_postfix(loss=f"{entry['loss']:.3f}", valid=f"{entry['valid']:.2f}",
                                updated=f"{entry['updated']:.2f}")
            if step % self.checkpoint_every == 0 or step == self.steps:
                save(step)
        if step == start:
            save(step)
        if ranks.rank == 0:
            save_network(self.out / NETWORK, net, REGRESSOR_KIND)
        return net.eval()

    def step(self, step: int, model: torch.nn.Module, net: Regressor,
             optimizer: torch.optim.Optimizer, fits: FitsDictionary) -> dict[str, float]:
        """One training step: this rank's chunks, the averaged gradient, the dictionary
        update with every rank's new fits. A step whose averaged gradient is not finite is
        skipped (``skipped`` 1; the dictionary is still updated). Returns the step's mean losses
        and shares of valid and replaced fits (over all ranks)."""
        settings, ranks = self.settings, self.ranks
        chunk, first = settings.chunk, (step - 1) * settings.batch_size
        chunks = [c for c in range(settings.batch_size // chunk) if c % ranks.world == ranks.rank]
        optimizer.zero_grad(set_to_none=True)
        records, totals = [], None
        for position, c in enumerate(chunks):
            draws = list(range(first + c * chunk, first + (c + 1) * chunk))
            sync = position == len(chunks) - 1 or not ranks.distributed
            with contextlib.nullcontext() if sync else model.no_sync():
                loss, terms, record = self.chunk(draws, model, net, fits)
                (loss / len(chunks)).backward()
            records.append(record)
            totals = terms if totals is None else totals + terms
        finite = bool(torch.stack([p.grad.isfinite().all() for p in net.parameters()
                                   if p.grad is not None]).all())  # the same on every rank
        if finite:
            optimizer.step()
        records = torch.cat(records)
        totals = torch.cat([totals / len(chunks), torch.tensor([0.0 if finite else 1.0])])
        if ranks.distributed:  # on the device: nccl gathers GPU tensors only
            records, totals = records.to(self.device), totals.to(self.device)
            gathered = [torch.empty_like(records) for _ in range(ranks.world)]
            dist.all_gather(gathered, records)
            records = torch.cat(gathered).cpu()
            dist.all_reduce(totals)
            totals = totals.cpu()
            totals[:-1] = totals[:-1] / ranks.world
            totals[-1] = totals[-1].clamp(max=1.0)
        records = records[records[:, 0].argsort()]  # draw order
        if not settings.static:
            params = dict(zip(FIT_PARAMS, records[:, 2:2 + PARAM_COLUMNS].float().split(
                [3, 69, 10, 3], dim=1), strict=True))
            fits.update(records[:, 1].long(), params, records[:, -2].float(),
                        records[:, -1].float())
        names = ("loss", "keypoints", "pose", "betas", "camera", "valid", "updated", "skipped")
        return dict(zip(names, totals.tolist(), strict=True))

    def chunk(self, draws: list[int], model: torch.nn.Module, net: Regressor,
              fits: FitsDictionary) -> tuple[Tensor, Tensor, Tensor]:
        """One forward pass: crops, regression, SMPLify, targets, loss (module doc).

        Returns:
            The loss, ``(7,)`` its terms and shares (:meth:`step`), and ``(M, 2 + 85 + 2)``
            float64 records of the new fits: draw, row, parameters, loss, re-scored loss.
        """
        settings, device, folder = self.settings, self.device, self.folder
        rows = folder.rows(settings.seed, draws)
        scale, angle, flip = settings.augment.draw(settings.seed, draws)
        box_center, box_size = folder.boxes(rows)
        box_size = box_size * scale
        resolution = net.config.image_size
        crops = augmented_crops(folder.images(rows), box_center, box_size, resolution, angle,
                                flip)
        index = torch.as_tensor(rows, dtype=torch.long)
        keypoints = folder.keypoints[index]
        target_2d = crop_keypoints(keypoints, box_center, box_size, angle, flip,
                                   self.permutation).to(device)
        torch.manual_seed(int(torch.randint(2**62, (), generator=seed_stream(
            settings.seed, DROPOUT_STREAM, draws[0]))))
        output = model(net.normalize_crops(crops.to(device)),
                       target_2d if net.config.keypoint_format else None)

        count = len(rows)
        if settings.static:
            record = torch.zeros(count, 2 + PARAM_COLUMNS + 2, dtype=torch.float64)
            targets = fits.targets(index, angle, flip)
            updated = torch.zeros(count, dtype=torch.bool)
        else:
            record, targets, updated = self.refit(rows, draws, output, box_center, box_size,
                                                  angle, flip, fits)
        targets = {key: value.to(device) for key, value in targets.items()}
        loss, terms = self.loss(output, targets, target_2d)
        shares = torch.stack([targets["valid"].float().mean(), updated.float().mean()])
        return loss, torch.cat([terms, shares.cpu()]), record

    def refit(self, rows: list[int], draws: list[int], output: dict[str, Tensor],
              box_center: Tensor, box_size: Tensor, angle: Tensor, flip: Tensor,
              fits: FitsDictionary) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """SMPLify from the network's estimates, the stored fits re-scored, the better of the
        two as targets (un-augmented fits, augmented targets).

        Returns:
            The records of :meth:`chunk`, the targets (:meth:`FitsDictionary.targets` form) and
            ``(M,)`` bool, the samples whose new fit is better.
        """
        camera = self.folder.cameras(rows)
        orient, pose = unaugment_pose(output["global_orient"].detach().cpu(),
                                      output["body_pose"].detach().cpu(), angle, flip)
        weak = output["cam"].detach().cpu()
        shift = weak[:, 1:] * torch.where(flip, -1.0, 1.0)[:, None]
        weak = torch.cat([weak[:, :1].clamp(min=1e-2), rotate_crop_points(shift, -angle)], 1)
        init = {"global_orient": orient, "body_pose": pose,
                "betas": output["betas"].detach().cpu(),
                "transl": weak_perspective_to_full_frame(weak, box_center, box_size, camera)}
        with torch.no_grad():
            new, new_loss = fit_images(self.smplify, self.folder, rows, init)
            index = torch.as_tensor(rows, dtype=torch.long)
            stored = fits.rows(index)
            term = keypoint_term(self.smplify, self.folder.keypoints[index].to(self.device))
            rescored = score(self.body, term, stored, camera.to(self.device)).cpu()
        better = new_loss < rescored
        best = {key: torch.where(better[:, None], new[key], stored[key]) for key in FIT_PARAMS}
        targets = fit_targets(best, torch.where(better, new_loss, rescored), angle, flip,
                              self.settings.threshold)
        record = torch.cat([torch.tensor(draws, dtype=torch.float64)[:, None],
                            index.double()[:, None],
                            torch.cat([new[key] for key in FIT_PARAMS], 1).double(),
                            new_loss.double()[:, None], rescored.double()[:, None]], 1)
        return record, targets, better

    def loss(self, output: dict[str, Tensor], targets: dict[str, Tensor],
             target_2d: Tensor) -> tuple[Tensor, Tensor]:
        """SPIN's loss (seed 002 §3, :class:`SpinWeights`) of one chunk.

        Returns:
            The total and ``(5,)`` its parts: total, 2D keypoints, pose, betas, camera.
        """
        weights, body = self.settings.weights, self.body
        valid = targets["valid"]
        if valid.any():
            rotations = torch.cat([targets["global_orient"], targets["body_pose"]], 1)
            target_rotmat = axis_angle_to_matrix(rotations.view(-1, 24, 3))
            pose = F.mse_loss(output["rotmat"][valid], target_rotmat[valid])
            betas = F.mse_loss(output["betas"][valid], targets["betas"][valid])
        else:
            pose = betas = output["betas"].sum() * 0.0
        fmt = self.folder.format
        posed = body(global_orient=output["global_orient"], body_pose=output["body_pose"],
                     betas=output["betas"], vertex_ids=body.selector.vertex_ids(
                         fmt.keypoint_set))
        placed = list(fmt.placed)
        points = posed.keypoints(fmt.keypoint_set)[:, placed]
        projected = crop_projection(points, output["cam"])
        confidence = target_2d[:, placed, 2] * self.joint_weights[placed].to(projected)
        keypoints = (confidence[..., None] * (projected - target_2d[:, placed, :2]).square()
                     ).mean()
        camera = torch.exp(-10.0 * output["cam"][:, 0]).square().mean()
        total = weights.total * (weights.pose * pose + weights.betas * betas
                                 + weights.keypoints * keypoints + weights.camera * camera)
        return total, torch.stack([total, keypoints, pose, betas, camera]).detach().cpu()

    # ------------------------------------------------------------------ reports

    @torch.no_grad()
    def report(self, net: Regressor, fits: FitsDictionary) -> dict[str, float]:
        """Rank 0's measures for the history: the dictionary's mean keypoint loss and share
        of valid fits; its PA-MPJPE against ``gt.npz`` (reports only); the network's MPJPE and
        PA-MPJPE on the validation folder (in eval mode; the network's mode is restored)."""
        if self.ranks.rank != 0:
            return {}
        finite = fits.keypoint_loss[fits.keypoint_loss.isfinite()]
        entry = {"dictionary_loss": float(finite.mean()) if len(finite) else math.nan,
                 "dictionary_valid": float(fits.valid.float().mean())}
        if self.folder.gt is not None:
            entry["dictionary_pa_mpjpe"] = dictionary_error(fits, self.folder.gt, self.body)
        if self.val is not None and self.val_size:
            training = net.training
            errors = evaluate_regressor(net, self.val, self.body, self.device,
                                        rows=range(self.val_size))
            net.train(training)
            entry |= {f"val_{key}": float(value.mean()) for key, value in errors.items()}
        return entry


def _plain(entry: dict[str, Any]) -> dict[str, Any]:
    """A history entry as JSON values: a non-finite number (a diverged loss) becomes ``None``."""
    return {key: (None if isinstance(value, float) and not math.isfinite(value) else value)
            for key, value in entry.items()}


@torch.no_grad()
def body_joints(body: BodyModel, params: dict[str, Any], batch: int = 256) -> Tensor:
    """The SMPL joints ``(N, 24, 3)`` of parameters (arrays or tensors, any translation)."""
    values = {key: torch.as_tensor(np.asarray(params[key]), dtype=torch.float32)
              for key in ("global_orient", "body_pose", "betas")}
    count = len(values["betas"])
    empty = torch.zeros(0, dtype=torch.long, device=body.device)
    return torch.cat([body(**{k: v[i:i + batch].to(body.device) for k, v in values.items()},
                           vertex_ids=empty).joints.cpu() for i in range(0, count, batch)])


def dictionary_error(fits: FitsDictionary, gt: dict[str, np.ndarray], body: BodyModel) -> float:
    """Mean PA-MPJPE (mm, SMPL joints) of a dictionary's fits against the ground truth of its
    images (rows of ``gt`` in the dictionary's order)."""
    error = pa_mpjpe(body_joints(body, fits.params), body_joints(body, gt))
    return float(error.nanmean())


@torch.no_grad()
def evaluate_regressor(net: Regressor, folder: KeypointFolder, body: BodyModel,
                       device: str = "cpu", rows: Sequence[int] | None = None,
                       batch_size: int = 64) -> dict[str, Tensor]:
    """A regressor's errors on images with ground truth, as ``fitkit.regress`` runs it (boxes
    from the keypoints, the folder's cameras).

    Args:
        net: the network (left in eval mode); folder: images, keypoints and ``gt.npz``;
        rows: the rows to evaluate (default all).
    Returns:
        ``mpjpe`` (pelvis-aligned) and ``pa_mpjpe`` ``(M,)`` in millimetres, SMPL joints.
    Raises:
        DatasetError: a folder without ``gt.npz``.
    """
    if folder.gt is None:
        raise DatasetError(f"{folder.root / 'gt.npz'} not found: evaluation needs the ground "
                           "truth of the images")
    rows = list(range(len(folder))) if rows is None else list(rows)
    index = torch.as_tensor(rows, dtype=torch.long)
    estimate = regress([folder.paths[row] for row in rows],
                       keypoints={"keypoints": folder.keypoints[index].numpy()}, net=net,
                       device=device, batch_size=batch_size, camera=folder.cameras(rows))
    predicted = body_joints(body, estimate.params)
    true = body_joints(body, {key: value[rows] for key, value in folder.gt.items()})
    return {"mpjpe": mpjpe(predicted, true), "pa_mpjpe": pa_mpjpe(predicted, true)}


def train_spin(
    data: str | os.PathLike,
    out: str | os.PathLike,
    settings: SpinSettings | None = None,
    config: RegressorConfig | None = None,
    steps: int = 2000,
    device: str = "cpu",
    resume: bool = False,
    checkpoint_every: int = 100,
    val: str | os.PathLike | None = None,
    val_every: int = 250,
    val_size: int = 200,
    body: str = "open",
    prior: str = "gmm",
    progress: bool = True,
    log_every: int = 10,
    initial: str | os.PathLike | None = None,
) -> Regressor:
    """Train the regressor with SMPLify in the loop (module doc); under ``torchrun``, one call
    per rank.

    Args:
        data: the training folder (images and keypoints).
        out: the output folder (module doc).
        settings: batch, learning rate, seed, SMPLify iterations, threshold, ``static``,
            augmentation, loss weights (:class:`SpinSettings`).
        config: the network's size (default ``REGRESSOR_CONFIGS["small"]``; on resume, the
            checkpoint's).
        steps: total steps.
        device: where the network and SMPLify run (each rank on its own GPU under torchrun).
        resume: continue the run in ``out`` (the initial fits or the training).
        checkpoint_every: steps between checkpoints (and ``fits.npz``).
        val: a folder with ``gt.npz`` to validate on (rank 0), or ``None``.
        val_every: steps between validations (0: only at the end); val_size: images used.
        body: the body model (``"open"`` or a path); prior: SMPLify's pose prior.
        progress: tqdm bars (rank 0).
        log_every: steps per history entry (losses averaged over them).
        initial: an initial dictionary to start from instead of fitting one (a
            ``fits_initial.npz`` of another run on the same folder; rows matched by name).
    Returns:
        The trained network (eval mode).
    Raises:
        DatasetError, FileNotFoundError: a missing or malformed folder or keypoint file.
        RunError: an output folder that is not empty (without ``resume``), holds a run with
            other settings, or is written by another process.
        ValueError: settings that would not train, a checkpoint that cannot be resumed.
    """
    settings = settings or SpinSettings()
    with distributed_ranks(device) as (ranks, rank_device):
        trainer = SpinTrainer(data, out, settings, config, steps, rank_device, resume,
                              checkpoint_every, None if val is None else str(val), val_every,
                              val_size, body, prior, progress, ranks, log_every, initial)
        return trainer.run()


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, metavar="DIR",
                        help="training folder: images/ and keypoints/ (OpenPose JSON)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="output folder (checkpoint.pt, fits.npz, fits_initial.npz, ...)")
    parser.add_argument("--size", type=size_type(REGRESSOR_CONFIGS),
                        help="network size: small (64-pixel crops, CPU; default) or resnet50 "
                        "(SPIN's, 224-pixel crops, GPU)")
    parser.add_argument("--image-size", type=positive_int,
                        help="override the size's crop side (a multiple of 32)")
    parser.add_argument("--steps", type=positive_int, default=2000)
    parser.add_argument("--batch-size", type=positive_int, default=16)
    parser.add_argument("--chunk", type=positive_int,
                        help="samples per forward pass (default: batch size / ranks)")
    parser.add_argument("--lr", type=positive_float, default=2e-4,
                        help="Adam's learning rate (default 2e-4 from scratch; SPIN: 3e-5 from "
                        "an ImageNet backbone)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fit-iterations", type=positive_int, default=50,
                        help="SMPLify iterations per stage in the loop (default 50, SPIN's)")
    parser.add_argument("--initial-iterations", type=positive_int,
                        help="SMPLify iterations per stage of the initial fits (default: "
                        "twice --fit-iterations)")
    parser.add_argument("--threshold", type=positive_float, default=VALID_THRESHOLD,
                        help="keypoint loss below which a fit supervises (default 100)")
    parser.add_argument("--initial", type=Path, metavar="FILE",
                        help="start from this initial dictionary (another run's "
                        "fits_initial.npz on the same folder) instead of fitting one")
    parser.add_argument("--static", action="store_true",
                        help="train on the initial fits only (the baseline)")
    parser.add_argument("--image-only", action="store_true",
                        help="the network reads the crop alone (SPIN's); default: the crop and "
                        "the folder's 2D keypoints")
    parser.add_argument("--rotation", type=float, default=30.0,
                        help="rotation augmentation, degrees (default 30; 0: none)")
    parser.add_argument("--flip", type=float, default=0.5,
                        help="probability of mirroring a crop (default 0.5)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--checkpoint-every", type=positive_int, default=100)
    parser.add_argument("--val", type=Path, metavar="DIR",
                        help="folder with gt.npz to validate the network on")
    parser.add_argument("--val-every", type=non_negative_int, default=250)
    parser.add_argument("--val-size", type=non_negative_int, default=200)
    parser.add_argument("--log-every", type=positive_int, default=10)
    parser.add_argument("--body", default="open")
    parser.add_argument("--prior", default="gmm", help="SMPLify's pose prior (default gmm)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _run(args: argparse.Namespace) -> None:
    augment = SpinAugment(rotation=args.rotation, flip=args.flip)
    settings = SpinSettings(args.batch_size, args.chunk, args.lr, args.seed, args.fit_iterations,
                            args.initial_iterations, args.threshold, args.static,
                            keypoint_input=not args.image_only, augment=augment)
    config = args.size
    if args.image_size is not None:
        config = dataclasses.replace(config or REGRESSOR_CONFIGS["small"],
                                     image_size=args.image_size)
    train_spin(args.data, args.out, settings, config, args.steps, args.device, args.resume,
               args.checkpoint_every, args.val, args.val_every, args.val_size, args.body,
               args.prior, not args.quiet, args.log_every, args.initial)


register_command(Command(
    "spin", "train the HMR/SPIN regressor with SMPLify in the loop (seed 002)", _configure,
    _run))
