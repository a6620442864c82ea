"""Writing a synthetic dataset folder, resumable and byte-for-byte reproducible.

Layout (DESIGN.md's dataset folder plus the generator's own files)::

    images/NAME.png                 rendered RGB image
    keypoints/NAME_keypoints.json   OpenPose BODY_25 output, one person
    densepose/NAME_IUV.png          DensePose IUV (file channels R, G, B = V, U, I, as DensePose's
                                    cv2.imwrite leaves them: cv2.imread gives I, U, V)
    textures/NAME.png               the subject's clothing texture on the body's UV map
    records/NAME.npz                the sample's parameters and camera (resume bookkeeping)
    records/settings.json           the settings the samples were made with
    gt.npz, init.npz, meta.json     written at the end from all records

Samples are generated in fixed, aligned batches of :data:`BATCH_SIZE` indices (the last one
padded), so a sample's bytes never depend on how many samples were requested or which ones an
interrupted run had finished. Every file is written atomically (:func:`fitkit.io.runs.atomic_write`:
a temporary name renamed into place), so a file that exists is complete; a sample is done when all
its files exist. A run resumes only with the settings it was made with (``records/settings.json``,
compared with :func:`fitkit.io.runs.settings_difference`; they hold the body file's content
digest too). While a run writes, it holds the lock ``records/writer.lock``
(:func:`fitkit.io.runs.writer_lock`): a second run on the same folder is refused while the first
lives, and the lock of a killed run is taken over.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import fitkit
from fitkit.body import load_body
from fitkit.io.openpose import write_openpose
from fitkit.io.params import validate_params
from fitkit.io.runs import (
    RunError,
    atomic_write,
    file_digest,
    json_bytes,
    npz_bytes,
    remove_temporaries,
    settings_difference,
    writer_lock,
)
from fitkit.synth.config import SynthConfig
from fitkit.synth.world import PARAM_KEYS, SampleBatch, SynthWorld

BATCH_SIZE = 4
"""Samples generated together (their indices are ``k * BATCH_SIZE ...``)."""


class SynthError(RunError):
    """A dataset cannot be made: an unusable body model, a folder that holds a run with other
    settings (exit code 2 under :func:`fitkit.io.runs.run_command`)."""


def sample_name(index: int) -> str:
    """File name stem of sample ``index``."""
    return f"{index:06d}"


def sample_files(out: Path, name: str) -> list[Path]:
    """The files of one sample, the record (written last) at the end."""
    return [out / "images" / f"{name}.png", out / "keypoints" / f"{name}_keypoints.json",
            out / "densepose" / f"{name}_IUV.png", out / "textures" / f"{name}.png",
            out / "records" / f"{name}.npz"]


def png_bytes(image: np.ndarray) -> bytes:
    """``(H, W, 3)`` uint8 RGB as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def settings_document(seed: int, body: str, config: SynthConfig,
                      body_digest: str | None = None) -> dict:
    """What decides a sample's bytes besides its index (compared when a run resumes), as plain
    JSON values in a fixed key order (``settings.json`` and ``meta.json`` keep it).

    Args:
        body: the body's name or path, as given; body_digest: its file's content digest
            (:func:`fitkit.io.runs.file_digest`).
    """
    return json.loads(json.dumps({
        "generator": "fitkit.synth", "version": fitkit.__version__, "seed": seed, "body": body,
        "body_file": body_digest, "batch_size": BATCH_SIZE, "config": dataclasses.asdict(config),
    }, allow_nan=False))


def prepare_folder(out: Path, settings: dict, samples: bool = True) -> None:
    """Create the folders, remove temporary files an interrupted run left behind, and check
    that an existing run used the same settings (call it holding the writer lock).

    Args:
        samples: create the per-sample folders too (else only ``records/``: the top folder of
            a multi-view dataset).
    Raises:
        SynthError: a run with other settings, unreadable settings.
        OSError: a folder the machine cannot write.
    """
    subs = ("images", "keypoints", "densepose", "textures") if samples else ()
    folders = [out / sub for sub in (*subs, "records")]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out, *folders)
    path = out / "records" / "settings.json"
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise SynthError(f"{path} is unreadable ({error}); use a new folder") from None
        if not isinstance(previous, dict):
            raise SynthError(f"{path} is not a settings document; use a new folder")
        changed = settings_difference(previous, settings)
        if changed:
            raise SynthError(
                f"{out} holds a dataset made with other settings ({', '.join(changed)} differ); "
                "use a new folder or the same settings to resume it"
            )
    else:
        atomic_write(path, json_bytes(settings))


def write_sample(out: Path, batch: SampleBatch, row: int, name: str | None = None,
                 extra: dict[str, np.ndarray] | None = None) -> None:
    """Write the files of sample ``row`` of ``batch``, its record last.

    Args:
        name: the sample's file stem (default :func:`sample_name` of its index).
        extra: more arrays for its record (a view's extrinsics, its subject's world body).
    """
    name = sample_name(batch.indices[row]) if name is None else name
    images, keypoints, densepose, texture, record = sample_files(out, name)
    atomic_write(images, png_bytes(batch.images[row].numpy()))
    atomic_write(keypoints, lambda path: write_openpose(path, batch.keypoints[row].numpy()))
    # DensePose writes its (I, U, V) array with cv2.imwrite, which stores channels as B, G, R.
    atomic_write(densepose, png_bytes(batch.iuv[row].flip(-1).numpy()))
    atomic_write(texture, png_bytes(batch.textures[row].numpy()))
    arrays = {f"gt_{k}": batch.gt[k][row].numpy() for k in PARAM_KEYS}
    arrays |= {f"init_{k}": batch.init[k][row].numpy() for k in PARAM_KEYS}
    arrays |= {"focal_length": batch.focal_length[row].numpy(),
               "camera_center": batch.camera_center[row].numpy(),
               "distance": batch.distance[row].numpy()} | (extra or {})
    atomic_write(record, npz_bytes({k: v.astype(np.float32) for k, v in arrays.items()}))


def is_complete(out: Path, index: int | str) -> bool:
    """Whether all files of sample ``index`` (or of the sample named so) exist."""
    name = index if isinstance(index, str) else sample_name(index)
    return all(path.exists() for path in sample_files(out, name))


def read_records(out: Path, names: list[str]) -> list[dict[str, np.ndarray]]:
    """The per-sample records ``records/NAME.npz`` of ``names``."""
    records = []
    for name in names:
        with np.load(out / "records" / f"{name}.npz") as record:
            records.append(dict(record))
    return records


def finish_folder(out: Path, names: list[str], settings: dict) -> None:
    """Write ``gt.npz``, ``init.npz`` and ``meta.json`` of the samples ``names`` from their
    records."""
    records = read_records(out, names)
    for prefix in ("gt", "init"):
        arrays = {"image_names": np.array(names)}
        arrays |= {k: np.stack([r[f"{prefix}_{k}"] for r in records]) for k in PARAM_KEYS}
        arrays |= {k: np.stack([r[k] for r in records]) for k in ("focal_length", "camera_center")}
        path = out / f"{prefix}.npz"
        atomic_write(path, npz_bytes(validate_params(arrays, path)))
    meta = dict(settings) | {
        "num": len(names),
        "size": settings["config"]["size"],
        "keypoint_noise": settings["config"]["keypoint_noise"],
        "samples": [{"name": n, "focal_length": round(float(r["focal_length"][0]), 3),
                     "distance": round(float(r["distance"]), 3)}
                    for n, r in zip(names, records, strict=True)],
    }
    atomic_write(out / "meta.json", json_bytes(meta))


def open_world(body: str, config: SynthConfig) -> tuple[SynthWorld, str | None]:
    """The synthetic world of a body model and the body file's content digest (``None`` for
    a body that is not one file).

    Raises:
        SynthError: the body model cannot be loaded or lacks UVs or DensePose labels.
    """
    try:
        model = load_body(body)
        world = SynthWorld(model, config)
    except (FileNotFoundError, ValueError) as error:
        raise SynthError(f"cannot use the body model {body!r}: {error}") from None
    return world, file_digest(model.source) if Path(model.source).is_file() else None


def generate_dataset(
    out: str | os.PathLike,
    num: int,
    seed: int = 0,
    config: SynthConfig | None = None,
    body: str = "open",
    progress: bool = True,
) -> Path:
    """Generate (or finish) a synthetic dataset folder.

    Samples whose files all exist are kept (an interrupted run resumes); the others are
    rendered in aligned batches; the parameter files and ``meta.json`` are rewritten at the end.
    The work runs on one CPU thread (``torch.set_num_threads(1)``, restored afterwards): it is
    made of many small tensor operations, which intra-op threads slow down several times over on
    a busy machine, and a fixed thread count keeps the files the same on machines with different
    numbers of cores.

    Args:
        out: dataset folder (created).
        num: number of samples (> 0).
        seed: dataset seed; sample ``i`` depends on ``(seed, i)`` only.
        config: dataset settings (defaults: :class:`~fitkit.synth.world.SynthConfig`).
        body: body model name or file for :func:`fitkit.body.load_body`.
        progress: show a tqdm bar.
    Returns:
        The folder.
    Raises:
        SynthError: the body model cannot be loaded or lacks UVs or DensePose labels, the
            folder holds a run with other settings, or another live run is writing it.
        OSError: the machine cannot write the folder (disk full, no permission); the files
            written are complete (atomic writes), and a later run resumes.
        ValueError: bad ``num`` or settings.
    """
    if num <= 0:
        raise ValueError(f"num must be positive, got {num}")
    config = config or SynthConfig()
    out = Path(out)
    world, digest = open_world(body, config)
    settings = settings_document(seed, body, config, digest)
    with writer_lock(out / "records" / "writer.lock", f"dataset folder {out}"):
        prepare_folder(out, settings)
        _generate(out, num, seed, world, settings, progress)
    return out


def _generate(out: Path, num: int, seed: int, world: SynthWorld, settings: dict,
              progress: bool) -> None:
    """Render and write the samples of ``range(num)`` that are not complete, then the
    parameter files and ``meta.json`` (:func:`generate_dataset`)."""
    todo = {i for i in range(num) if not is_complete(out, i)}
    batches = sorted({i // BATCH_SIZE for i in todo})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tqdm(total=num, initial=num - len(todo), unit="img", disable=not progress,
                  desc="fitkit.synth") as bar:
            for b in batches:
                indices = list(range(b * BATCH_SIZE, (b + 1) * BATCH_SIZE))
                batch = world.generate(seed, indices)
                for row, index in enumerate(indices):
                    if index in todo:
                        write_sample(out, batch, row)
                        bar.update(1)
    finally:
        torch.set_num_threads(threads)
    finish_folder(out, [sample_name(i) for i in range(num)], settings)
