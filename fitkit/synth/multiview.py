"""Multi-view subjects: one body seen by V calibrated cameras (``python -m fitkit.synth --views
V``).

**World frame.** y points down along gravity (a level camera's y), the origin lies on the ground
plane (the horizontal plane through the body's lowest point) directly below the root joint, and
z is the horizontal direction camera 0 would look along at zero azimuth jitter. The body stands
upright in it (``R_x(π) R_y(yaw)``, yaw uniform over the circle).

**Cameras.** View k looks from azimuth ``360° k / V`` plus a uniform jitter of
``± azimuth_jitter`` about the vertical axis (world -> camera rotation ``R_k = R_z(roll)
R_x(pitch) R_y(azimuth)ᵀ``), tilted by the scene's pitch and roll (σ 8°, 5°) as a single-view
camera is; its distance and image position follow the single-view framing
(:func:`fitkit.synth.scene.place_bodies`: the person fills a drawn fraction of the image height,
the distance is clamped to the scene's range, and the person is placed in the frame, sometimes
partly out of it). ``t_k`` follows from where that puts the body: a world point ``x`` is at
``R_k x + t_k`` in view k. Each view has its own focal length, background, lighting, sensor
noise, keypoint noise and initial estimate (a per-view regressor's, in that view's camera
frame); pose, shape and clothing belong to the subject.

**Random streams.** Subject s draws from ``sample_generator(seed, s)``: body pose, yaw, shape,
clothing. Its view k draws from ``sample_generator(seed, s, k)``: azimuth jitter, pitch, roll,
focal length, placement, background, lighting, sensor noise, keypoint noise, initial-estimate
noise. Subjects are rendered in aligned batches of :data:`~fitkit.synth.dataset.BATCH_SIZE`,
view by view, so a folder's bytes do not depend on ``--num`` or on interruptions.

**Layout** (``docs/formats.md``)::

    gt.npz            world frame, one row per subject (image_names = subject names; the
                      focal_length and camera_center of view 0)
    cameras.npz       image_names (N,), R (N, V, 3, 3), t (N, V, 3), focal_length (N, V, 2),
                      camera_center (N, V, 2), image_size (N, V, 2) (W, H)
    meta.json         settings, counts
    records/          settings.json, writer.lock
    views/K/          view K as a complete single-view dataset folder (images, keypoints,
                      densepose, textures, records, gt.npz in view K's camera frame, init.npz,
                      meta.json), rows named by subject
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
from fitkit.io.dataset import CAMERA_FILE, VIEWS_FOLDER
from fitkit.io.params import validate_params
from fitkit.io.runs import atomic_write, json_bytes, npz_bytes, writer_lock
from fitkit.synth import annotate, scene, textures
from fitkit.synth.backgrounds import random_background
from fitkit.synth.config import SynthConfig
from fitkit.synth.dataset import (
    BATCH_SIZE,
    finish_folder,
    is_complete,
    open_world,
    prepare_folder,
    read_records,
    sample_name,
    settings_document,
    write_sample,
)
from fitkit.synth.init import draw_init_noise
from fitkit.synth.poses import sample_body_pose
from fitkit.synth.world import PARAM_KEYS, SampleBatch, SynthWorld, sample_generator, stack_draws


@dataclass
class ViewsConfig:
    """Camera layout around a multi-view subject.

    Attributes:
        azimuth_jitter: degrees; view k's azimuth is ``360 k / V`` plus a uniform draw in
            ``[-azimuth_jitter, azimuth_jitter]``.
    """

    azimuth_jitter: float = 15.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.azimuth_jitter <= 180.0:
            raise ValueError(f"views.azimuth_jitter must be in [0, 180] degrees, got "
                             f"{self.azimuth_jitter}")


@dataclass
class MultiViewBatch:
    """B subjects, each seen by V views.

    Attributes:
        indices: subject indices (B,).
        views: V :class:`~fitkit.synth.world.SampleBatch` es, view k's B samples in its camera
            frame.
        R: ``(B, V, 3, 3)`` world -> camera rotations; t: ``(B, V, 3)`` translations.
        world: world-frame parameters ``global_orient`` (B, 3), ``body_pose`` (B, 69),
            ``betas`` (B, 10), ``transl`` (B, 3).
    """

    indices: list[int]
    views: list[SampleBatch]
    R: Tensor
    t: Tensor
    world: dict[str, Tensor]


def view_folder(out: str | os.PathLike, view: int) -> Path:
    """``out/views/VIEW``: view ``view``'s single-view dataset folder."""
    return Path(out) / VIEWS_FOLDER / str(view)


def _draw_subject(world: SynthWorld, generator: torch.Generator) -> dict[str, Tensor]:
    """A subject's random numbers, in the module docstring's order."""
    cfg = world.config
    return {
        "body_pose": sample_body_pose(1, generator)[0].float(),
        "yaw": 2.0 * math.pi * torch.rand((), generator=generator, dtype=torch.float64),
        "betas": scene.sample_betas(generator, cfg.scene, PARAM_SIZES["betas"]),
        "texture": textures.clothing_texture(world.regions, generator),
    }


def _draw_view(world: SynthWorld, generator: torch.Generator) -> dict:
    """One view's random numbers, in the module docstring's order."""
    cfg = world.config
    return {
        "azimuth": torch.rand((), generator=generator, dtype=torch.float64),
        "tilt": torch.randn(2, generator=generator, dtype=torch.float64),
        "focal_length": torch.tensor(
            scene.sample_focal_length(generator, cfg.scene, cfg.size, cfg.size)),
        "placement": scene.sample_placement(generator, cfg.scene),
        "background": random_background(cfg.size, cfg.size, generator),
        "light": torch.rand(9, generator=generator),
        "sensor": torch.randn(3, cfg.size, cfg.size, generator=generator),
        "keypoints": annotate.draw_keypoint_noise(generator),
        "init": draw_init_noise(generator, PARAM_SIZES["betas"]),
    }


def ground_frame(world: SynthWorld, params: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """The world translation that stands bodies on the ground plane of the world frame (the
    origin on the plane through the lowest vertex, y down, directly below the root joint).

    Args:
        params: world ``global_orient`` (B, 3), ``body_pose`` (B, 69), ``betas`` (B, 10).
    Returns:
        ``transl`` ``(B, 3)`` and the rest root joints ``J0`` ``(B, 3)``.
    """
    output = world.body(**params, transl=torch.zeros_like(params["global_orient"]))
    root = output.joints[:, 0]
    lowest = output.vertices[..., 1].amax(dim=1)
    return torch.stack([-root[:, 0], -lowest, -root[:, 2]], dim=1), root


@torch.no_grad()
def generate_views(world: SynthWorld, seed: int, indices: list[int], views: int,
                   config: ViewsConfig | None = None) -> MultiViewBatch:
    """Render subjects ``indices`` of the multi-view dataset made with ``seed``, each from
    ``views`` cameras (module docstring).

    Returns:
        a :class:`MultiViewBatch`.
    """
    config = config or ViewsConfig()
    cfg = world.config
    size = cfg.size
    count = len(indices)
    subject = stack_draws([_draw_subject(world, sample_generator(seed, i)) for i in indices])
    body_rotation = scene.upright_orientation(subject["yaw"])  # (B, 3, 3) float64
    shared = {"body_pose": subject["body_pose"], "betas": subject["betas"]}
    world_params = {"global_orient": matrix_to_axis_angle(body_rotation).float(), **shared}
    transl, root = ground_frame(world, world_params)
    world_params["transl"] = transl
    rotations, translations, batches = [], [], []
    for view in range(views):
        draws = [_draw_view(world, sample_generator(seed, i, view)) for i in indices]
        stack = stack_draws([{k: v for k, v in d.items() if k not in ("keypoints", "init")}
                        for d in draws])
        azimuth = (2.0 * math.pi * view / views
                   + math.radians(config.azimuth_jitter) * (2.0 * stack["azimuth"] - 1.0))
        pitch, roll = stack["tilt"].unbind(-1)
        rotation = (scene.camera_tilt(math.radians(cfg.scene.pitch) * pitch,
                                      math.radians(cfg.scene.roll) * roll)
                    @ scene.axis_rotations(1, azimuth).transpose(-1, -2))
        gt = {"global_orient": matrix_to_axis_angle(rotation @ body_rotation).float(), **shared,
              "transl": torch.zeros(count, 3)}
        centred = world.body(**gt)
        camera = Camera.from_image_size(size, size, count, focal_length=stack["focal_length"])
        gt["transl"] = scene.place_bodies(centred.vertices, stack["focal_length"],
                                          camera.principal_point, (size, size),
                                          stack["placement"], cfg.scene)
        distance = gt["transl"][:, 2] + 0.5 * (centred.vertices[..., 2].amin(1)
                                               + centred.vertices[..., 2].amax(1))
        looks = {"texture": subject["texture"], "background": stack["background"],
                 "light": stack["light"], "sensor": stack["sensor"]}
        batches.append(world.render(indices, gt, camera, looks,
                                    stack_draws([d["keypoints"] for d in draws]),
                                    stack_draws([d["init"] for d in draws]), root, distance))
        rotation = rotation.float()
        rotations.append(rotation)
        # x_cam = R x_world + t puts the world root J0 + transl_w at the view's J0 + transl_c
        translations.append(root + gt["transl"]
                            - (rotation @ (root + transl)[..., None])[..., 0])
    return MultiViewBatch(list(indices), batches, torch.stack(rotations, 1),
                          torch.stack(translations, 1), world_params)


def multiview_settings(settings: dict, views: int, config: ViewsConfig) -> dict:
    """A multi-view folder's settings document: the single-view one plus the layout."""
    return dict(settings) | {"layout": "views", "views": views,
                             "views_config": dataclasses.asdict(config)}


def generate_multiview_dataset(
    out: str | os.PathLike,
    num: int,
    views: int,
    seed: int = 0,
    config: SynthConfig | None = None,
    views_config: ViewsConfig | None = None,
    body: str = "open",
    progress: bool = True,
) -> Path:
    """Generate (or finish) a multi-view dataset folder (module docstring: layout, frames).

    Resumable and reproducible as :func:`fitkit.synth.generate_dataset`: a subject is done when
    the files of all its views exist; the others are rendered in aligned batches; the parameter
    files, ``cameras.npz`` and ``meta.json`` are rewritten at the end; one CPU thread.

    Args:
        out: dataset folder (created).
        num: number of subjects (> 0); views: cameras per subject (> 0).
        seed: dataset seed; subject ``i`` depends on ``(seed, i)`` only.
        config: rendering settings (per view, as a single-view dataset's).
        views_config: camera layout (:class:`ViewsConfig`).
        body: body model name or file; progress: show a tqdm bar.
    Returns:
        The folder.
    Raises:
        SynthError: an unusable body, a folder made with other settings, a live writer.
        OSError: the machine cannot write the folder.
        ValueError: bad ``num``, ``views`` or settings.
    """
    if num <= 0 or views <= 0:
        raise ValueError(f"num and views must be positive, got {num} and {views}")
    config = config or SynthConfig()
    views_config = views_config or ViewsConfig()
    out = Path(out)
    world, digest = open_world(body, config)
    settings = multiview_settings(settings_document(seed, body, config, digest), views,
                                  views_config)
    names = [sample_name(i) for i in range(num)]
    with writer_lock(out / "records" / "writer.lock", f"dataset folder {out}"):
        prepare_folder(out, settings, samples=False)
        for view in range(views):
            prepare_folder(view_folder(out, view), settings | {"view": view})
        todo = {i for i, name in enumerate(names)
                if not all(is_complete(view_folder(out, k), name) for k in range(views))}
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with tqdm(total=num, initial=num - len(todo), unit="subject",
                      disable=not progress, desc="fitkit.synth --views") as bar:
                for b in sorted({i // BATCH_SIZE for i in todo}):
                    indices = list(range(b * BATCH_SIZE, (b + 1) * BATCH_SIZE))
                    batch = generate_views(world, seed, indices, views, views_config)
                    for row, index in enumerate(indices):
                        if index not in todo:
                            continue
                        world_arrays = {f"world_{key}": batch.world[key][row].numpy()
                                        for key in PARAM_KEYS}
                        for view, samples in enumerate(batch.views):
                            write_sample(view_folder(out, view), samples, row, extra={
                                "R": batch.R[row, view].numpy(),
                                "t": batch.t[row, view].numpy(), **world_arrays})
                        bar.update(1)
        finally:
            torch.set_num_threads(threads)
        for view in range(views):
            finish_folder(view_folder(out, view), names, settings | {"view": view})
        _finish_top(out, names, views, settings)
    return out


def _finish_top(out: Path, names: list[str], views: int, settings: dict) -> None:
    """Write the top folder's ``gt.npz`` (world frame), ``cameras.npz`` and ``meta.json`` from
    the views' records."""
    records = [read_records(view_folder(out, view), names) for view in range(views)]

    def stacked(key: str) -> np.ndarray:
        return np.stack([np.stack([r[key] for r in view]) for view in records], axis=1)

    size = float(settings["config"]["size"])
    cameras = {"image_names": np.array(names), "R": stacked("R"), "t": stacked("t"),
               "focal_length": stacked("focal_length"),
               "camera_center": stacked("camera_center")}
    cameras["image_size"] = np.full_like(cameras["focal_length"], size)
    atomic_write(out / CAMERA_FILE, npz_bytes(
        {key: value.astype(np.float32) if key != "image_names" else value
         for key, value in cameras.items()}))
    gt = {"image_names": np.array(names)}
    gt |= {key: np.stack([r[f"world_{key}"] for r in records[0]]) for key in PARAM_KEYS}
    gt |= {key: cameras[key][:, 0] for key in ("focal_length", "camera_center")}
    path = out / "gt.npz"
    atomic_write(path, npz_bytes(validate_params(gt, path)))
    meta = dict(settings) | {"num": len(names), "size": settings["config"]["size"],
                             "keypoint_noise": settings["config"]["keypoint_noise"],
                             "subjects": names}
    atomic_write(out / "meta.json", json_bytes(meta))
