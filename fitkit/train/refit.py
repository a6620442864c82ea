"""Training ReFit (seed 001) on batches of the synthetic world made on the fly.

Each sample is a body of :class:`fitkit.synth.SynthWorld` rendered into a full image; the
crop box is the square around the body's projected vertices with a random fill (the person's
larger side over the box side) and a random shift of its centre (:class:`ReFitAugment`), and
the crop is resampled to the network's input size (:func:`fitkit.geometry.crop_images`). The loss
(:func:`fitkit.nets.refit.refit_loss`) supervises every iteration of the loop with the
full-frame adjusted reprojection of the joints, the pelvis-aligned 3D joints and the parameters,
weighted ``gamma^(T - t)``, with the gradient stopped across iterations; Adam with the gradient's
norm clipped (4, the public code's value).

Determinism and resume, as the flow trainer (:mod:`fitkit.train.flow`): batch ``step`` holds
samples ``step * B ... step * B + B - 1`` of the world seeded with ``seed``, its crop jitter
comes from per-sample generators, the feedback-dropout masks from torch's global generator whose
state is saved with every checkpoint; so a resumed CPU run ends with the same weights as an
uninterrupted one. The checkpoint at ``--out`` is a normal network checkpoint of kind ``refit``
(:func:`fitkit.nets.load_network`) carrying the training state. Validation uses the fixed
held-out samples from :data:`fitkit.train.flow.VALIDATION_START` on (world seed 0): MPJPE of
``Θ_0`` and ``Θ_T`` in millimetres.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from fitkit.body.keypoints import SAMPLED_VERTICES
from fitkit.body.model import BodyModel, load_body
from fitkit.geometry.camera import Camera
from fitkit.geometry.crop import crop_images
from fitkit.geometry.rotations import axis_angle_to_matrix
from fitkit.io.runs import check_device, file_digest, seed_stream
from fitkit.nets.checkpoint import REFIT_KIND, save_network
from fitkit.nets.refit import (
    KEYPOINT_TYPES,
    REFIT_CONFIGS,
    CropInfo,
    LossWeights,
    ReFit,
    ReFitConfig,
    ReFitTarget,
    refit_loss,
)
from fitkit.synth import SynthConfig, SynthWorld
from fitkit.synth.world import SampleBatch
from fitkit.train import (
    Command,
    check_non_negative,
    check_positive,
    output_lock,
    read_resume_state,
    register_command,
    restore_training,
    size_type,
)
from fitkit.train.flow import SCHEDULES, VALIDATION_START, learning_rate
from fitkit.train.folder import FolderSample, FolderSamples

CLIP_NORM = 4.0
"""Largest gradient norm (the public ReFit configuration's ``CLIP_NORM``)."""
CROP_STREAM = 3
"""Key of the crop-jitter generators (:func:`fitkit.io.runs.seed_stream`)."""


@dataclass
class ReFitAugment:
    """Crop boxes of training samples.

    Attributes:
        fill: range of the person's larger side (projected vertices) over the box side.
        shift: largest shift of the box centre from the person's, a fraction of the box side.
        world_size: side of the synthetic full images (pixels).
        texture_size: side of the clothing textures.
    """

    fill: tuple[float, float] = (0.55, 0.85)
    shift: float = 0.08
    world_size: int = 96
    texture_size: int = 64


@dataclass
class ReFitBatch:
    """One batch: crops, where they come from, and the truth.

    Attributes:
        images: ``(B, 3, R, R)`` crops, RGB in [0, 1].
        box_center: ``(B, 2)``; box_size: ``(B,)`` (full-image pixels).
        focal_length, principal_point, image_size: ``(B, 2)`` each, the full images' cameras.
        gt: true ``global_orient``, ``body_pose``, ``betas``, ``transl``.
        init: the synthetic world's initial estimates of the same bodies (perturbed like a
            regressor's output, :mod:`fitkit.synth.init`), same keys.
    """

    images: Tensor
    box_center: Tensor
    box_size: Tensor
    focal_length: Tensor
    principal_point: Tensor
    image_size: Tensor
    gt: dict[str, Tensor]
    init: dict[str, Tensor]

    def to(self, device: torch.device | str) -> ReFitBatch:
        """The batch on ``device``."""
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        moved = {name: ({k: v.to(device) for k, v in value.items()} if isinstance(value, dict)
                        else value.to(device)) for name, value in moved.items()}
        return ReFitBatch(**moved)

    @property
    def crop(self) -> CropInfo:
        """Boxes and full-image cameras."""
        return CropInfo(self.box_center, self.box_size,
                        Camera(self.focal_length, self.principal_point, self.image_size))


class ReFitBatchMaker:
    """Training batches for ReFit, made on the fly (see the module doc).

    Args:
        body: the body model (with UVs and DensePose labels, as the synthetic world needs).
        resolution: the network's crop side.
        augment: crop boxes and world size.
    """

    def __init__(self, body: BodyModel, resolution: int,
                 augment: ReFitAugment | None = None) -> None:
        self.body, self.resolution = body, resolution
        self.augment = augment or ReFitAugment()
        self.world = SynthWorld(body, SynthConfig(size=self.augment.world_size,
                                                  keypoint_noise="none",
                                                  texture_size=self.augment.texture_size))
        self._rendered: tuple[tuple[int, tuple[int, ...]], SampleBatch] | None = None

    @torch.no_grad()
    def make(self, seed: int, indices: list[int], variant: int = 0) -> ReFitBatch:
        """The batch of samples ``indices`` of the world seeded with ``seed``, cropped with
        jitter ``variant`` (the rendered samples are kept for the next call with the same
        indices)."""
        aug = self.augment
        key = (seed, tuple(indices))
        if self._rendered is None or self._rendered[0] != key:
            self._rendered = (key, self.world.generate(seed, indices))
        sample = self._rendered[1]
        batch, size = len(indices), float(aug.world_size)
        camera = Camera(sample.focal_length, sample.camera_center, torch.full((batch, 2), size))
        pixels = camera.project(self.body(**sample.gt).vertices)
        box_center, box_size = jittered_boxes(pixels, aug, seed, indices, variant)
        images = sample.images.permute(0, 3, 1, 2).float() / 255.0
        crops = crop_images(images, box_center, box_size, self.resolution)
        return ReFitBatch(crops, box_center, box_size, camera.focal_length,
                          camera.principal_point, camera.image_size, dict(sample.gt),
                          dict(sample.init))


class FolderReFitBatchMaker:
    """Training batches for ReFit from a dataset folder of images with ground truth
    (``python -m fitkit.train refit --data DIR``): the folder's photos, their ``gt.npz`` bodies
    and cameras, and initial estimates drawn around the truth as the synthetic world draws them
    (:class:`fitkit.train.folder.FolderSamples`); boxes and crops as :class:`ReFitBatchMaker`'s.

    Args:
        samples: the folder; resolution: the network's crop side; augment: crop boxes.
    """

    def __init__(self, samples: FolderSamples, resolution: int,
                 augment: ReFitAugment | None = None) -> None:
        self.samples, self.resolution = samples, resolution
        self.augment = augment or ReFitAugment()
        self._drawn: tuple[tuple[int, tuple[int, ...]], FolderSample] | None = None

    @torch.no_grad()
    def make(self, seed: int, indices: list[int], variant: int = 0) -> ReFitBatch:
        """Draws ``indices`` of a run seeded ``seed`` (each row once per epoch), cropped with
        jitter ``variant`` (the draws are kept for the next call with the same indices)."""
        key = (seed, tuple(indices))
        if self._drawn is None or self._drawn[0] != key:
            self._drawn = (key, self.samples.draw(seed, indices))
        sample = self._drawn[1]
        pixels = sample.camera.project(sample.gt_output.vertices)
        box_center, box_size = jittered_boxes(pixels, self.augment, seed, indices, variant)
        crops = sample.crops(box_center, box_size, self.resolution)
        camera = sample.camera
        return ReFitBatch(crops, box_center, box_size, camera.focal_length,
                          camera.principal_point, camera.image_size, dict(sample.gt),
                          dict(sample.init))


def jittered_boxes(pixels: Tensor, augment: ReFitAugment, seed: int, indices: list[int],
                   variant: int) -> tuple[Tensor, Tensor]:
    """Square crop boxes around projected bodies with a random fill and centre shift
    (:class:`ReFitAugment`), each sample's from its own generator.

    Args:
        pixels: ``(B, V, 2)`` projected vertices; indices: the B samples' indices.
    Returns:
        ``(B, 2)`` box centres and ``(B,)`` box sides, image pixels.
    """
    low, high = pixels.amin(dim=1), pixels.amax(dim=1)
    jitter = torch.stack([
        torch.rand(3, generator=seed_stream(seed, index, CROP_STREAM, variant))
        for index in indices])  # (B, 3) uniforms
    fill = augment.fill[0] + (augment.fill[1] - augment.fill[0]) * jitter[:, 0]
    box_size = (high - low).amax(dim=-1) / fill
    shift = (2.0 * jitter[:, 1:] - 1.0) * augment.shift
    return 0.5 * (low + high) + shift * box_size[:, None], box_size


class _StepBatches(torch.utils.data.Dataset):
    """Training batch ``step`` of a run, for a DataLoader (one item is a whole batch): samples
    ``c * B ... c * B + B - 1`` with ``c = step // reuse``, cropped with jitter
    ``step % reuse``."""

    def __init__(self, maker: ReFitBatchMaker | FolderReFitBatchMaker, seed: int,
                 batch_size: int, reuse: int) -> None:
        self.maker, self.seed, self.batch_size, self.reuse = maker, seed, batch_size, reuse

    def __getitem__(self, step: int) -> ReFitBatch:
        start = step // self.reuse * self.batch_size
        return self.maker.make(self.seed, list(range(start, start + self.batch_size)),
                               step % self.reuse)


def _as_is(batch: ReFitBatch) -> ReFitBatch:
    return batch


def batch_target(batch: ReFitBatch, body: BodyModel) -> ReFitTarget:
    """The true joints (camera frame), rotations and betas of a batch."""
    gt = batch.gt
    joints = body(**gt, vertex_ids=gt["betas"].new_zeros(0, dtype=torch.long)).joints
    rotations = torch.cat([gt["global_orient"], gt["body_pose"]], dim=-1).unflatten(-1, (-1, 3))
    return ReFitTarget(joints, axis_angle_to_matrix(rotations), gt["betas"])


def validation_set(maker: ReFitBatchMaker, size: int, batch_size: int) -> list[ReFitBatch]:
    """The fixed held-out samples ``VALIDATION_START ...`` (world seed 0), in batches."""
    indices = list(range(VALIDATION_START, VALIDATION_START + size))
    return [maker.make(0, indices[i:i + batch_size]) for i in range(0, size, batch_size)]


@torch.no_grad()
def evaluate(net: ReFit, body: BodyModel, batches: list[ReFitBatch],
             device: torch.device | str) -> tuple[float, float, float, float]:
    """Pelvis-aligned MPJPE (mm) over ``batches`` of ``Θ_0`` and ``Θ_T`` from the network's own
    guess, then of the batches' initial estimates and of ``Θ_T`` started from them."""
    was_training = net.training
    net.eval()
    errors: list[list[float]] = [[], [], [], []]
    for batch in batches:
        batch = batch.to(device)
        target = batch_target(batch, body)
        true = target.joints - target.joints[:, :1]
        own = net(batch.images, batch.crop, body)
        started = net(batch.images, batch.crop, body, init=batch.init)
        for slot, estimate in enumerate((own[0], own[-1], started[0], started[-1])):
            joints = estimate.joints - estimate.joints[:, :1]
            errors[slot] += (joints - true).norm(dim=-1).mean(dim=-1).mul(1000).tolist()
    net.train(was_training)
    return tuple(sum(e) / max(len(e), 1) for e in errors)  # type: ignore[return-value]


def starts_from_init(step: int, fraction: float) -> bool:
    """Whether training step ``step`` (from 1) starts the loop from the batch's initial
    estimates: exactly a ``fraction`` of the steps, spread evenly, the same on resume."""
    return math.floor(step * fraction) > math.floor((step - 1) * fraction)


def train_refit(
    out: Path,
    config: ReFitConfig | None = None,
    steps: int = 2000,
    batch_size: int = 24,
    lr: float = 1e-4,
    seed: int = 1,
    device: str = "cpu",
    resume: bool = False,
    checkpoint_every: int = 100,
    val_every: int = 250,
    val_size: int = 48,
    workers: int = 0,
    body: BodyModel | str = "open",
    augment: ReFitAugment | None = None,
    weights: LossWeights | None = None,
    progress: bool = True,
    schedule: str = "constant",
    reuse: int = 1,
    init_fraction: float = 0.0,
    data: str | os.PathLike | None = None,
) -> ReFit:
    """Train ReFit with Adam on on-the-fly batches (see the module doc).

    Args:
        out: checkpoint path (written every ``checkpoint_every`` steps and at the end).
        config: network size (default ``REFIT_CONFIGS["cpu"]``); on resume, the checkpoint's.
        steps: total optimization steps.
        batch_size, lr: Adam settings.
        seed: seed of the training samples, of the network's initialization and of the dropout
            masks (use one that evaluation datasets do not).
        device: where the network trains (batches are made on the CPU).
        resume: continue from ``out`` with the run's own settings.
        checkpoint_every: steps between checkpoints.
        val_every: steps between validations (0: only at the end).
        val_size: held-out samples.
        workers: DataLoader processes making batches (0: in the training process).
        body: the body model, or what :func:`fitkit.body.load_body` takes.
        augment: crop boxes and world size.
        weights: loss weights and gamma.
        progress: show a tqdm bar and validation lines.
        schedule: ``"constant"`` or ``"cosine"`` learning rate (:func:`learning_rate`).
        reuse: consecutive steps that share their rendered samples (each with its own crop
            jitter and dropout masks): rendering costs more than a step on a CPU.
        init_fraction: the share of steps whose loop starts from the synthetic world's initial
            estimates (perturbed like a regressor's output) instead of the network's own guess,
            so that the loop learns to refine the starts ``fit(data_term="refit", init=...)``
            gives it; the other steps train the guess. 0 (default): seed 001's training.
        data: a dataset folder of images with ground truth (``gt.npz``, ``docs/formats.md``)
            to train on instead of the synthetic world (:class:`FolderReFitBatchMaker`; e.g.
            real photos, to fine-tune a network with ``resume``-free fresh runs); validation
            stays on the synthetic world's held-out samples.
    Returns:
        The trained network (eval mode).
    Raises:
        ValueError: a count, rate or setting that would not train, a device this machine
            lacks, a checkpoint that cannot be resumed with these settings.
        RunError: another trainer writes ``out``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    check_positive(steps=steps, batch_size=batch_size, lr=lr,
                   checkpoint_every=checkpoint_every, reuse=reuse)
    check_non_negative(val_every=val_every, val_size=val_size, workers=workers)
    if not 0.0 <= init_fraction <= 1.0:
        raise ValueError(f"init_fraction must be in [0, 1], got {init_fraction!r}")
    check_device(device)
    augment = augment or ReFitAugment()
    weights = weights or LossWeights()
    if not isinstance(body, BodyModel):
        body = load_body(body)
    settings = {"seed": seed, "batch_size": batch_size, "lr": lr, "schedule": schedule,
                "reuse": reuse,
                "augment": dataclasses.asdict(augment), "weights": dataclasses.asdict(weights),
                "body": file_digest(body.source) if Path(body.source).is_file() else body.source}
    if schedule != "constant":
        settings["steps"] = steps
    if init_fraction:  # (absent when 0: runs from before the setting resume as they were)
        settings["init_fraction"] = init_fraction
    samples = None
    if data is not None:  # the folder's content joins the settings a resume must repeat
        samples = FolderSamples(data, body)
        settings["data"] = {"folder": str(Path(data).resolve()), **samples.digest()}
    out = Path(out)
    with output_lock(out):
        state = None
        if resume:
            state, config = read_resume_state(out, REFIT_KIND, settings, config, steps)
        config = config or REFIT_CONFIGS["cpu"]
        if config.keypoints == "markers" and body.marker_ids is not None \
                and len(body.marker_ids) != config.num_keypoints:
            raise ValueError(f"config: num_keypoints={config.num_keypoints}, but body "
                             f"{body.source} has {len(body.marker_ids)} markers")

        torch.manual_seed(seed)
        body = body.to(device)
        net = ReFit(config).to(device)
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        start, history = restore_training(state, net, optimizer)

        maker = ReFitBatchMaker(body.cpu(), config.image_size, augment)
        training = maker if samples is None else FolderReFitBatchMaker(
            samples, config.image_size, augment)
        body = body.to(device)
        validation = validation_set(maker, val_size, batch_size) if val_size > 0 else []
        loader = torch.utils.data.DataLoader(
            _StepBatches(training, seed, batch_size, reuse), batch_size=None,
            sampler=range(start, steps), num_workers=workers, collate_fn=_as_is,
            generator=torch.Generator())  # leaves the global generator to the dropout masks

        def save(step: int) -> None:
            save_network(out, net, REFIT_KIND, training={
                "step": step, "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
                "settings": settings, "history": history, "body": str(body.source)})

        net.train()
        bar = tqdm(loader, initial=start, total=steps, desc="refit training",
                   disable=not progress)
        step = start
        for step, batch in enumerate(bar, start=start + 1):
            batch = batch.to(device)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(lr, step - 1, steps, schedule)
            crop = batch.crop
            init = batch.init if starts_from_init(step, init_fraction) else None
            estimates = net(batch.images, crop, body, init=init)
            loss, terms = refit_loss(estimates, batch_target(batch, body), crop, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), CLIP_NORM)
            optimizer.step()
            if step % 10 == 0 or step == steps:
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}",
                                j3d=f"{float(terms['joints3d']) ** 0.5 * 1000:.0f}mm")
            if validation and ((val_every and step % val_every == 0) or step == steps):
                first, last, init_first, init_last = evaluate(net, body, validation, device)
                history.append({"step": step, "val_mpjpe_t0": first, "val_mpjpe": last,
                                "val_init_mpjpe": init_first, "val_from_init_mpjpe": init_last})
                if progress:
                    tqdm.write(f"step {step}: validation MPJPE {last:.1f} mm at T="
                               f"{config.iterations} ({first:.1f} mm at T=0); from the "
                               f"initial estimates {init_first:.1f} -> {init_last:.1f} mm")
            if step % checkpoint_every == 0 or step == steps:
                save(step)
        if step == start:
            save(step)
        return net.eval()


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="checkpoint path (.pt)")
    parser.add_argument("--size", type=size_type(REFIT_CONFIGS), default=REFIT_CONFIGS["cpu"],
                        help=f"network size: {', '.join(REFIT_CONFIGS)} (default cpu)")
    parser.add_argument("--image-size", type=int, help="override the size's crop side")
    parser.add_argument("--keypoints", choices=KEYPOINT_TYPES,
                        help="feedback keypoints: smpl24 (the joints), markers (the body's "
                        f"mocap markers) or sampled ({SAMPLED_VERTICES} vertices spread over "
                        "the body) (default: the size's)")
    parser.add_argument("--feedback-dropout", type=float,
                        help="probability of dropping a keypoint's feedback (default 0.25)")
    parser.add_argument("--iterations", type=int, help="T in training (default 5)")
    parser.add_argument("--steps", type=int, default=2000, help="total steps (default 2000)")
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate")
    parser.add_argument("--schedule", choices=SCHEDULES, default="constant",
                        help="learning-rate schedule (cosine: annealed to 0 over --steps)")
    parser.add_argument("--seed", type=int, default=1,
                        help="training-sample seed (default 1; keep it apart from evaluation "
                             "datasets' seeds)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=0, help="batch-making processes")
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--val-every", type=int, default=250)
    parser.add_argument("--val-size", type=int, default=48, help="held-out samples")
    parser.add_argument("--world-size", type=int, default=96,
                        help="side of the synthetic full images (default 96)")
    parser.add_argument("--reuse", type=int, default=1,
                        help="consecutive steps sharing rendered samples, each with its own "
                             "crops (default 1)")
    parser.add_argument("--data", type=Path, metavar="DIR",
                        help="train on a dataset folder of images with gt.npz (e.g. real "
                        "photos) instead of the synthetic world")
    parser.add_argument("--init-fraction", type=float, default=0.0, metavar="F",
                        help="share of steps whose loop starts from the synthetic world's "
                        "initial estimates (regressor-like) instead of the network's guess "
                        "(default 0)")
    parser.add_argument("--betas-weight", type=float, metavar="W",
                        help="weight of the shape coefficients' squared error in the loss "
                        f"(default {LossWeights.betas}, the public code's)")
    parser.add_argument("--body", default="open", help="body model: 'open' or a path")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint at --out")


def _run(args: argparse.Namespace) -> None:
    body = load_body(args.body)
    overrides = {"image_size": args.image_size, "keypoints": args.keypoints,
                 "feedback_dropout": args.feedback_dropout, "iterations": args.iterations}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides.get("keypoints", args.size.keypoints) == "markers":
        if body.marker_ids is None:
            raise ValueError(f"body {body.source} has no markers; use --keypoints smpl24")
        overrides["num_keypoints"] = len(body.marker_ids)
    elif overrides.get("keypoints") == "sampled":
        overrides["num_keypoints"] = SAMPLED_VERTICES
    elif "keypoints" in overrides:
        overrides["num_keypoints"] = 24
    config = dataclasses.replace(args.size, **overrides)
    augment = ReFitAugment(world_size=args.world_size)
    weights = LossWeights()
    if args.betas_weight is not None:
        if not args.betas_weight >= 0:
            raise ValueError(f"--betas-weight must be >= 0, got {args.betas_weight}")
        weights = dataclasses.replace(weights, betas=args.betas_weight)
    train_refit(args.out, config, args.steps, args.batch_size,
                args.lr, args.seed, args.device, args.resume, args.checkpoint_every,
                args.val_every, args.val_size, args.workers, body, augment, weights=weights,
                schedule=args.schedule, reuse=args.reuse, init_fraction=args.init_fraction,
                data=args.data)


register_command(Command(
    "refit", "train ReFit (seed 001) on synthetic batches made on the fly", _configure, _run))
