"""What a finished refine run reports: ``results.npz`` merged from the parts, ``metrics.json``
(computed in chunks: never all meshes in memory), the text table, and overlay pictures.

``metrics.json`` is strict JSON: every number in it is finite, a mean over no sample is
``null``. Its means are over the ``num_valid`` samples: no failure flag, finite refined, initial
and ground-truth parameters, finite metrics; a sample without a failure flag that was left out
for a non-finite value counts in ``excluded_non_finite``. The plausibility flags
(:data:`fitkit.fitting.plausibility.PLAUSIBILITY_FLAGS`) are counted in ``flagged`` but leave
their samples in the means: those fits ran, and dropping the likely wrong ones would flatter
the means. Overlays (image, then per body: over the image, from the side, from above) of images
larger than :data:`OVERLAY_MAX_SIDE` are drawn downscaled.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fitkit.body import BodyModel
from fitkit.eval import body_metrics
from fitkit.fitting.plausibility import PLAUSIBILITY_FLAGS
from fitkit.geometry import Camera
from fitkit.io.dataset import Dataset
from fitkit.io.inputs import FitInputError, read_images
from fitkit.io.params import PARAM_SIZES
from fitkit.io.runs import atomic_write
from fitkit.viz import compare_views

METRICS = ("mpjpe", "pa_mpjpe", "pve", "pa_pve")
"""Metrics of ``metrics.json`` (mm)."""

CHUNK = 64
"""Bodies evaluated at once for metrics and pictures."""

OVERLAY_MAX_SIDE = 1024
"""Longest side of an overlay panel, pixels: larger images are drawn downscaled (their camera
scaled with them), so that a 12000 x 12000 photo costs no more than a 1024 x 1024 one."""


def merge_parts(parts: list[dict[str, np.ndarray]], names: list[str]) -> dict[str, np.ndarray]:
    """The rows of ``names`` from the parts, in that order (energy terms a part lacks are NaN;
    the first part holding a name gives its row)."""
    rows: dict[str, tuple[dict[str, np.ndarray], int]] = {}
    for part in parts:
        for row, name in enumerate(part["image_names"].tolist()):
            rows.setdefault(name, (part, row))
    keys = sorted({key for part in parts for key in part} - {"image_names"})
    merged = {"image_names": np.array(names)}
    for key in keys:
        sample = next(part[key] for part in parts if key in part)
        fill = np.nan if sample.dtype.kind == "f" else np.zeros((), sample.dtype)
        merged[key] = np.stack([
            part[key][row] if key in part else np.full(sample.shape[1:], fill, sample.dtype)
            for part, row in (rows[name] for name in names)
        ])
    return merged


def bodies(body: BodyModel, params: Mapping[str, np.ndarray],
           chunk: int = CHUNK) -> Iterator[tuple[Tensor, Tensor]]:
    """Joints ``(n, 24, 3)`` and vertices ``(n, V, 3)`` of parameter rows, ``chunk`` rows at a
    time, on the CPU."""
    count = len(params["betas"])
    like = {"device": body.device, "dtype": body.dtype}
    for start in range(0, count, chunk):
        # no_grad around the call only: a grad-mode context held across a yield would leak
        # into the caller and, with two such generators interleaved, stay switched off
        with torch.no_grad():
            out = body(**{key: torch.as_tensor(params[key][start:start + chunk]).to(**like)
                          for key in PARAM_SIZES})
        yield out.joints.cpu(), out.vertices.cpu()


def per_sample_metrics(body: BodyModel, sources: Mapping[str, Mapping[str, np.ndarray]],
                       gt: Mapping[str, np.ndarray]) -> dict[str, dict[str, Tensor]]:
    """:data:`METRICS` of every row ``(N,)`` mm of each source of parameters (``{label:
    params}``, rows matching ``gt``'s), computed chunk by chunk; the true bodies are evaluated
    once for all sources."""
    values: dict[str, dict[str, list[Tensor]]] = {
        label: {name: [] for name in METRICS} for label in sources}
    streams = [bodies(body, params) for params in sources.values()]
    for gt_joints, gt_vertices in bodies(body, gt):
        for label, stream in zip(sources, streams, strict=True):
            joints, vertices = next(stream)
            chunk = body_metrics(joints, gt_joints, vertices, gt_vertices)
            for name in METRICS:
                values[label][name].append(chunk[name])
    return {label: {name: torch.cat(value) for name, value in metrics.items()}
            for label, metrics in values.items()}


def finite_rows(params: Mapping[str, np.ndarray]) -> np.ndarray:
    """``(N,)`` bool: the rows whose body parameters are all finite."""
    return np.all([np.isfinite(params[key].reshape(len(params[key]), -1)).all(axis=1)
                   for key in PARAM_SIZES], axis=0)


def compute_metrics(
    body: BodyModel, dataset: Dataset, results: Mapping[str, np.ndarray]
) -> dict[str, Any]:
    """Before/after metrics (means, mm) and counts (module docstring: which samples count).

    Returns:
        ``num_images``; ``num_valid`` (the samples of the means); ``excluded_non_finite``
        (samples without a failure flag left out for non-finite values); ``flagged`` (samples
        per flag, plausibility flags too); ``units``; with ``gt.npz``, ``init`` (not for
        fits from scratch) and ``refined``: :data:`METRICS` means, ``None`` when no sample
        counts. Only finite
        numbers, so it is strict JSON.
    """
    flags = {key[5:]: results[key] for key in results if key.startswith("flag_")}
    count = len(dataset.names)
    failed = [value for name, value in flags.items() if name not in PLAUSIBILITY_FLAGS]
    ok = ~np.any(np.stack([np.zeros(count, bool), *failed]), axis=0)
    initial = all(key in dataset.init for key in PARAM_SIZES)  # none: fits from scratch
    finite = finite_rows(results) & (finite_rows(dataset.init) if initial else True)
    if dataset.gt is not None:
        finite &= finite_rows(dataset.gt)
    rows = np.flatnonzero(ok & finite)
    values: dict[str, dict[str, Tensor]] = {}
    if dataset.gt is not None and len(rows):
        gt = {key: dataset.gt[key][rows] for key in PARAM_SIZES}
        sources = (("init", dataset.init),) * initial + (("refined", results),)
        values = per_sample_metrics(body, {
            label: {key: params[key][rows] for key in PARAM_SIZES} for label, params in sources},
            gt)
        measured = torch.stack([value.isfinite() for metrics in values.values()
                                for value in metrics.values()]).all(dim=0)
        values = {label: {name: value[measured] for name, value in metrics.items()}
                  for label, metrics in values.items()}
        rows = rows[measured.numpy()]
    document: dict[str, Any] = {
        "num_images": count,
        "num_valid": len(rows),
        "excluded_non_finite": int(ok.sum()) - len(rows),
        "flagged": {name: int(value.sum()) for name, value in flags.items()},
        "units": "mm",
    }
    if dataset.gt is not None:
        for label in ("init",) * initial + ("refined",):
            document[label] = {
                name: float(values[label][name].double().mean()) if len(rows) else None
                for name in METRICS
            }
    return document


def metrics_table(metrics: Mapping[str, Any]) -> str:
    """``metrics.json`` as a small text table (before/after, mm; after alone for fits from
    scratch)."""
    if "refined" not in metrics:
        return "(no gt.npz: no metrics)"
    header = f"{'':10}" + "".join(f"{name.upper().replace('_', '-'):>10}" for name in METRICS)
    lines = [header]
    for label in (label for label in ("init", "refined") if label in metrics):
        values = metrics[label]
        lines.append(f"{label:10}" + "".join(
            f"{values[name]:>10.1f}" if values[name] is not None else f"{'-':>10}"
            for name in METRICS))
    return "\n".join(lines)


def downscaled(image: np.ndarray, camera: Camera,
               max_side: int = OVERLAY_MAX_SIDE) -> tuple[np.ndarray, Camera]:
    """``image`` ``(H, W, 3)`` and its one camera, scaled down (area averaging) so that its
    longer side is at most ``max_side``: focal lengths times the scale, principal point
    ``(c + 0.5) * s - 0.5`` (pixel centres at integers); as they are when already small."""
    height, width = image.shape[:2]
    if max(width, height) <= max_side:
        return image, camera
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    factor = torch.tensor([[size[0] / width, size[1] / height]], dtype=camera.focal_length.dtype)
    small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
    return small, Camera(camera.focal_length * factor, (camera.principal_point + 0.5) * factor
                         - 0.5, torch.tensor([[float(size[0]), float(size[1])]]))


def write_overlays(
    body: BodyModel, dataset: Dataset, results: Mapping[str, np.ndarray], folder: Path,
    count: int,
) -> list[Path]:
    """``folder/NAME.png`` (:func:`fitkit.viz.compare_views`: the image, then a row per body,
    refined and initial, each over the image, from the side and from above) for the first ``count``
    images that can be read (:func:`fitkit.io.inputs.read_images`: the size limit, 16-bit and
    greyscale files), drawn at most :data:`OVERLAY_MAX_SIDE` pixels wide and high."""
    written: list[Path] = []
    if count <= 0:
        return written
    faces = body.faces.long().cpu()
    for row, name in enumerate(dataset.names):
        if len(written) >= count:
            break
        try:
            image, = read_images(dataset.image_path(name))
        except (FileNotFoundError, FitInputError):
            continue
        height, width = image.shape[:2]
        refined = {key: value[row:row + 1] for key, value in results.items() if key in PARAM_SIZES}
        (_, refined_vertices), = bodies(body, refined)
        meshes = {"refined": refined_vertices[0]}
        if all(key in dataset.init for key in PARAM_SIZES):  # not for fits from scratch
            pick = {key: value[row:row + 1] for key, value in dataset.init.items()}
            (_, init_vertices), = bodies(body, pick)
            meshes["init"] = init_vertices[0]
        camera = Camera(torch.as_tensor(results["focal_length"][row:row + 1]),
                        torch.as_tensor(results["camera_center"][row:row + 1]),
                        torch.tensor([[float(width), float(height)]]))
        image, camera = downscaled(image, camera, OVERLAY_MAX_SIDE)
        picture = compare_views(image, meshes, faces, camera)
        target = folder / f"{name}.png"
        atomic_write(target, lambda tmp, picture=picture: Image.fromarray(picture).save(
            tmp, format="PNG"))
        written.append(target)
    return written
