"""Training the displacement network (seed 003) on batches made on the fly.

Each training sample comes from the synthetic world (:class:`fitkit.synth.SynthWorld`): the true
body rendered into an image with its clothing texture, lighting and background, and an initial
estimate perturbed like a regressor's (:mod:`fitkit.synth.init`). As in seed 003's appendix, with
probability ``gt_pose`` the initial estimate keeps the true pose and only its shape and camera
(translation) are perturbed, to focus on fine displacements. The initial mesh is rendered with the
subject's texture, augmented (:class:`FlowAugment`: channel-wise noise, pixel noise and blur on
the texture, channel-wise noise, brightness and contrast on the image), and the targets are the
per-pixel displacements of Eq. 1-2 (:func:`fitkit.render.displacement_field`).

Determinism and resume: training batch ``step`` holds samples ``step * B ... step * B + B - 1`` of
the world seeded with ``seed``; its augmentations come from their own per-sample generators, so a
batch depends on ``(seed, step)`` alone, whatever the number of loader workers. The checkpoint at
``--out`` is a normal network checkpoint (:func:`fitkit.nets.load_flownet` reads it) that also
carries the training state (optimizer, step, RNG, settings, validation history), written atomically
every ``checkpoint_every`` steps; ``resume=True`` continues from it, so a resumed CPU run ends with
the same weights as an uninterrupted one (on CUDA, up to non-deterministic kernels). A resume must
repeat every setting that changes the weights: network config, seed, batch size, learning rate,
augmentations, schedule, ``amp`` and the body file's content, and with the cosine schedule
``steps`` (a constant rate may be extended to more steps; never fewer than done). The device,
loader workers and validation settings may change. A run holds ``OUT.lock`` beside its
checkpoint (:func:`fitkit.train.output_lock`), so a second trainer on the same output is refused.
The held-out validation set is fixed (samples from :data:`VALIDATION_START` on, world seed 0),
so validation figures of different runs compare; each evaluation also reports the
zero-displacement baseline (the initial mesh as it is).

Training on real images (``--data DIR``, ``docs/train_on_real.md``): batches come from a dataset
folder with ground truth (:class:`fitkit.train.folder.FolderSamples`) through
:class:`FolderBatchMaker`: the photo in place of the synthetic render, the initial estimate
perturbed around the true body as the synthetic world perturbs its own, the same ``gt_pose``
mixture and augmentations, the crop the predictor takes at test time (a box around the initial
mesh's projection, :func:`fitkit.geometry.crop_boxes`) and the exact field between the initial and
the true mesh in that crop. A network with texture input gets the texture back-projected from the
crop at the true body (:func:`fitkit.render.estimate_texture`). ``data_mix`` of every batch
(rounded to whole samples) still comes from the synthetic world. ``init_from`` starts from a
trained network (a shipped name or a checkpoint) of the same config, to fine-tune it. The folder's
content (``gt.npz``, its images, ``init.npz`` when used), the mix, the initial-estimate noise and
the starting network's content join the settings a resume must repeat; ``val_data`` validates on
another folder instead of the synthetic validation set.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from fitkit.body.model import BodyModel, BodyOutput, load_body
from fitkit.geometry.camera import Camera
from fitkit.geometry.crop import crop_boxes, crop_camera
from fitkit.io.runs import check_device, file_digest
from fitkit.nets import (
    FLOWNET_CONFIGS,
    FlowNet,
    FlowNetConfig,
    flow_loss,
    masked_epe,
    read_checkpoint,
    render_inputs,
    save_flownet,
)
from fitkit.nets.checkpoint import FLOWNET_KIND, CheckpointError, config_from_dict
from fitkit.nets.predict import flownet_path
from fitkit.render import displacement_field, estimate_texture
from fitkit.synth import SynthConfig, SynthWorld
from fitkit.synth.init import InitNoise
from fitkit.train import (
    Command,
    check_non_negative,
    check_positive,
    output_lock,
    register_command,
    restore_training,
    settings_mismatch,
    size_type,
)
from fitkit.train.folder import FolderSamples

VALIDATION_START = 1 << 40
"""Index of the first validation sample (training indices stay below it)."""


@dataclass
class FlowAugment:
    """Initial-estimate mixture and augmentations (seed 003, appendix).

    Attributes:
        gt_pose: probability that the initial estimate keeps the true pose (global orientation
            and body pose), with only shape and translation perturbed.
        image_channel_noise: each image channel is scaled by ``U(1 - x, 1 + x)`` (SPIN's
            channel-wise pixel noise).
        brightness: ``U(-x, x)`` added to the image.
        contrast: the image's deviation from its mean grey is scaled by ``U(1 - x, 1 + x)``.
        texture_channel_noise: channel-wise noise on the texture, as on the image.
        texture_noise: the texture gets per-texel Gaussian noise of sigma ``U(0, x)``.
        texture_blur: the texture is blurred by down- and upsampling with a factor drawn from
            the powers of two up to ``x`` (back-projected textures are blurry).
    """

    gt_pose: float = 0.25
    image_channel_noise: float = 0.2
    brightness: float = 0.1
    contrast: float = 0.2
    texture_channel_noise: float = 0.2
    texture_noise: float = 0.05
    texture_blur: int = 4


@dataclass
class FlowBatch:
    """One batch of network inputs and targets.

    Attributes:
        image: ``(B, 3, H, W)`` RGB in [0, 1].
        renders: ``(B, C, H, W)`` normalized renders of the initial mesh.
        mask: ``(B, H, W)`` bool, its covered pixels.
        target: ``(B, 2, H, W)`` true displacements (pixels), 0 off the mask.
    """

    image: Tensor
    renders: Tensor
    mask: Tensor
    target: Tensor

    def to(self, device: torch.device | str) -> FlowBatch:
        """The batch on ``device``."""
        return FlowBatch(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))

    @staticmethod
    def cat(batches: list[FlowBatch]) -> FlowBatch:
        """One batch of the samples of ``batches``, in order."""
        return FlowBatch(*(torch.cat([getattr(b, f.name) for b in batches])
                           for f in dataclasses.fields(FlowBatch)))


SYNTHETIC_STREAM, FOLDER_STREAM = 1, 2
"""Keys of the augmentation generators of synthetic and of folder samples."""


def _generator(seed: int, index: int, stream: int = SYNTHETIC_STREAM) -> torch.Generator:
    """The augmentation generator of sample ``index`` (a stream apart from the samples')."""
    state = np.random.SeedSequence([seed, index, stream]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _uniform(generator: torch.Generator, spread: float, *shape: int) -> Tensor:
    """``U(-spread, spread)`` of the given shape."""
    return (2.0 * torch.rand(*shape, generator=generator) - 1.0) * spread


class _BatchMaker:
    """What the synthetic and the folder batch makers share: the body, the network's config,
    the augmentations, and the assembly of a batch from images, textures and meshes.

    Args:
        body: the body model.
        config: the network's config (image size, texture input).
        augment: initial-estimate mixture and augmentations.
    """

    def __init__(self, body: BodyModel, config: FlowNetConfig,
                 augment: FlowAugment | None = None) -> None:
        self.body = body
        self.config = config
        self.augment = augment or FlowAugment()
        with torch.no_grad():
            self.rest = body().vertices[0]

    def _keep_pose(self, generators: list[torch.Generator]) -> Tensor:
        """``(B,)`` bool: the samples whose initial estimate keeps the true pose (each
        generator's first draw)."""
        return torch.stack([torch.rand((), generator=g) < self.augment.gt_pose
                            for g in generators])

    def _assemble(self, images: Tensor, textures: Tensor | None, vertices_gt: Tensor,
                  vertices_init: Tensor, camera: Camera,
                  generators: list[torch.Generator]) -> FlowBatch:
        """The batch of images and meshes seen by ``camera``.

        Args:
            images: ``(B, 3, S, S)`` RGB in [0, 1], before augmentation.
            textures: ``(B, 3, T, T)`` RGB in [0, 1] before augmentation, or ``None`` for a
                network without texture input.
            vertices_gt, vertices_init: ``(B, V, 3)`` the true and the initial mesh.
            camera: the B cameras of the images.
            generators: one per sample, drawn on: textures first, then images.
        """
        if textures is not None:
            textures = torch.stack([self._augment_texture(t, g)
                                    for t, g in zip(textures, generators, strict=True)])
        renders = render_inputs(vertices_init, self.body.faces, camera, self.rest, textures,
                                self.body.uv)
        target = displacement_field(vertices_gt, vertices_init, self.body.faces, camera,
                                    renders.fragments)
        images = torch.stack([self._augment_image(i, g)
                              for i, g in zip(images, generators, strict=True)])
        return FlowBatch(images, renders.channels, renders.mask, target)

    def _augment_image(self, image: Tensor, generator: torch.Generator) -> Tensor:
        """``(3, H, W)`` -> ``(3, H, W)``: channel-wise noise, contrast, brightness."""
        aug = self.augment
        image = image * (1.0 + _uniform(generator, aug.image_channel_noise, 3, 1, 1))
        grey = image.mean()
        image = grey + (image - grey) * (1.0 + _uniform(generator, aug.contrast, 1))
        return (image + _uniform(generator, aug.brightness, 1)).clamp(0.0, 1.0)

    def _augment_texture(self, texture: Tensor, generator: torch.Generator) -> Tensor:
        """``(3, S, S)`` -> ``(3, S, S)``: blur, channel-wise noise, per-texel noise."""
        aug = self.augment
        levels = int(math.log2(max(aug.texture_blur, 1))) + 1
        factor = 2 ** int(torch.randint(levels, (1,), generator=generator))
        if factor > 1:
            size = texture.shape[-1]
            small = F.interpolate(texture[None], scale_factor=1.0 / factor, mode="area")
            texture = F.interpolate(small, size=(size, size), mode="bilinear",
                                    align_corners=False)[0]
        texture = texture * (1.0 + _uniform(generator, aug.texture_channel_noise, 3, 1, 1))
        sigma = aug.texture_noise * float(torch.rand((), generator=generator))
        noise = torch.randn(texture.shape, generator=generator)
        return (texture + sigma * noise).clamp(0.0, 1.0)


class FlowBatchMaker(_BatchMaker):
    """Training batches from the synthetic world, made on the fly (see the module doc).

    Args:
        body: the body model (with UVs and DensePose labels, as the synthetic world needs).
        config: the network's config (image size, texture input).
        augment: initial-estimate mixture and augmentations.
    """

    def __init__(self, body: BodyModel, config: FlowNetConfig,
                 augment: FlowAugment | None = None) -> None:
        super().__init__(body, config, augment)
        size = config.image_size
        self.world = SynthWorld(body, SynthConfig(size=size, keypoint_noise="none",
                                                  texture_size=size))

    @torch.no_grad()
    def make(self, seed: int, indices: list[int]) -> FlowBatch:
        """The batch of samples ``indices`` of the world seeded with ``seed``."""
        sample = self.world.generate(seed, indices)
        generators = [_generator(seed, index) for index in indices]
        batch, size = len(indices), self.config.image_size
        keep = self._keep_pose(generators)
        init = dict(sample.init)
        for key in ("global_orient", "body_pose"):
            init[key] = torch.where(keep[:, None], sample.gt[key], init[key])
        camera = Camera(sample.focal_length, sample.camera_center,
                        torch.full((batch, 2), float(size)))
        textures = (sample.textures.permute(0, 3, 1, 2).float() / 255.0
                    if self.config.texture else None)
        return self._assemble(sample.images.permute(0, 3, 1, 2).float() / 255.0, textures,
                              self.body(**sample.gt).vertices, self.body(**init).vertices,
                              camera, generators)


class FolderBatchMaker(_BatchMaker):
    """Training batches from a dataset folder of images with ground truth (see the module doc).

    A batch of draws ``indices`` (:meth:`FolderSamples.draw`) is cropped as
    :class:`fitkit.nets.predict.FlowPredictor` crops at test time: a square box around the
    projection of the initial mesh, kept inside the image where it can be, resampled to the
    network's image size; the renders and the exact field live in that crop. With texture
    input, each sample's texture is back-projected from its crop at the true body.

    Args:
        samples: the folder.
        config: the network's config (image size, texture input).
        augment: initial-estimate mixture and augmentations.
    Raises:
        ValueError: a network with texture input and a body without UVs.
    """

    def __init__(self, samples: FolderSamples, config: FlowNetConfig,
                 augment: FlowAugment | None = None) -> None:
        super().__init__(samples.body, config, augment)
        if config.texture and samples.body.uv is None:
            raise ValueError(f"this network takes a texture, and body model "
                             f"{samples.body.source} has no UVs to map one with")
        self.samples = samples

    @torch.no_grad()
    def make(self, seed: int, indices: list[int]) -> FlowBatch:
        """The batch of draws ``indices`` of the folder for a run seeded ``seed``."""
        generators = [_generator(seed, index, FOLDER_STREAM) for index in indices]
        sample = self.samples.draw(seed, indices, keep_pose=self._keep_pose(generators))
        size = self.config.image_size
        pixels = sample.camera.project(sample.init_output.vertices)
        box_center, box_size = crop_boxes(pixels, image_size=sample.camera.image_size)
        camera = crop_camera(sample.camera, box_center, box_size, size)
        images = sample.crops(box_center, box_size, size)
        vertices_gt = sample.gt_output.vertices
        textures = None
        if self.config.texture:
            textures = torch.stack([
                estimate_texture(images[i:i + 1], self.body,
                                 BodyOutput(vertices_gt[i:i + 1], sample.gt_output.joints[i:i + 1],
                                            sample.gt_output.selector),
                                 camera[i], size=size).texture
                for i in range(len(indices))])
        return self._assemble(images, textures, vertices_gt, sample.init_output.vertices, camera,
                              generators)


def synthetic_count(batch_size: int, data_mix: float) -> int:
    """The synthetic samples of a batch of ``batch_size`` with a fraction ``data_mix`` from the
    synthetic world (rounded half up; the rest come from the folder)."""
    return math.floor(data_mix * batch_size + 0.5)


class _StepBatches(torch.utils.data.Dataset):
    """Training batch ``step`` of a run, for a DataLoader (one item is a whole batch): its
    synthetic samples ``step * n ... step * n + n - 1`` (``n`` of them), then its folder draws
    numbered the same way."""

    def __init__(self, synthetic: FlowBatchMaker | None, folder: FolderBatchMaker | None,
                 seed: int, batch_size: int, data_mix: float) -> None:
        self.synthetic, self.folder, self.seed = synthetic, folder, seed
        self.counts = [synthetic_count(batch_size, data_mix)]
        self.counts.append(batch_size - self.counts[0])

    def __getitem__(self, step: int) -> FlowBatch:
        parts = [maker.make(self.seed, list(range(step * count, step * count + count)))
                 for maker, count in zip((self.synthetic, self.folder), self.counts, strict=True)
                 if count]
        return parts[0] if len(parts) == 1 else FlowBatch.cat(parts)


def _as_is(batch: FlowBatch) -> FlowBatch:
    return batch


def validation_set(maker: FlowBatchMaker | FolderBatchMaker, size: int, batch_size: int
                   ) -> list[FlowBatch]:
    """The fixed held-out samples ``VALIDATION_START ...`` (seed 0) of a synthetic world or a
    folder, in batches."""
    indices = list(range(VALIDATION_START, VALIDATION_START + size))
    return [maker.make(0, indices[i:i + batch_size]) for i in range(0, size, batch_size)]


@torch.no_grad()
def evaluate(net: FlowNet, batches: list[FlowBatch], device: torch.device | str
             ) -> tuple[float, float]:
    """End-point error of the final stack over the covered pixels of ``batches`` (pooled), and
    that of the zero displacement (the initial mesh as it is), in pixels."""
    was_training = net.training
    net.eval()
    total = baseline = pixels = 0.0
    for batch in batches:
        batch = batch.to(device)
        prediction = net(batch.image, batch.renders)[-1].float()
        count = float(batch.mask.sum())
        total += float(masked_epe(prediction, batch.target, batch.mask)) * count
        baseline += float(masked_epe(torch.zeros_like(prediction), batch.target,
                                     batch.mask)) * count
        pixels += count
    net.train(was_training)
    return total / max(pixels, 1.0), baseline / max(pixels, 1.0)


SCHEDULES = ("constant", "cosine")
"""Learning-rate schedules of :func:`train_flow`."""


def learning_rate(lr: float, step: int, steps: int, schedule: str) -> float:
    """The learning rate of optimization step ``step`` (0-based) of ``steps``.

    Args:
        lr: the base (largest) rate.
        step, steps: the step and the run's total.
        schedule: one of :data:`SCHEDULES`.
    """
    if schedule == "cosine":
        return 0.5 * lr * (1.0 + math.cos(math.pi * min(step, steps) / max(steps, 1)))
    return lr


def train_flow(
    out: Path,
    config: FlowNetConfig | None = None,
    steps: int = 20_000,
    batch_size: int = 8,
    lr: float = 2.5e-4,
    seed: int = 0,
    device: str = "cpu",
    resume: bool = False,
    checkpoint_every: int = 500,
    val_every: int = 500,
    val_size: int = 32,
    workers: int = 0,
    amp: bool = False,
    body: BodyModel | str = "open",
    augment: FlowAugment | None = None,
    progress: bool = True,
    schedule: str = "constant",
    data: str | os.PathLike | None = None,
    data_mix: float | None = None,
    init_from: str | os.PathLike | None = None,
    file_init: float = 0.0,
    init_noise: InitNoise | None = None,
    val_data: str | os.PathLike | None = None,
) -> FlowNet:
    """Train a displacement network with Adam on on-the-fly batches (see the module doc).

    Args:
        out: checkpoint path (written every ``checkpoint_every`` steps and at the end).
        config: network size (default ``FLOWNET_CONFIGS["small"]``); on resume, the checkpoint's.
        steps: total optimization steps.
        batch_size, lr: Adam settings (constant learning rate).
        seed: seed of the training samples and of the network's initialization.
        device: where the network trains (batches are made on the CPU).
        resume: continue from ``out`` (it must exist and match the settings the module doc
            lists: run the same command again with ``resume``).
        checkpoint_every: steps between checkpoints.
        val_every: steps between validations (0: only at the end).
        val_size: held-out samples.
        workers: DataLoader processes making batches (0: in the training process).
        amp: bfloat16 autocast for the network's forward pass (for CUDA).
        body: the body model, or what :func:`fitkit.body.load_body` takes (default the open
            body).
        augment: initial-estimate mixture and augmentations.
        progress: show a tqdm bar and validation lines.
        schedule: ``"constant"`` learning rate, or ``"cosine"``: ``lr`` annealed to 0 over
            ``steps`` (a function of the step alone, so resume needs no scheduler state).
        data: a dataset folder with ground truth to train on (:class:`FolderBatchMaker`).
        data_mix: the fraction of each batch from the synthetic world (default 0 with
            ``data``; without ``data`` every sample is synthetic).
        init_from: start from this network (a shipped name, ``"open"`` or
            ``"open-notexture"``, or a checkpoint path) instead of random weights; ``config``,
            when given, must equal its config (default: its config).
        file_init: with ``data``, the probability that a folder sample starts from its row of
            the folder's ``init.npz`` (:class:`fitkit.train.folder.FolderSamples`).
        init_noise: with ``data``, the perturbation of the folder samples' initial estimates
            (default the synthetic world's).
        val_data: a dataset folder with ground truth to validate on (its first ``val_size``
            draws, seed 0) instead of the synthetic validation set.
    Returns:
        The trained network (eval mode).
    Raises:
        ValueError: a count, step number or rate that is not positive and finite, a fraction
            outside [0, 1], ``data_mix`` or ``file_init`` without ``data``, a device this
            machine lacks, a checkpoint that cannot be resumed with these settings, an
            ``init_from`` network of another config;
            :class:`fitkit.io.dataset.DatasetError` (a ``ValueError``) for a folder that
            cannot be trained on (named file, key and row).
        FileNotFoundError: no ``init_from`` network.
        RunError: another trainer writes ``out``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    check_positive(steps=steps, batch_size=batch_size, lr=lr,
                   checkpoint_every=checkpoint_every)
    check_non_negative(val_every=val_every, val_size=val_size, workers=workers)
    if config is not None:
        check_positive(image_size=config.image_size, width=config.width, stacks=config.stacks)
    check_device(device)
    if data is None and (data_mix is not None or file_init):
        raise ValueError("data_mix and file_init choose among the samples of a data folder: "
                         "give one (--data DIR)")
    data_mix = 0.0 if data_mix is None else data_mix
    if not 0.0 <= data_mix <= 1.0:
        raise ValueError(f"data_mix must lie in [0, 1], got {data_mix!r}")
    augment = augment or FlowAugment()
    if not isinstance(body, BodyModel):
        body = load_body(body)
    settings = {"seed": seed, "batch_size": batch_size, "lr": lr,
                "augment": dataclasses.asdict(augment), "amp": amp,
                "body": file_digest(body.source) if Path(body.source).is_file() else body.source}
    if schedule != "constant":  # older checkpoints have no such field: they ran constant
        settings["schedule"] = schedule
        settings["steps"] = steps  # the decay spans the run; a constant rate may be extended
    samples = None
    if data is not None:  # older checkpoints have no such fields: they trained on synthetic data
        samples = FolderSamples(data, body, init_noise, file_init)
        settings.update(data=samples.digest(), data_mix=data_mix, file_init=file_init,
                        init_noise=dataclasses.asdict(samples.init_noise))
    else:
        data_mix = 1.0
    validation_samples = None
    if val_data is not None and val_size > 0:
        validation_samples = FolderSamples(val_data, body, init_noise)
    init_path = start_weights = start_config = None  # the network to fine-tune
    if init_from is not None:
        init_path = flownet_path(init_from)
        settings["init_from"] = file_digest(init_path)
        start_state = read_checkpoint(init_path, FLOWNET_KIND)
        start_weights = start_state["model"]
        start_config = config_from_dict(start_state["config"], f"{init_path}: field 'config'")
        if config is not None and config != start_config:
            differ = "; ".join(
                f"{f.name}: checkpoint {getattr(start_config, f.name)!r}, given "
                f"{getattr(config, f.name)!r}" for f in dataclasses.fields(config)
                if getattr(start_config, f.name) != getattr(config, f.name))
            raise ValueError(f"init_from {init_path}: the network to start from has another "
                             f"config ({differ}); give its config or none")
    out = Path(out)
    with output_lock(out):
        state = None
        if resume:
            if not Path(out).is_file():
                raise FileNotFoundError(f"--resume: no checkpoint at {out}")
            state = read_checkpoint(out, FLOWNET_KIND)
            if "training" not in state:
                raise CheckpointError(f"{out}: no training state to resume from "
                                      "(field 'training')")
            missing = [field for field in ("step", "settings", "optimizer", "rng", "history")
                       if field not in state["training"]]
            if missing:
                raise CheckpointError(f"{out}: field 'training' lacks {', '.join(missing)}")
            saved = config_from_dict(state["config"], f"{out}: field 'config'")
            mismatch = settings_mismatch(state["training"]["settings"], settings)
            if config is not None and config != saved:
                mismatch.append(f"config: checkpoint {saved}, given {config}")
            if mismatch:
                raise ValueError(f"{out}: resume with the run's own settings "
                                 f"({'; '.join(mismatch)})")
            done = state["training"]["step"]
            if done > steps:
                raise ValueError(f"{out}: the checkpoint is at step {done}, past steps={steps}; "
                                 f"resume with at least {done} steps")
            config = saved
        elif start_config is not None:
            config = start_config
        config = config or FLOWNET_CONFIGS["small"]

        torch.manual_seed(seed)
        net = FlowNet(config).to(device)
        if state is None and start_weights is not None:
            try:
                net.load_state_dict(start_weights)
            except RuntimeError as error:
                raise CheckpointError(f"{init_path}: field 'model' does not fit the saved config "
                                      f"({error})") from error
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        start, history = restore_training(state, net, optimizer)

        needs_world = synthetic_count(batch_size, data_mix) > 0 or (
            val_size > 0 and validation_samples is None)
        synthetic = FlowBatchMaker(body, config, augment) if needs_world else None
        folder = FolderBatchMaker(samples, config, augment) if samples is not None else None
        validation = []
        if val_size > 0:
            validator = (synthetic if validation_samples is None
                         else FolderBatchMaker(validation_samples, config, augment))
            validation = validation_set(validator, val_size, batch_size)
        loader = torch.utils.data.DataLoader(
            _StepBatches(synthetic, folder, seed, batch_size, data_mix), batch_size=None,
            sampler=range(start, steps), num_workers=workers, collate_fn=_as_is)
        autocast = (torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if amp
                    else nullcontext())

        def save(step: int) -> None:
            save_flownet(out, net, training={
                "step": step, "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
                "settings": settings, "history": history, "body": str(body.source)})

        net.train()
        bar = tqdm(loader, initial=start, total=steps, desc="flow training", disable=not progress)
        step = start
        for step, batch in enumerate(bar, start=start + 1):
            batch = batch.to(device)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(lr, step - 1, steps, schedule)
            with autocast:
                predictions = net(batch.image, batch.renders)
            loss = flow_loss(predictions.float(), batch.target, batch.mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step % 10 == 0 or step == steps:
                epe = float(masked_epe(predictions[-1].detach().float(), batch.target,
                                       batch.mask))
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", epe=f"{epe:.2f}px")
            if validation and ((val_every and step % val_every == 0) or step == steps):
                epe, baseline = evaluate(net, validation, device)
                history.append({"step": step, "val_epe": epe, "val_baseline": baseline})
                if progress:
                    tqdm.write(f"step {step}: validation EPE {epe:.3f} px "
                               f"(zero displacement {baseline:.3f} px)")
            if step % checkpoint_every == 0 or step == steps:
                save(step)
        if step == start:
            save(step)
        return net.eval()


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="checkpoint path (.pt)")
    parser.add_argument("--size", type=size_type(FLOWNET_CONFIGS),
                        help=f"network size: {', '.join(FLOWNET_CONFIGS)} (default small, or "
                        "with --init-from that network's)")
    parser.add_argument("--image-size", type=int, help="override the size's image side")
    parser.add_argument("--width", type=int, help="override the size's channel width")
    parser.add_argument("--stacks", type=int, help="override the size's hourglass stacks")
    parser.add_argument("--no-texture", action="store_true",
                        help="train the variant without texture input (seed 003, Table 3)")
    parser.add_argument("--steps", type=int, default=20_000, help="total steps (default 20000)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2.5e-4, help="Adam learning rate")
    parser.add_argument("--schedule", choices=SCHEDULES, default="constant",
                        help="learning-rate schedule (cosine: annealed to 0 over --steps)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA)")
    parser.add_argument("--workers", type=int, default=0, help="batch-making processes")
    parser.add_argument("--checkpoint-every", type=int, default=500)
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument("--val-size", type=int, default=32, help="held-out samples")
    parser.add_argument("--body", default="open", help="body model: 'open' or a path")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint at --out")
    parser.add_argument("--data", metavar="DIR",
                        help="train on a dataset folder with ground truth (images/, gt.npz; "
                        "docs/train_on_real.md)")
    parser.add_argument("--data-mix", type=float, metavar="F",
                        help="fraction of each batch from the synthetic world (default 0 with "
                        "--data)")
    parser.add_argument("--file-init", type=float, default=0.0, metavar="P",
                        help="probability that a folder sample starts from its init.npz row "
                        "instead of a perturbed ground truth (default 0)")
    parser.add_argument("--init-from", metavar="CHECKPOINT",
                        help="fine-tune this network: 'open', 'open-notexture' or a checkpoint "
                        "path (the network config must match)")
    parser.add_argument("--val-data", metavar="DIR",
                        help="validate on this dataset folder instead of synthetic samples")


def _run(args: argparse.Namespace) -> None:
    overrides = {"image_size": args.image_size, "width": args.width, "stacks": args.stacks}
    config = None  # with --init-from and no size given: the starting network's
    if args.init_from is None or args.size or args.no_texture or any(
            value is not None for value in overrides.values()):
        config = dataclasses.replace(
            args.size or FLOWNET_CONFIGS["small"],
            **{k: v for k, v in overrides.items() if v is not None}, texture=not args.no_texture)
    train_flow(args.out, config, args.steps, args.batch_size, args.lr, args.seed, args.device,
               args.resume, args.checkpoint_every, args.val_every, args.val_size, args.workers,
               args.amp, args.body, schedule=args.schedule, data=args.data,
               data_mix=args.data_mix, init_from=args.init_from, file_init=args.file_init,
               val_data=args.val_data)


register_command(Command(
    "flow", "train the displacement network of seed 003 on synthetic batches made on the fly, "
    "or on a dataset folder of real images with ground truth (--data)",
    _configure, _run))
