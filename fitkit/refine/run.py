"""A refine run: open the dataset and the run store, fit this worker's batches, and, when every
row is done, write the results (:mod:`fitkit.refine.report`)."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from fitkit import terms
from fitkit.fitter import LEARNED_SOLVERS, PREDICTED_TERMS, Fitter, learned_solver, term_names
from fitkit.io.dataset import Dataset, DatasetError
from fitkit.io.inputs import FitInputError
from fitkit.io.params import write_params
from fitkit.io.runs import RunError, RunStore, Shard, check_device, file_digest, write_json
from fitkit.nets.predict import TEXTURE_MODES
from fitkit.refine.folders import FolderRows, MultiViewRows, open_rows
from fitkit.refine.report import compute_metrics, merge_parts, write_overlays
from fitkit.regress import load_regressor, regressor_path
from fitkit.terms.keypoints import options_with_format

FLOW_SOURCES = ("predicted", "exact")
"""Displacement sources for the flow term: ``predicted`` by the displacement network
(``--flow-net``; by default a shipped one) from each image and its initial body; ``exact``, the
true field from ``gt.npz`` (the upper bound)."""

OUTPUTS = ("overlays", "results.npz", "metrics.json")
"""What a run writes besides its settings and parts."""


class RefineError(RunError):
    """A run that cannot go on: bad arguments, an unusable dataset, prior, body or network, an
    output folder that holds another run or that another process is writing (exit code 2; the
    message names the file and field, or the option)."""


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
    flow_net: str | None = None,
    texture: str | None = None,
    flow_rounds: int | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    overlays: int = 8,
    preset: str | None = None,
    limit: int | None = None,
    body: str = "open",
    progress: bool = True,
    shard: str | Shard | None = None,
    keypoint_format: str | None = None,
    refit_net: str | None = None,
    refit_iterations: int | None = None,
    view: int | None = None,
    groups: bool = True,
    init: str | None = None,
    regress_net: str | None = None,
    compile: bool = False,  # noqa: A002  (torch.compile's own name)
    **overrides: Any,
) -> RefineSummary:
    """Refine a dataset folder (the package docstring says what is read and written).

    Args:
        input, output: dataset and output folders.
        prior: pose prior name or path.
        data_term: registered data term(s): a name, a comma-separated string or a list.
        flow: displacement source for ``flow``: ``"predicted"`` (default) or ``"exact"`` (the
            true field from ``gt.npz``), :data:`FLOW_SOURCES`.
        flow_net: the displacement network for predicted flow: ``auto`` (``None``: ``open``
            when a texture is given, else ``open-notexture``), a shipped name or a checkpoint
            path.
        texture: the subjects' textures, for a network with texture input: a folder of UV
            textures ``NAME.png`` (e.g. a synthetic dataset's ``textures/``), ``estimate``
            (from each image alone), ``other`` (the next image's estimate; an ablation), or
            ``None`` (none known).
        flow_rounds: rounds of predicting flow (from the latest fit) and fitting it (``None``:
            1). ``flow``, ``flow_net``, ``texture`` and ``flow_rounds`` are refused where the
            data terms would ignore them (no flow term; ``texture``, ``flow_net`` and
            ``flow_rounds`` with exact flow).
        device: default CUDA when available, else the CPU; one this machine lacks is refused.
        batch_size: images fitted together (and written as one part); ``None``: the smallest
            :attr:`~fitkit.terms.DataTerm.batch_hint` of the data terms (512 for keypoints,
            32 for the dense terms and for ``refit``).
        resume, overwrite: what to do with a non-empty output folder.
        overlays: overlay pictures for the first ``overlays`` images.
        preset: fit preset; default ``"refine"``, and ``"scratch"`` with several starts for a
            folder without ``init.npz`` (:class:`~fitkit.fitter.Fitter`); overrides: settings
            for :func:`fitkit.fitter.fit_config`
            (``iterations``, ``lr``, ...).
        limit: refine only the first ``limit`` images.
        body: body model; progress: show a tqdm bar.
        shard: ``"i/N"`` or a :class:`~fitkit.io.runs.Shard`: fit only batches ``k`` with
            ``k % N == i``; under torchrun each rank is a shard.
        keypoint_format: the format of ``keypoints/NAME_keypoints.json`` (``coco17``, ...;
            ``None``: the one the files name, else by their count), set in the keypoints term's
            options over the preset's.
        view: refine view ``view`` of a multi-view folder alone, as the single-view folder
            ``views/VIEW`` it is (the same run as ``input=INPUT/views/VIEW``).
        groups: fit the folder's groups (:mod:`fitkit.refine.folders`): a multi-view folder's
            subjects as one world body each, a sequences folder's frames with a shared shape
            and the temporal term; ``False`` fits a sequences folder's frames one by one.
        init: ``"regress"``: a folder without ``init.npz`` starts from the regressor's estimates
            (:func:`fitkit.refine.inputs.regressed_init`) with the network ``regress_net``
            (``"auto"``: the shipped open regressor, or a checkpoint path); ``None``:
            ``init.npz``, else from scratch.

    The run's settings (``settings.json``, compared on resume) hold the content digests of
    ``init.npz``, ``gt.npz``, the body file and the prior or network paths, so a resume
    after one of them changed is refused. The run holds a writer lock on the output folder
    (``.locks/writer.lock``, or ``.locks/shard-I-N.lock`` for a shard) while it writes: a second
    run on the same folder (or a second copy of the same shard) is refused while the first one
    lives; the lock of a killed run is taken over. A part that cannot be read (damaged after it
    was written) is deleted with a warning and its rows are refined again.

    Raises:
        RefineError: bad arguments, an unusable dataset, prior, body or network, an output
            folder that holds another run or is being written by another process.
        OSError: the machine cannot write the output folder (disk full, no permission); what
            was written is complete (atomic writes).
    """
    started = time.perf_counter()
    try:
        learned = learned_solver(data_term)
        names = (learned,) if learned else term_names(data_term)
        workers = distributed_shard()
        shard = workers or (Shard.parse(shard) if isinstance(shard, str) else shard or Shard())
    except (FitInputError, ValueError) as error:
        raise RefineError(str(error)) from None
    ignored_flags(names, flow, flow_net, texture, flow_rounds)
    if "flow" in names:
        flow = flow or "predicted"
        if flow not in FLOW_SOURCES:
            raise RefineError(f"unknown --flow {flow!r}; known: {', '.join(FLOW_SOURCES)}")
    flow_net = "auto" if flow_net is None else flow_net
    flow_rounds = 1 if flow_rounds is None else flow_rounds
    if (flow == "predicted" and texture is not None and texture not in TEXTURE_MODES
            and not Path(texture).is_dir()):
        raise RefineError(f"--texture {texture!r} is neither {' nor '.join(TEXTURE_MODES)} nor a "
                          "folder of textures")
    if compile and learned:
        raise RefineError("--compile compiles SMPLify's objective; --data-term refit runs a "
                          "network and would ignore it")
    if batch_size is None:
        batch_size = default_batch_size(names)
    if batch_size <= 0 or (limit is not None and limit <= 0) or overlays < 0:
        raise RefineError("--batch-size and --limit must be positive, --overlays >= 0")
    try:
        device = worker_device(device)
        check_device(device)
    except ValueError as error:
        raise RefineError(f"--device: {error}") from None
    try:
        rows = open_rows(input, limit, view, groups)
        names = rows.data_terms(names, learned=learned is not None)
    except DatasetError as error:
        raise RefineError(str(error)) from None
    dataset = rows.dataset
    if init == "regress":
        if dataset.init:
            raise RefineError(f"--init regress: {dataset.root / 'init.npz'} exists and would be "
                              "ignored; drop --init regress to refine it")
        try:
            rows.read_options["regressor"] = load_regressor(regress_net or "auto")
        except (FileNotFoundError, ValueError) as error:
            raise RefineError(f"--regress-net: {error}") from None
    elif init is not None:
        raise RefineError(f"unknown --init {init!r}; known: regress")
    if flow == "exact" and dataset.gt is None:
        raise RefineError(f"--flow exact needs {dataset.root / 'gt.npz'}, which does not exist")
    unread = [name for name in names if name not in (*PREDICTED_TERMS, *LEARNED_SOLVERS)
              and terms.term_class(name).dataset_pattern is None
              and not terms.term_class(name).links_samples]
    if unread:
        raise RefineError(f"data term(s) {', '.join(unread)} have no files in dataset folders "
                          "(no dataset_pattern)")
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if keypoint_format is not None:
        if "keypoints" not in names:
            raise RefineError(f"--keypoint-format would be ignored: the data term(s) "
                              f"{','.join(names)} have no keypoints term; drop it")
        try:
            overrides["term_options"] = options_with_format(
                keypoint_format, overrides.get("term_options"))
        except ValueError as error:
            raise RefineError(f"--keypoint-format: {error}") from None
    try:
        fitter = Fitter(names, prior, body, device, flow_net=flow_net, compile=compile,
                        flow_rounds=flow_rounds, preset=preset, **overrides,
                        **({"refit_net": refit_net or "auto", "refit_iterations":
                            refit_iterations} if learned else {}))
        if flow == "predicted":
            fitter.predictor(texture)  # load the network now, so a bad one stops early
    except (FileNotFoundError, ValueError) as error:
        raise RefineError(str(error)) from None

    output = Path(output)
    data_term_setting = names[0] if len(names) == 1 else ",".join(names)
    settings = {"input": str(rows.root.resolve()), "prior": str(prior),
                "data_term": data_term_setting, "flow": flow,
                "preset": preset or ("refine" if "global_orient" in dataset.init
                                     or init == "regress" else "scratch"),
                **({"init": init, "regress_net": str(regress_net or "auto"),
                    "regress_net_digest": file_digest(regressor_path(regress_net or "auto"))}
                   if init == "regress" else {}),
                "body": str(body),
                **({"flow_net": str(flow_net), "texture": str(texture),
                    "flow_rounds": flow_rounds} if flow == "predicted" else {}),
                **({"refit_net": str(refit_net or "auto"), "refit_iterations": refit_iterations}
                   if learned else {}),
                "overrides": overrides, **input_digests(dataset, fitter, prior, flow_net),
                **rows.settings()}
    writer = RunStore.SOLE_WRITER if shard.count == 1 else f"shard-{shard.index}-{shard.count}"
    try:
        store = RunStore(output, settings, OUTPUTS, resume=resume, overwrite=overwrite,
                         shared=shard.count > 1 and not overwrite, writer=writer)
    except RunError as error:
        raise RefineError(str(error)) from None
    with store:
        return _run(store, rows, fitter, shard, flow, texture, batch_size, overlays,
                    progress, started)


def default_batch_size(names: tuple[str, ...]) -> int:
    """The batch size of a refinement with the data terms ``names`` when none is given: the
    smallest :attr:`~fitkit.terms.DataTerm.batch_hint` (32 for a learned solver)."""
    return min(32 if name in LEARNED_SOLVERS else terms.term_class(name).batch_hint
               for name in names)


def ignored_flags(names: tuple[str, ...], flow: str | None, flow_net: str | None,
                  texture: str | None, flow_rounds: int | None) -> None:
    """Refuse flow options that the data terms would ignore (``None``: not given).

    Raises:
        RefineError: naming the options and why they would be ignored.
    """
    given = {"--flow": flow, "--flow-net": flow_net, "--texture": texture,
             "--flow-rounds": flow_rounds}
    if "flow" not in names:
        reason = f"the data term(s) {','.join(names)} have no flow term"
    elif flow == "exact":
        given.pop("--flow")
        reason = "--flow exact takes the true field from gt.npz, not a network's prediction"
    else:
        return
    ignored = [option for option, value in given.items() if value is not None]
    if ignored:
        raise RefineError(f"{', '.join(ignored)} would be ignored: {reason}; drop "
                          f"{'it' if len(ignored) == 1 else 'them'}")


def input_digests(dataset: Dataset, fitter: Fitter, prior: str, flow_net: str
                  ) -> dict[str, str | None]:
    """Content digests of the run's input files (:func:`fitkit.io.runs.file_digest`), by
    name: ``init.npz`` and ``gt.npz`` (``None`` when absent), the body file, and the prior and
    flow network when given as paths. (Per-image files are not digested: a dataset's images
    are too many to read on every start.)"""
    init, gt = dataset.root / "init.npz", dataset.root / "gt.npz"
    digests = {"init.npz": file_digest(init) if init.is_file() else None,
               "gt.npz": file_digest(gt) if gt.is_file() else None}
    if Path(fitter.body.source).is_file():
        digests["body_file"] = file_digest(fitter.body.source)
    for key, value in (("prior_file", prior), ("flow_net_file", flow_net)):
        if isinstance(value, str | os.PathLike) and os.path.exists(value):
            digests[key] = file_digest(value)
    return digests


def _run(store: RunStore, rows: FolderRows | MultiViewRows, fitter: Fitter, shard: Shard,
         flow: str | None, texture: str | None, batch_size: int, overlays: int, progress: bool,
         started: float) -> RefineSummary:
    """Fit this worker's batches that are not done into ``store``; write the results when
    every row is done (:func:`refine_dataset`)."""
    for message in store.remove_damaged_parts():
        print(f"fitkit.refine: warning: {message}; its rows are refined again", file=sys.stderr)
    count = len(rows.names)
    batches = rows.batches(batch_size)
    mine = [batch for k, batch in enumerate(batches) if shard.owns(k)]
    todo = [batch for batch in mine if not _covered(store, *batch)]
    with tqdm(total=sum(b - a for a, b in mine), initial=sum(b - a for a, b in mine)
              - sum(b - a for a, b in todo), unit="img", disable=not progress,
              desc="fitkit.refine" + (f" {shard}" if shard.count > 1 else "")) as bar:
        for start, stop in todo:
            try:
                arrays = rows.fit(fitter, start, stop, flow, texture)
            except ValueError as error:  # FitInputError, or a body that lacks what a term needs
                raise RefineError(str(error)) from None
            store.write_part(start, stop, arrays)
            bar.update(stop - start)

    output = store.root
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
                _write_results(store, fitter, rows, overlays, summary)
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


def _write_results(store: RunStore, fitter: Fitter, rows: FolderRows | MultiViewRows,
                   overlays: int, summary: RefineSummary) -> None:
    """Merge the parts into ``results.npz``, compute ``metrics.json``, draw the overlays."""
    parts = [store.read_part(*part) for part in store.parts()]
    results = merge_parts(parts, rows.names)
    write_params(summary.results, results)
    metrics = compute_metrics(fitter.body, rows.report(fitter.body), results)
    metrics |= {key: store.settings[key] for key in ("prior", "data_term", "preset", "overrides")}
    write_json(summary.metrics, metrics)
    summary.metrics_values = metrics
    summary.overlays = write_overlays(fitter.body, *rows.overlay_inputs(fitter.body, results),
                                      store.root / "overlays", overlays)
    summary.finished = True
