"""Short sequences of one subject in smooth motion, seen by one static camera
(``python -m fitkit.synth --frames F``).

**Motion.** A sequence draws an activity and two poses of it
(:func:`~fitkit.synth.poses.sample_body_pose` with that activity alone) and moves from the
first towards the second along a smooth curve: at frame f of F, with ``τ = f / (F - 1)`` and
the ease ``e = 3τ² - 2τ³`` (zero velocity at both ends), each joint's swing/twist components
are ``(1 - c e) A + c e B`` (``c = pose_change``;
interpolating components keeps every joint within its limits). The root turns by a yaw drawn
from N(0, ``yaw``) over the sequence and moves by ``e`` times a horizontal displacement of
uniform direction and length up to ``drift`` meters, both along the same ease. Shape, clothing,
camera (focal length, tilt, placement), background and lighting are fixed per sequence; sensor
noise, keypoint noise and the initial estimate (a per-frame regressor's) are drawn per frame.
The camera frames the whole sequence (:func:`fitkit.synth.scene.place_bodies` on the union of
its frames' vertices).

**Random streams.** Sequence s draws from ``sample_generator(seed, s)``: activity, the two poses,
yaw, pitch, roll, the yaw change, the displacement (direction, length), shape, focal length,
placement, clothing, background, lighting; its frame f from ``sample_generator(seed, s, f)``:
sensor noise, keypoint noise, initial-estimate noise. Frames are rendered in chunks of
:data:`~fitkit.synth.dataset.BATCH_SIZE`, sequence by sequence.

**Layout.** A single-view dataset folder (every tool reads it as one) whose rows are the frames,
named ``SEQ_fFFF`` (``000003_f007``: sequence 3, frame 7; the frame number has at least three
digits), in sequence then frame order, ``gt.npz`` and ``init.npz`` in the camera frame, plus
``sequences.npz``: ``image_names`` (N F,), ``sequence`` (N F,) int64, ``frame`` (N F,) int64.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from fitkit.body.model import PARAM_SIZES
from fitkit.geometry.camera import Camera
from fitkit.geometry.rotations import matrix_to_axis_angle
from fitkit.io.dataset import SEQUENCE_FILE
from fitkit.io.runs import atomic_write, npz_bytes, writer_lock
from fitkit.synth import annotate, scene, textures
from fitkit.synth.backgrounds import random_background
from fitkit.synth.config import SynthConfig
from fitkit.synth.dataset import (
    BATCH_SIZE,
    finish_folder,
    is_complete,
    open_world,
    prepare_folder,
    sample_name,
    settings_document,
    write_sample,
)
from fitkit.synth.init import draw_init_noise
from fitkit.synth.poses import (
    ACTIVITIES,
    body_pose_from_components,
    components_from_body_pose,
    sample_body_pose,
)
from fitkit.synth.world import SampleBatch, SynthWorld, sample_generator, stack_draws


@dataclass
class MotionConfig:
    """How much a sequence moves (module docstring).

    Attributes:
        pose_change: the fraction of the way from the first pose to the second one covered.
        yaw: degrees, σ of the root's turn over a sequence.
        drift: meters, the largest displacement of the root over a sequence.
    """

    pose_change: float = 1.0
    yaw: float = 20.0
    drift: float = 0.3

    def __post_init__(self) -> None:
        for name in ("pose_change", "yaw", "drift"):
            if getattr(self, name) < 0:
                raise ValueError(f"motion.{name} must be >= 0, got {getattr(self, name)}")


def frame_name(sequence: int, frame: int, frames: int = 1000) -> str:
    """File stem of frame ``frame`` of sequence ``sequence`` (``000003_f007``), the frame
    number zero-padded to at least three digits (enough for ``frames``)."""
    return f"{sample_name(sequence)}_f{frame:0{max(3, len(str(frames - 1)))}d}"


def ease(frames: int) -> Tensor:
    """``(F,)`` float64: the smooth curve ``3τ² - 2τ³`` at ``τ = f / (F - 1)``, 0 to 1."""
    tau = torch.arange(frames, dtype=torch.float64) / (frames - 1)
    return tau * tau * (3.0 - 2.0 * tau)


def _draw_sequence(world: SynthWorld, generator: torch.Generator) -> dict:
    """A sequence's random numbers, in the module docstring's order."""
    cfg = world.config
    activity = list(ACTIVITIES)[int(torch.randint(len(ACTIVITIES), (), generator=generator))]
    return {
        "poses": sample_body_pose(2, generator, [activity], dtype=torch.float64),
        "yaw": 2.0 * math.pi * torch.rand((), generator=generator, dtype=torch.float64),
        "tilt": torch.randn(2, generator=generator, dtype=torch.float64),
        "turn": torch.randn((), generator=generator, dtype=torch.float64),
        "drift": torch.rand(2, generator=generator, dtype=torch.float64),
        "betas": scene.sample_betas(generator, cfg.scene, PARAM_SIZES["betas"]),
        "focal_length": torch.tensor(
            scene.sample_focal_length(generator, cfg.scene, cfg.size, cfg.size)),
        "placement": scene.sample_placement(generator, cfg.scene),
        "texture": textures.clothing_texture(world.regions, generator),
        "background": random_background(cfg.size, cfg.size, generator),
        "light": torch.rand(9, generator=generator),
    }


def _draw_frame(world: SynthWorld, generator: torch.Generator) -> dict:
    """A frame's random numbers, in the module docstring's order."""
    size = world.config.size
    return {
        "sensor": torch.randn(3, size, size, generator=generator),
        "keypoints": annotate.draw_keypoint_noise(generator),
        "init": draw_init_noise(generator, PARAM_SIZES["betas"]),
    }


def sequence_motion(draws: dict, frames: int, scene_config: scene.SceneConfig,
                    motion: MotionConfig) -> dict[str, Tensor]:
    """Per-frame pose, orientation and root displacement of one sequence.

    Args:
        draws: the sequence's draws (``poses`` (2, 69), ``yaw``, ``tilt`` (2,), ``turn``,
            ``drift`` (2,)).
        frames: F.
    Returns:
        ``body_pose`` (F, 69), ``global_orient`` (F, 3) (camera frame), ``displacement``
        (F, 3) (camera frame, meters, zero at frame 0), all float32.
    """
    curve = ease(frames)[:, None, None]
    start, end = components_from_body_pose(draws["poses"]).unbind(0)
    components = start + motion.pose_change * curve * (end - start)
    pitch, roll = draws["tilt"].unbind(-1)
    tilt = scene.camera_tilt(math.radians(scene_config.pitch) * pitch,
                             math.radians(scene_config.roll) * roll)
    yaw = draws["yaw"] + math.radians(motion.yaw) * draws["turn"] * curve[:, 0, 0]
    orient = tilt @ scene.upright_orientation(yaw)
    heading = 2.0 * math.pi * draws["drift"][0]
    step = motion.drift * draws["drift"][1] * torch.stack(
        [torch.cos(heading), torch.zeros_like(heading), torch.sin(heading)])
    displacement = curve[:, 0] * (tilt @ step)
    return {"body_pose": body_pose_from_components(components).float(),
            "global_orient": matrix_to_axis_angle(orient).float(),
            "displacement": displacement.float()}


@torch.no_grad()
def generate_sequence(world: SynthWorld, seed: int, index: int, frames: int,
                      motion: MotionConfig | None = None) -> SampleBatch:
    """Render the ``frames`` frames of sequence ``index`` of the dataset made with ``seed``
    (module docstring).

    Returns:
        a :class:`~fitkit.synth.world.SampleBatch` of F frames (``indices`` are the frame
        numbers), parameters in the camera frame.
    """
    if frames < 2:
        raise ValueError(f"a sequence needs at least 2 frames, got {frames}")
    motion = motion or MotionConfig()
    cfg = world.config
    size = cfg.size
    draws = _draw_sequence(world, sample_generator(seed, index))
    path = sequence_motion(draws, frames, cfg.scene, motion)
    betas = draws["betas"].expand(frames, -1)
    gt = {"global_orient": path["global_orient"], "body_pose": path["body_pose"],
          "betas": betas, "transl": path["displacement"]}
    moving = world.body(**gt)
    focal = draws["focal_length"][None]
    camera = Camera.from_image_size(size, size, 1, focal_length=focal)
    placed = scene.place_bodies(moving.vertices.reshape(1, -1, 3), focal,
                                camera.principal_point, (size, size), draws["placement"][None],
                                cfg.scene)
    gt["transl"] = path["displacement"] + placed
    depth = moving.vertices[..., 2]
    distance = placed[:, 2] + 0.5 * (depth.amin(1) + depth.amax(1))
    root = world.body(betas=betas[:1]).joints[:, 0].expand(frames, -1)
    per_frame = [_draw_frame(world, sample_generator(seed, index, f)) for f in range(frames)]
    chunks = []
    for start in range(0, frames, BATCH_SIZE):
        rows = list(range(start, min(start + BATCH_SIZE, frames)))
        count = len(rows)
        looks = {"texture": draws["texture"].expand(count, -1, -1, -1),
                 "background": draws["background"].expand(count, -1, -1, -1),
                 "light": draws["light"].expand(count, -1),
                 "sensor": torch.stack([per_frame[f]["sensor"] for f in rows])}
        chunks.append(world.render(
            rows, {key: value[rows] for key, value in gt.items()},
            Camera.from_image_size(size, size, count, focal_length=draws["focal_length"]),
            looks, stack_draws([per_frame[f]["keypoints"] for f in rows]),
            stack_draws([per_frame[f]["init"] for f in rows]), root[rows], distance[rows]))
    return _concat(chunks, frames)


def _concat(chunks: list[SampleBatch], frames: int) -> SampleBatch:
    """One :class:`SampleBatch` of the frames of ``chunks``."""
    def cat(name: str) -> Tensor | dict[str, Tensor]:
        first = getattr(chunks[0], name)
        if isinstance(first, dict):
            return {key: torch.cat([getattr(c, name)[key] for c in chunks]) for key in first}
        return torch.cat([getattr(c, name) for c in chunks])

    return SampleBatch(list(range(frames)), **{
        field.name: cat(field.name) for field in dataclasses.fields(SampleBatch)
        if field.name != "indices"})


def sequence_settings(settings: dict, frames: int, motion: MotionConfig) -> dict:
    """A sequences folder's settings document: the single-view one plus the layout."""
    return dict(settings) | {"layout": "frames", "frames": frames,
                             "motion": dataclasses.asdict(motion)}


def generate_sequence_dataset(
    out: str | os.PathLike,
    num: int,
    frames: int,
    seed: int = 0,
    config: SynthConfig | None = None,
    motion: MotionConfig | None = None,
    body: str = "open",
    progress: bool = True,
) -> Path:
    """Generate (or finish) a sequences dataset folder (module docstring: motion, layout).

    Resumable and reproducible as :func:`fitkit.synth.generate_dataset`: a sequence is done
    when the files of all its frames exist; the parameter files, ``sequences.npz`` and
    ``meta.json`` are rewritten at the end; one CPU thread.

    Args:
        out: dataset folder (created).
        num: number of sequences (> 0); frames: frames per sequence (>= 2).
        seed: dataset seed; sequence ``i`` depends on ``(seed, i)`` only.
        config: rendering settings; motion: :class:`MotionConfig`.
        body: body model name or file; progress: show a tqdm bar.
    Returns:
        The folder.
    Raises:
        SynthError: an unusable body, a folder made with other settings, a live writer.
        OSError: the machine cannot write the folder.
        ValueError: bad ``num``, ``frames`` or settings.
    """
    if num <= 0 or frames < 2:
        raise ValueError(f"num must be positive and frames at least 2, got {num} and {frames}")
    config = config or SynthConfig()
    motion = motion or MotionConfig()
    out = Path(out)
    world, digest = open_world(body, config)
    settings = sequence_settings(settings_document(seed, body, config, digest), frames, motion)
    names = [[frame_name(s, f, frames) for f in range(frames)] for s in range(num)]
    with writer_lock(out / "records" / "writer.lock", f"dataset folder {out}"):
        prepare_folder(out, settings)
        todo = [s for s in range(num) if not all(is_complete(out, n) for n in names[s])]
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with tqdm(total=num, initial=num - len(todo), unit="sequence",
                      disable=not progress, desc="fitkit.synth --frames") as bar:
                for index in todo:
                    batch = generate_sequence(world, seed, index, frames, motion)
                    for frame, name in enumerate(names[index]):
                        write_sample(out, batch, frame, name=name)
                    bar.update(1)
        finally:
            torch.set_num_threads(threads)
        flat = [name for sequence in names for name in sequence]
        finish_folder(out, flat, settings)
        atomic_write(out / SEQUENCE_FILE, npz_bytes({
            "image_names": np.array(flat),
            "sequence": np.repeat(np.arange(num, dtype=np.int64), frames),
            "frame": np.tile(np.arange(frames, dtype=np.int64), num)}))
    return out
