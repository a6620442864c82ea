"""``python -m fitkit.refine``: refine the initial estimates of a dataset folder with SMPLify.

Example::

    python -m fitkit.refine --input data/synth --output out/kp --prior gmm --data-term keypoints
    python -m fitkit.refine --input data/synth --output out/flow --data-term flow
    python -m fitkit.refine --input data/synth --output out/flow_ub --data-term flow --flow exact

The dataset folder is DESIGN.md's (what ``python -m fitkit.synth`` writes): ``init.npz`` (the
rows to refine, in order), ``images/NAME.png|jpg``, ``keypoints/NAME_keypoints.json``,
``densepose/NAME_IUV.png``, optional ``gt.npz``. The output folder gets::

    parts/batch_00000.npz   each finished batch, written as soon as it is done
    progress.json           the run's settings and the names finished so far
    results.npz             all rows (docs/formats.md layout), energy, energy_TERM, flag_FLAG, error
    metrics.json            before/after MPJPE, PA-MPJPE, PVE, PA-PVE (mm), when gt.npz exists
    overlays/NAME.png       image | initial mesh | refined mesh, for the first K images

Every file is written under a temporary name and renamed. An interrupted run continues with
``--resume`` (finished batches are kept); without it a non-empty output folder is refused unless
``--overwrite``. A sample whose files are missing or malformed keeps its initial parameters and is
flagged ``bad_input`` (its message in ``error``); the others are refined. Bad arguments or an
unusable dataset stop with a message naming the file and field and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from fitkit import terms
from fitkit.api import (
    TERM_INPUTS,
    FitInputError,
    Fitter,
    image_sizes,
    read_images,
    read_iuv,
    read_keypoints,
)
from fitkit.body.model import PARAM_SIZES
from fitkit.eval import body_metrics
from fitkit.fitting import FitResult
from fitkit.geometry import Camera
from fitkit.io import CAMERA_KEYS, ParamsFileError, read_params, write_params
from fitkit.nets.predict import TEXTURE_MODES
from fitkit.viz import compare

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
METRICS = ("mpjpe", "pa_mpjpe", "pve", "pa_pve")
"""Metrics of ``metrics.json`` (mm)."""

FLOW_SOURCES = ("predicted", "exact")
"""Displacement sources for ``--data-term flow``: ``predicted`` by the displacement network
(``--flow-net``; by default a shipped one) from each image and its initial body; ``exact``, the
true field from ``gt.npz`` (the upper bound)."""

OUTPUT_FILES = ("parts", "overlays", "progress.json", "results.npz", "metrics.json")


class RefineError(Exception):
    """A run that cannot go on: bad arguments, an unusable dataset or output folder."""


@dataclass
class Dataset:
    """A dataset folder, read.

    Attributes:
        root: the folder.
        names: image name stems, in ``init.npz`` order.
        init: initial parameters ``(N, ...)`` by key (with ``focal_length``, ``camera_center``).
        gt: ground-truth parameters, or ``None``.
    """

    root: Path
    names: list[str]
    init: dict[str, np.ndarray]
    gt: dict[str, np.ndarray] | None

    def image_path(self, name: str) -> Path:
        """``images/NAME.png`` (or ``.jpg``, ``.jpeg``; the ``.png`` path when none exists)."""
        for suffix in IMAGE_SUFFIXES:
            path = self.root / "images" / f"{name}{suffix}"
            if path.is_file():
                return path
        return self.root / "images" / f"{name}.png"

    def rows(self, names: Sequence[str], source: str = "init") -> dict[str, np.ndarray]:
        """The rows of ``init`` or ``gt`` for ``names``."""
        arrays = self.init if source == "init" else self.gt
        index = {name: row for row, name in enumerate(self.names)}
        picked = [index[name] for name in names]
        return {key: value[picked] for key, value in arrays.items()}


def _read_params(path: Path) -> dict[str, np.ndarray]:
    """A parameter file; missing camera keys come from the images' size (when they have one)."""
    try:
        return read_params(path)
    except ParamsFileError as error:
        if error.key not in CAMERA_KEYS:
            raise
    with np.load(path) as npz:
        names = npz["image_names"].astype(str).tolist()
    sizes = image_sizes([Dataset(path.parent, [], {}, None).image_path(n) for n in names])
    if not (sizes == sizes[0]).all():
        raise ParamsFileError(path, "focal_length", "missing, and the images differ in size")
    return read_params(path, image_size=sizes[0])


def open_dataset(root: str | os.PathLike, limit: int | None = None) -> Dataset:
    """Read a dataset folder's parameter files.

    Args:
        root: the folder; limit: keep the first ``limit`` rows of ``init.npz``.
    Raises:
        RefineError: no folder, no ``init.npz``, malformed parameter files.
    """
    root = Path(root)
    if not root.is_dir():
        raise RefineError(f"input folder not found: {root}")
    init_path = root / "init.npz"
    if not init_path.is_file():
        raise RefineError(f"{init_path} not found: the input folder needs the initial estimates "
                          "(docs/formats.md layout)")
    try:
        init = _read_params(init_path)
        gt = _read_params(root / "gt.npz") if (root / "gt.npz").is_file() else None
    except (FileNotFoundError, ValueError) as error:
        raise RefineError(str(error)) from None
    names = init.pop("image_names").tolist()[:limit]
    init = {key: value[: len(names)] for key, value in init.items()}
    if gt is not None:
        gt_names = gt.pop("image_names").tolist()
        missing = sorted(set(names) - set(gt_names))
        if missing:
            raise RefineError(f"{root / 'gt.npz'}: key 'image_names' lacks {missing[:5]} of "
                              "init.npz")
        index = {name: row for row, name in enumerate(gt_names)}
        gt = {key: value[[index[n] for n in names]] for key, value in gt.items()}
    return Dataset(root, names, init, gt)


# --------------------------------------------------------------------------- the output folder


def _atomic_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as file:
        np.savez(file, **arrays)
    os.replace(tmp, path)


def _atomic_json(path: Path, document: Any) -> None:
    _atomic_bytes(path, (json.dumps(document, indent=1) + "\n").encode())


def prepare_output(output: Path, settings: dict, resume: bool, overwrite: bool) -> list[Path]:
    """Create or reopen the output folder; return the finished parts (in order).

    Raises:
        RefineError: a non-empty folder without ``resume``/``overwrite``, a folder that holds a
            run with other settings, or one that cannot be written.
    """
    if output.exists() and not output.is_dir():
        raise RefineError(f"output {output} exists and is not a folder")
    has_content = output.is_dir() and any(output.iterdir())
    if has_content and overwrite:
        for name in OUTPUT_FILES:
            path = output / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    elif has_content and not resume:
        raise RefineError(f"output folder {output} is not empty; pass --resume to continue the "
                          "run in it or --overwrite to replace its results")
    try:
        (output / "parts").mkdir(parents=True, exist_ok=True)
        for stale in [*output.glob(".*.tmp"), *(output / "parts").glob(".*.tmp")]:
            stale.unlink()
    except OSError as error:
        raise RefineError(f"cannot write the output folder {output}: "
                          f"{error.strerror or error}") from None
    progress = output / "progress.json"
    if progress.is_file():
        try:
            previous = json.loads(progress.read_text())["settings"]
        except (OSError, ValueError, KeyError) as error:
            raise RefineError(f"{progress} is unreadable ({error}); use --overwrite") from None
        changed = sorted(key for key in settings.keys() | previous.keys()
                         if settings.get(key) != previous.get(key))
        if changed:
            raise RefineError(f"{output} holds a run with other settings ({', '.join(changed)} "
                              "differ); use the same settings, --overwrite or another folder")
    _atomic_json(progress, {"settings": settings, "completed": []})
    return sorted((output / "parts").glob("batch_*.npz"))


def _read_part(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {key: npz[key] for key in npz.files}


def _write_progress(output: Path, settings: dict, completed: list[str]) -> None:
    _atomic_json(output / "progress.json", {"settings": settings, "completed": completed})


# --------------------------------------------------------------------------- one batch


def _batch_inputs(
    dataset: Dataset, names: list[str], data_term: str, fitter: Fitter, errors: list[str],
    flow: str = "predicted", texture: str | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], Any]:
    """Sizes, initial parameters and the data term's input of one batch; per-sample problems go
    to ``errors`` and blank that sample's input."""
    init = dataset.rows(names)
    sizes = image_sizes([dataset.image_path(name) for name in names], errors)
    fallback = np.round(2.0 * init["camera_center"] + 1.0).astype(np.int64)
    sizes = np.where((sizes > 0).all(axis=1, keepdims=True), sizes, fallback)
    if data_term == "keypoints":
        paths = [dataset.root / "keypoints" / f"{name}_keypoints.json" for name in names]
        data = read_keypoints(paths, errors)
    elif data_term == "densepose":
        paths = [dataset.root / "densepose" / f"{name}_IUV.png" for name in names]
        data = read_iuv(paths, errors)
    elif flow == "exact":
        data = exact_displacements(fitter, init, dataset.rows(names, "gt"), sizes)
    else:
        data = predicted_inputs(dataset, names, fitter, errors, texture)
    bad = np.array([bool(message) for message in errors])
    if isinstance(data, dict):  # images to predict from: the bad ones get no targets
        data["usable"] = ~bad
    elif bad.any():  # no usable observation: NaN keypoints or displacements, empty IUV images
        data = np.array(data, copy=True)
        data[bad] = np.nan if data.dtype.kind == "f" else 0
    return sizes, init, data


def predicted_inputs(
    dataset: Dataset,
    names: list[str],
    fitter: Fitter,
    errors: list[str],
    texture: str | None = None,
) -> dict[str, Any]:
    """What :meth:`fitkit.api.Fitter.fit` needs to predict flow: the images (an unreadable one
    is blank and its message goes to ``errors``) and the texture source.

    Args:
        texture: ``None``, ``estimate``, ``other`` (:data:`fitkit.nets.predict.TEXTURE_MODES`)
            or a folder of UV textures ``NAME.png`` (RGB, square, one size), one per image.
    Returns:
        ``{"images": B (H, W, 3) uint8 arrays, "texture": mode or (B, 3, T, T) tensor}``.
    Raises:
        FitInputError: textures of different sizes, a bad network checkpoint.
    """
    images = []
    for index, name in enumerate(names):
        try:
            images += read_images(dataset.image_path(name))
        except (FileNotFoundError, FitInputError) as error:
            errors[index] = errors[index] or str(error)
            images.append(None)
    shape = next((image.shape for image in images if image is not None), (64, 64, 3))
    images = [image if image is not None else np.zeros(shape, np.uint8) for image in images]
    source: str | torch.Tensor | None = texture
    if texture not in (None, *TEXTURE_MODES) and fitter.predictor(texture).uses_texture:
        source = read_textures(Path(texture), names, errors).to(fitter.device, fitter.body.dtype)
    return {"images": images, "texture": source}


def read_textures(folder: Path, names: list[str], errors: list[str]) -> torch.Tensor:
    """``(B, 3, T, T)`` RGB textures in [0, 1] from ``folder/NAME.png``; a missing or unreadable
    one is grey and its message goes to ``errors``.

    Raises:
        FitInputError: textures that are not square or not of one size.
    """
    textures: list[np.ndarray | None] = []
    for index, name in enumerate(names):
        try:
            textures += read_images(folder / f"{name}.png")
        except (FileNotFoundError, FitInputError) as error:
            errors[index] = errors[index] or f"texture: {error}"
            textures.append(None)
    shapes = {texture.shape for texture in textures if texture is not None}
    if len(shapes) > 1 or any(shape[0] != shape[1] for shape in shapes):
        raise FitInputError(f"textures in {folder} must be square and of one size, got "
                            f"{sorted(shape[:2] for shape in shapes)}")
    shape = shapes.pop() if shapes else (64, 64, 3)
    stack = np.stack([texture if texture is not None else np.full(shape, 128, np.uint8)
                      for texture in textures])
    return torch.as_tensor(stack).permute(0, 3, 1, 2).float() / 255.0


def exact_displacements(
    fitter: Fitter,
    init: dict[str, np.ndarray],
    gt: dict[str, np.ndarray],
    sizes: np.ndarray,
) -> np.ndarray:
    """The true displacement field of each sample (:func:`fitkit.terms.exact_displacements`):
    ``(B, 2, H, W)`` pixels from the render of its initial body to where the same surface points
    lie in the image (its ground-truth body projected), the flow term's upper bound.

    Raises:
        FitInputError: images of different sizes in one batch.
    """
    if not (sizes == sizes[0]).all():
        raise FitInputError("--flow exact needs images of one size in a batch")
    like = {"device": fitter.device, "dtype": fitter.body.dtype}
    camera = Camera(torch.as_tensor(init["focal_length"]), torch.as_tensor(init["camera_center"]),
                    torch.as_tensor(sizes, dtype=torch.float32)).to(**like)
    field = terms.exact_displacements(
        fitter.body,
        {key: torch.as_tensor(gt[key]).to(**like) for key in PARAM_SIZES},
        {key: torch.as_tensor(init[key]).to(**like) for key in PARAM_SIZES},
        camera,
    )
    return field.cpu().numpy()


def _part_arrays(names: list[str], result: FitResult, errors: list[str]) -> dict[str, np.ndarray]:
    """One batch's rows: parameters, energies, flags and error messages."""
    arrays: dict[str, np.ndarray] = {"image_names": np.array(names)}
    arrays |= {key: value.cpu().float().numpy() for key, value in result.params.items()}
    arrays["energy"] = result.energy.cpu().double().numpy()
    arrays |= {f"energy_{key}": value.cpu().double().numpy() for key, value in result.terms.items()}
    arrays |= {f"flag_{key}": value.cpu().numpy() for key, value in result.flags.items()}
    arrays["flag_bad_input"] = np.array([bool(message) for message in errors])
    arrays["error"] = np.array(errors, dtype=str)
    return arrays


# --------------------------------------------------------------------------- results


def _merge(parts: list[dict[str, np.ndarray]], names: list[str]) -> dict[str, np.ndarray]:
    """The rows of ``names`` from all parts, in that order (missing energy terms are NaN)."""
    rows = {}
    for part in parts:
        for row, name in enumerate(part["image_names"].tolist()):
            rows[name] = (part, row)
    keys = sorted({key for part in parts for key in part})
    merged = {"image_names": np.array(names)}
    for key in keys:
        if key == "image_names":
            continue
        sample = next(part[key] for part in parts if key in part)
        fill = np.nan if sample.dtype.kind == "f" else np.zeros((), sample.dtype)
        merged[key] = np.stack([
            part[key][row] if key in part else np.full(sample.shape[1:], fill, sample.dtype)
            for part, row in (rows[name] for name in names)
        ])
    return merged


def _bodies(fitter: Fitter, params: dict[str, np.ndarray], chunk: int = 64) -> tuple[Any, Any]:
    """Joints and vertices ``(N, 24, 3)``, ``(N, V, 3)`` of parameter rows, on the CPU."""
    joints, vertices = [], []
    count = len(params["betas"])
    like = {"device": fitter.device, "dtype": fitter.body.dtype}
    with torch.no_grad():
        for start in range(0, count, chunk):
            out = fitter.body(**{k: torch.as_tensor(params[k][start:start + chunk]).to(**like)
                                 for k in PARAM_SIZES})
            joints.append(out.joints.cpu())
            vertices.append(out.vertices.cpu())
    return torch.cat(joints), torch.cat(vertices)


def compute_metrics(
    fitter: Fitter, dataset: Dataset, results: dict[str, np.ndarray]
) -> dict[str, Any]:
    """Before/after metrics over the samples without flags (means, mm) and flag counts."""
    flags = {key[5:]: results[key] for key in results if key.startswith("flag_")}
    ok = ~np.any(np.stack(list(flags.values())), axis=0)
    document: dict[str, Any] = {
        "num_images": len(dataset.names),
        "num_valid": int(ok.sum()),
        "flagged": {name: int(value.sum()) for name, value in flags.items()},
        "units": "mm",
    }
    if dataset.gt is None:
        return document
    gt_joints, gt_vertices = _bodies(fitter, dataset.gt)
    for label, params in (("init", dataset.init), ("refined", results)):
        joints, vertices = _bodies(fitter, params)
        values = body_metrics(joints, gt_joints, vertices, gt_vertices)
        document[label] = {
            name: float(values[name][torch.as_tensor(ok)].mean()) if ok.any() else None
            for name in METRICS
        }
    return document


def metrics_table(metrics: dict[str, Any]) -> str:
    """``metrics.json`` as a small text table (before/after, mm)."""
    if "init" not in metrics:
        return "(no gt.npz: no metrics)"
    header = f"{'':10}" + "".join(f"{name.upper().replace('_', '-'):>10}" for name in METRICS)
    lines = [header]
    for label in ("init", "refined"):
        values = metrics[label]
        lines.append(f"{label:10}" + "".join(
            f"{values[name]:>10.1f}" if values[name] is not None else f"{'-':>10}"
            for name in METRICS))
    return "\n".join(lines)


def write_overlays(
    fitter: Fitter, dataset: Dataset, results: dict[str, np.ndarray], folder: Path, count: int
) -> list[Path]:
    """``folder/NAME.png`` (image | initial mesh | refined mesh) for the first ``count``
    images that have one."""
    written: list[Path] = []
    if count <= 0:
        return written
    folder.mkdir(parents=True, exist_ok=True)
    faces = fitter.body.faces.long()
    for row, name in enumerate(dataset.names):
        if len(written) >= count:
            break
        path = dataset.image_path(name)
        if not path.is_file():
            continue
        try:
            with Image.open(path) as file:
                image = np.asarray(file.convert("RGB"))
        except OSError:
            continue
        height, width = image.shape[:2]
        init = {k: v[row:row + 1] for k, v in dataset.init.items()}
        refined = {k: v[row:row + 1] for k, v in results.items() if k in PARAM_SIZES}
        _, init_vertices = _bodies(fitter, init)
        _, refined_vertices = _bodies(fitter, refined)
        camera = Camera(torch.as_tensor(results["focal_length"][row:row + 1]),
                        torch.as_tensor(results["camera_center"][row:row + 1]),
                        torch.tensor([[float(width), float(height)]]))
        picture = compare(image, {"init": init_vertices[0], "refined": refined_vertices[0]},
                          faces.cpu(), camera)
        target = folder / f"{name}.png"
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        Image.fromarray(picture).save(tmp, format="PNG")
        os.replace(tmp, target)
        written.append(target)
    return written


# --------------------------------------------------------------------------- the run


@dataclass
class RefineSummary:
    """What a run produced.

    Attributes:
        output: the output folder; results, metrics: ``results.npz`` and ``metrics.json``;
        overlays: the overlay pictures; metrics_values: ``metrics.json``'s content;
        seconds: wall time of the run.
    """

    output: Path
    results: Path
    metrics: Path
    overlays: list[Path]
    metrics_values: dict[str, Any]
    seconds: float


def refine_dataset(
    input: str | os.PathLike,
    output: str | os.PathLike,
    prior: str = "gmm",
    data_term: str = "keypoints",
    flow: str | None = None,
    flow_net: str = "auto",
    texture: str | None = None,
    flow_rounds: int = 1,
    device: str | None = None,
    batch_size: int = 32,
    resume: bool = False,
    overwrite: bool = False,
    overlays: int = 8,
    preset: str = "refine",
    limit: int | None = None,
    body: str = "open",
    progress: bool = True,
    **overrides: Any,
) -> RefineSummary:
    """Refine a dataset folder (the module docstring says what is read and written).

    Args:
        input, output: dataset and output folders.
        prior: pose prior name or path; data_term: ``keypoints``, ``densepose`` or ``flow``.
        flow: displacement source for ``flow``: ``"predicted"`` (default) or ``"exact"`` (the
            true field from ``gt.npz``), :data:`FLOW_SOURCES`.
        flow_net: the displacement network for predicted flow: ``auto`` (``open`` when a
            texture is given, else ``open-notexture``), a shipped name or a checkpoint path.
        texture: the subjects' textures, for a network with texture input: a folder of UV
            textures ``NAME.png`` (e.g. a synthetic dataset's ``textures/``), ``estimate``
            (from each image alone), ``other`` (the next image's estimate; an ablation), or
            ``None`` (none known).
        flow_rounds: rounds of predicting flow (from the latest fit) and fitting it.
        device: default CUDA when available, else the CPU.
        batch_size: images fitted together (and written as one part).
        resume, overwrite: what to do with a non-empty output folder.
        overlays: overlay pictures for the first ``overlays`` images.
        preset: fit preset; overrides: settings for :func:`fitkit.api.fit_config`
            (``iterations``, ``lr``, ...).
        limit: refine only the first ``limit`` images.
        body: body model; progress: show a tqdm bar.
    Raises:
        RefineError: bad arguments, an unusable dataset or output folder.
    """
    started = time.perf_counter()
    if data_term not in TERM_INPUTS:
        raise RefineError(f"unknown data term {data_term!r}; known: {', '.join(TERM_INPUTS)}")
    if data_term == "flow":
        flow = flow or "predicted"
        if flow not in FLOW_SOURCES:
            raise RefineError(f"unknown --flow {flow!r}; known: {', '.join(FLOW_SOURCES)}")
    else:
        flow = None
    if (flow == "predicted" and texture is not None and texture not in TEXTURE_MODES
            and not Path(texture).is_dir()):
        raise RefineError(f"--texture {texture!r} is neither {' nor '.join(TEXTURE_MODES)} nor a "
                          "folder of textures")
    if batch_size <= 0 or (limit is not None and limit <= 0) or overlays < 0:
        raise RefineError("--batch-size and --limit must be positive, --overlays >= 0")
    dataset = open_dataset(input, limit)
    if flow == "exact" and dataset.gt is None:
        raise RefineError(f"--flow exact needs {Path(input) / 'gt.npz'}, which does not exist")
    overrides = {key: value for key, value in overrides.items() if value is not None}
    try:
        fitter = Fitter(data_term, prior, body, device, flow_net=flow_net,
                        flow_rounds=flow_rounds, preset=preset, **overrides)
        if flow == "predicted":
            fitter.predictor(texture)  # load the network now, so a bad one stops early
    except (FileNotFoundError, ValueError) as error:
        raise RefineError(str(error)) from None

    output = Path(output)
    settings = {"input": str(Path(input).resolve()), "prior": str(prior), "data_term": data_term,
                "flow": flow, "preset": preset, "body": str(body),
                **({"flow_net": str(flow_net), "texture": str(texture),
                    "flow_rounds": flow_rounds} if flow == "predicted" else {}),
                "overrides": json.loads(json.dumps(overrides, default=str))}
    part_paths = prepare_output(output, settings, resume, overwrite)
    parts = [_read_part(path) for path in part_paths]
    done = {name for part in parts for name in part["image_names"].tolist()}
    todo = [name for name in dataset.names if name not in done]
    completed = [name for name in dataset.names if name in done]
    _write_progress(output, settings, completed)

    with tqdm(total=len(dataset.names), initial=len(completed), unit="img",
              desc="fitkit.refine", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            names = todo[start:start + batch_size]
            errors = [""] * len(names)
            try:
                sizes, init, data = _batch_inputs(dataset, names, data_term, fitter, errors,
                                                  flow, texture)
                inputs = data if isinstance(data, dict) else {TERM_INPUTS[data_term]: data}
                result = fitter(sizes, init, **inputs)
            except FitInputError as error:
                raise RefineError(str(error)) from None
            arrays = _part_arrays(names, result, errors)
            path = output / "parts" / f"batch_{len(parts):05d}.npz"
            _atomic_npz(path, arrays)
            parts.append(arrays)
            completed += names
            _write_progress(output, settings, completed)
            bar.update(len(names))

    results = _merge(parts, dataset.names)
    results_path = output / "results.npz"
    write_params(results_path, results)
    metrics = compute_metrics(fitter, dataset, results)
    metrics |= {"prior": str(prior), "data_term": data_term, "preset": preset,
                "overrides": settings["overrides"]}
    metrics_path = output / "metrics.json"
    _atomic_json(metrics_path, metrics)
    pictures = write_overlays(fitter, dataset, results, output / "overlays", overlays)
    return RefineSummary(output, results_path, metrics_path, pictures, metrics,
                         time.perf_counter() - started)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fitkit.refine",
        description="Refine the initial estimates (init.npz) of a dataset folder with SMPLify.",
    )
    parser.add_argument("--input", required=True, help="dataset folder (init.npz, images/, "
                        "keypoints/, densepose/, optional gt.npz)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument("--prior", default="gmm",
                        help="pose prior: gmm (default), vposer, cnf, or a prior file/folder")
    parser.add_argument("--data-term", default="keypoints", choices=list(TERM_INPUTS),
                        help="data term (default keypoints)")
    parser.add_argument("--flow", choices=FLOW_SOURCES,
                        help="displacements for --data-term flow: predicted (default, by the "
                        "displacement network) or exact (the true field from gt.npz)")
    parser.add_argument("--flow-net", default="auto",
                        help="displacement network: auto (default: open with --texture, else "
                        "open-notexture), open, open-notexture, or a checkpoint path")
    parser.add_argument("--texture",
                        help="the subjects' textures, for a network with texture input: a folder "
                        "of UV textures NAME.png, estimate (from each image alone), or other "
                        "(the next image's estimate; ablation); default none")
    parser.add_argument("--flow-rounds", type=int, default=1, metavar="R",
                        help="predicted flow: R rounds of predicting from the latest fit and "
                        "fitting (default 1)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1, ... (default cuda if available)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per batch (32)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run in --output")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of an earlier run in --output")
    parser.add_argument("--overlays", type=int, default=8, metavar="K",
                        help="overlay pictures for the first K images (default 8)")
    parser.add_argument("--preset", default="refine", help="fit preset: refine (default), spin")
    parser.add_argument("--iterations", type=int, help="iterations per stage (preset's: 100)")
    parser.add_argument("--lr", type=float, help="step size (preset's: 0.01)")
    parser.add_argument("--optimizer", choices=("adam", "lbfgs"), help="optimizer (preset's)")
    parser.add_argument("--limit", type=int, metavar="N", help="refine only the first N images")
    parser.add_argument("--body", default="open", help="body model (default: the open body)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m fitkit.refine``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume and args.overwrite:
        parser.error("--resume and --overwrite exclude each other")
    try:
        summary = refine_dataset(
            args.input, args.output, prior=args.prior, data_term=args.data_term, flow=args.flow,
            flow_net=args.flow_net, texture=args.texture, flow_rounds=args.flow_rounds,
            device=args.device, batch_size=args.batch_size, resume=args.resume,
            overwrite=args.overwrite, overlays=args.overlays, preset=args.preset,
            limit=args.limit, body=args.body, progress=not args.quiet,
            iterations=args.iterations, lr=args.lr, optimizer=args.optimizer,
        )
    except RefineError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; finished batches are kept in {args.output}; run the "
              "same command with --resume to continue", file=sys.stderr)
        return 130
    metrics = summary.metrics_values
    print(metrics_table(metrics))
    flagged = {name: count for name, count in metrics["flagged"].items() if count}
    print(f"{metrics['num_images']} images, {metrics['num_valid']} refined without flags"
          + (f" (flagged: {flagged})" if flagged else "") + f", {summary.seconds:.1f} s")
    print(f"results  {summary.results}\nmetrics  {summary.metrics}")
    if summary.overlays:
        print(f"overlays {summary.overlays[0].parent}/ ({len(summary.overlays)} pictures)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
