"""A refine run: open the dataset and the run store, fit this worker's batches, and, when every
row is done, write the results (:mod:`fitkit.refine.report`)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from fitkit import terms
from fitkit.fitter import PREDICTED_TERMS, Fitter, term_names
from fitkit.fitting import FitResult
from fitkit.geometry import Camera
from fitkit.io.dataset import Dataset, DatasetError, open_dataset
from fitkit.io.inputs import FitInputError, image_sizes, read_images
from fitkit.io.params import PARAM_SIZES, write_params
from fitkit.io.runs import RunError, RunStore, Shard, write_json
from fitkit.nets.predict import TEXTURE_MODES
from fitkit.refine.report import compute_metrics, merge_parts, write_overlays

FLOW_SOURCES = ("predicted", "exact")
"""Displacement sources for the flow term: ``predicted`` by the displacement network
(``--flow-net``; by default a shipped one) from each image and its initial body; ``exact``, the
true field from ``gt.npz`` (the upper bound)."""

OUTPUTS = ("overlays", "results.npz", "metrics.json")
"""What a run writes besides its settings and parts."""


class RefineError(Exception):
    """A run that cannot go on: bad arguments, an unusable dataset or output folder."""


@dataclass
class RefineSummary:
    """What a run (or one worker of it) produced.

    Attributes:
        output: the output folder; results, metrics: ``results.npz`` and ``metrics.json``;
        overlays: the overlay pictures; metrics_values: ``metrics.json``'s content (empty when
        this worker did not write the results); seconds: wall time; finished: whether this
        worker wrote the results (every row done); rows_done, rows: rows finished and in all.
    """

    output: Path
    results: Path
    metrics: Path
    overlays: list[Path] = field(default_factory=list)
    metrics_values: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    finished: bool = False
    rows_done: int = 0
    rows: int = 0


# --------------------------------------------------------------------------- one batch


def batch_inputs(
    dataset: Dataset, names: list[str], fitter: Fitter, errors: list[str],
    flow: str | None = None, texture: str | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """Sizes, initial parameters and every data term's input of one batch, read through the
    terms' own readers from their ``dataset_pattern`` files; per-sample problems go to
    ``errors`` and blank that sample's observations."""
    init = dataset.rows(names)
    sizes = image_sizes([dataset.image_path(name) for name in names], errors)
    fallback = np.round(2.0 * init["camera_center"] + 1.0).astype(np.int64)
    sizes = np.where((sizes > 0).all(axis=1, keepdims=True), sizes, fallback)
    inputs: dict[str, Any] = {}
    for name, keyword in fitter.keywords.items():
        cls = terms.term_class(name)
        if name == "flow" and flow == "exact":
            inputs[keyword] = exact_displacements(fitter, init, dataset.rows(names, "gt"), sizes)
        elif name in PREDICTED_TERMS and cls.dataset_pattern is None:
            inputs |= predicted_inputs(dataset, names, fitter, errors, texture)
        else:
            inputs[keyword] = cls.read(dataset.files(cls.dataset_pattern, names), errors)
    bad = np.array([bool(message) for message in errors])
    for name, keyword in fitter.keywords.items():
        if keyword in inputs:
            inputs[keyword] = terms.term_class(name).blank(inputs[keyword], bad)
    if "images" in inputs:  # images to predict from: the bad ones get no targets
        inputs["usable"] = ~bad
    return sizes, init, inputs


def predicted_inputs(
    dataset: Dataset, names: list[str], fitter: Fitter, errors: list[str],
    texture: str | None = None,
) -> dict[str, Any]:
    """What :meth:`fitkit.fitter.Fitter.fit` needs to predict flow: the images (an unreadable
    one is blank and its message goes to ``errors``) and the texture source.

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
    fitter: Fitter, init: dict[str, np.ndarray], gt: dict[str, np.ndarray], sizes: np.ndarray,
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


def part_arrays(names: list[str], result: FitResult, errors: list[str]) -> dict[str, np.ndarray]:
    """One batch's rows: parameters, energies, flags and error messages."""
    arrays: dict[str, np.ndarray] = {"image_names": np.array(names)}
    arrays |= {key: value.cpu().float().numpy() for key, value in result.params.items()}
    arrays["energy"] = result.energy.cpu().double().numpy()
    arrays |= {f"energy_{key}": value.cpu().double().numpy() for key, value in result.terms.items()}
    arrays |= {f"flag_{key}": value.cpu().numpy() for key, value in result.flags.items()}
    arrays["flag_bad_input"] = np.array([bool(message) for message in errors])
    arrays["error"] = np.array(errors, dtype=str)
    return arrays


# --------------------------------------------------------------------------- workers


def distributed_shard() -> Shard | None:
    """This process's shard when it runs under torchrun (``WORLD_SIZE`` > 1): joins the process
    group (nccl on CUDA, else gloo) and returns ``Shard(rank, world)``; ``None`` otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return Shard(dist.get_rank(), dist.get_world_size())


def worker_device(device: str | None) -> str | None:
    """The device of this worker: ``device``, or under torchrun with CUDA its local GPU."""
    if device is None and dist.is_initialized() and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


# --------------------------------------------------------------------------- the run


def refine_dataset(
    input: str | os.PathLike,
    output: str | os.PathLike,
    prior: str = "gmm",
    data_term: str | list[str] = "keypoints",
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
    shard: str | Shard | None = None,
    **overrides: Any,
) -> RefineSummary:
    """Refine a dataset folder (the package docstring says what is read and written).

    Args:
        input, output: dataset and output folders.
        prior: pose prior name or path.
        data_term: registered data term(s): a name, a comma-separated string or a list.
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
        preset: fit preset; overrides: settings for :func:`fitkit.fitter.fit_config`
            (``iterations``, ``lr``, ...).
        limit: refine only the first ``limit`` images.
        body: body model; progress: show a tqdm bar.
        shard: ``"i/N"`` or a :class:`~fitkit.io.runs.Shard`: fit only batches ``k`` with
            ``k % N == i``; under torchrun each rank is a shard.
    Raises:
        RefineError: bad arguments, an unusable dataset or output folder.
    """
    started = time.perf_counter()
    try:
        names = term_names(data_term)
        workers = distributed_shard()
        shard = workers or (Shard.parse(shard) if isinstance(shard, str) else shard or Shard())
    except (FitInputError, ValueError) as error:
        raise RefineError(str(error)) from None
    if "flow" in names:
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
    try:
        dataset = open_dataset(input, limit)
    except DatasetError as error:
        raise RefineError(str(error)) from None
    if flow == "exact" and dataset.gt is None:
        raise RefineError(f"--flow exact needs {Path(input) / 'gt.npz'}, which does not exist")
    unread = [name for name in names if terms.term_class(name).dataset_pattern is None
              and name not in PREDICTED_TERMS]
    if unread:
        raise RefineError(f"data term(s) {', '.join(unread)} have no files in dataset folders "
                          "(no dataset_pattern)")
    overrides = {key: value for key, value in overrides.items() if value is not None}
    try:
        fitter = Fitter(names, prior, body, worker_device(device), flow_net=flow_net,
                        flow_rounds=flow_rounds, preset=preset, **overrides)
        if flow == "predicted":
            fitter.predictor(texture)  # load the network now, so a bad one stops early
    except (FileNotFoundError, ValueError) as error:
        raise RefineError(str(error)) from None

    output = Path(output)
    data_term_setting = names[0] if len(names) == 1 else ",".join(names)
    settings = {"input": str(Path(input).resolve()), "prior": str(prior),
                "data_term": data_term_setting, "flow": flow, "preset": preset,
                "body": str(body),
                **({"flow_net": str(flow_net), "texture": str(texture),
                    "flow_rounds": flow_rounds} if flow == "predicted" else {}),
                "overrides": overrides}
    try:
        store = RunStore(output, settings, OUTPUTS, resume=resume, overwrite=overwrite,
                         shared=shard.count > 1 and not overwrite)
    except RunError as error:
        raise RefineError(str(error)) from None
    count = len(dataset.names)
    batches = [(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]
    mine = [batch for k, batch in enumerate(batches) if shard.owns(k)]
    todo = [batch for batch in mine if not _covered(store, *batch)]
    with tqdm(total=sum(b - a for a, b in mine), initial=sum(b - a for a, b in mine)
              - sum(b - a for a, b in todo), unit="img", disable=not progress,
              desc="fitkit.refine" + (f" {shard}" if shard.count > 1 else "")) as bar:
        for start, stop in todo:
            batch_names = dataset.names[start:stop]
            errors = [""] * len(batch_names)
            try:
                sizes, init, inputs = batch_inputs(dataset, batch_names, fitter, errors, flow,
                                                   texture)
                result = fitter(sizes, init, **inputs)
            except FitInputError as error:
                raise RefineError(str(error)) from None
            store.write_part(start, stop, part_arrays(batch_names, result, errors))
            bar.update(stop - start)

    summary = RefineSummary(output, output / "results.npz", output / "metrics.json", rows=count)
    if dist.is_initialized():
        dist.barrier()
        if dist.get_rank() != 0:
            summary.rows_done = _rows_done(store, count)
            summary.seconds = time.perf_counter() - started
            return summary
    summary.rows_done = _rows_done(store, count)
    if summary.rows_done == count:
        with store.lock("results") as held:
            if held:
                _write_results(store, fitter, dataset, overlays, summary)
    summary.seconds = time.perf_counter() - started
    return summary


def _covered(store: RunStore, start: int, stop: int) -> bool:
    """Whether the rows ``[start, stop)`` are all in finished parts."""
    done = np.zeros(stop - start, dtype=bool)
    for first, last in store.parts():
        low, high = max(first, start), min(last, stop)
        if low < high:
            done[low - start:high - start] = True
    return bool(done.all())


def _rows_done(store: RunStore, count: int) -> int:
    """How many of the run's ``count`` rows are in finished parts."""
    done = np.zeros(count, dtype=bool)
    for first, last in store.parts():
        done[first:min(last, count)] = True
    return int(done.sum())


def _write_results(store: RunStore, fitter: Fitter, dataset: Dataset,
                   overlays: int, summary: RefineSummary) -> None:
    """Merge the parts into ``results.npz``, compute ``metrics.json``, draw the overlays."""
    parts = [store.read_part(*rows) for rows in store.parts()]
    results = merge_parts(parts, dataset.names)
    write_params(summary.results, results)
    metrics = compute_metrics(fitter.body, dataset, results)
    metrics |= {key: store.settings[key] for key in ("prior", "data_term", "preset", "overrides")}
    write_json(summary.metrics, metrics)
    summary.metrics_values = metrics
    summary.overlays = write_overlays(fitter.body, dataset, results, store.root / "overlays",
                                      overlays)
    summary.finished = True
