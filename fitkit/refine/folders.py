"""What a refine run fits, batch by batch: the rows of a dataset folder and, for folders whose
samples belong together, their groups (:class:`~fitkit.fitting.SampleGroup`).

Three kinds of folder (``docs/formats.md``):

- **single-view** (DESIGN.md's dataset folder): a row per image, batches of ``batch_size``
  rows, each image fitted on its own (:class:`FolderRows`).
- **sequences** (``python -m fitkit.synth --frames F``): a single-view folder plus
  ``sequences.npz`` (``image_names``, ``sequence``, ``frame``). A batch holds whole sequences
  (each sequence's rows must be consecutive in ``init.npz``); the frames of a sequence are one
  group that shares ``betas`` (``shares="betas"``), and the temporal term (``"temporal"``)
  links each frame to the frame before it in its sequence (the nearest smaller frame number in
  the batch). Rows stay frames.
- **multi-view** (``python -m fitkit.synth --views V``): ``cameras.npz`` (``image_names``
  (N,), ``R`` (N, V, 3, 3), ``t`` (N, V, 3), ``focal_length``, ``camera_center``,
  ``image_size`` (N, V, 2)), ``views/K/`` single-view folders whose rows are named by subject,
  and an optional world-frame ``gt.npz`` (a row per subject). A batch holds whole subjects
  (``batch_size // V`` of them, at least one), each subject's V views as consecutive batch rows
  with their calibrated cameras and their own ``views/K/init.npz`` rows (camera-frame
  estimates, pooled into one world body by the solver), one ``shares="all"`` group per
  subject. The result has a row per subject, in the world frame (:class:`MultiViewRows`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fitkit.body import BodyModel
from fitkit.fitter import Fitter
from fitkit.fitting import SampleGroup
from fitkit.fitting.groups import GroupLayout, pool_rows, rest_root
from fitkit.fitting.settings import take_rows
from fitkit.geometry import Camera, world_to_camera_params
from fitkit.io.dataset import (
    CAMERA_FILE,
    SEQUENCE_FILE,
    VIEWS_FOLDER,
    Dataset,
    DatasetError,
    check_names,
    open_dataset,
    read_dataset_params,
)
from fitkit.io.npz import FileKeyError, read_npz
from fitkit.io.params import CAMERA_KEYS, PARAM_SIZES, ParamsFileError
from fitkit.io.runs import file_digest
from fitkit.refine.inputs import batch_inputs, part_arrays, predicted_inputs
from fitkit.terms.temporal import previous_frames

CAMERA_SHAPES: dict[str, tuple[int, ...]] = {
    "R": (3, 3), "t": (3,), "focal_length": (2,), "camera_center": (2,), "image_size": (2,)}
"""Per-view fields of ``cameras.npz`` and their shapes after ``(N, V)``."""

TEMPORAL = "temporal"
"""The data term that links the frames of a sequence (:mod:`fitkit.terms.temporal`)."""


# --------------------------------------------------------------------------- reading


def _names(arrays: dict[str, np.ndarray], path: Path) -> list[str]:
    """``image_names`` of an ``.npz`` as plain, unique file stems.

    Raises:
        ParamsFileError: missing, not (N,) strings, repeated or not plain stems.
    """
    if "image_names" not in arrays:
        raise ParamsFileError(path, "image_names", "missing")
    names = arrays["image_names"]
    if names.ndim != 1 or (names.size and names.dtype.kind != "U"):
        raise ParamsFileError(path, "image_names",
                              f"expected (N,) strings, got {names.dtype} {names.shape}")
    names = names.astype(str).tolist()
    if len(set(names)) != len(names):
        raise ParamsFileError(path, "image_names", "names must be unique")
    check_names(names, path)
    return names


def read_cameras(path: str | os.PathLike) -> tuple[list[str], dict[str, np.ndarray]]:
    """A multi-view folder's ``cameras.npz``.

    Returns:
        the subject names (N,) and :data:`CAMERA_SHAPES`' fields ``(N, V, ...)`` float32.
    Raises:
        DatasetError: a missing or unreadable file, a missing key, a wrong shape, a rotation
            that is not one (naming the file, key and row), an image size that is not positive.
    """
    path = Path(path)
    try:
        arrays = read_npz(path, ParamsFileError, "cameras")
        names = _names(arrays, path)
        count = len(names)
        views = None
        cameras = {}
        for key, tail in CAMERA_SHAPES.items():
            if key not in arrays:
                raise ParamsFileError(path, key, "missing")
            value = arrays[key]
            views = value.shape[1] if views is None and value.ndim > 1 else views
            expected = (count, views, *tail)
            if value.shape != expected or value.dtype.kind not in "fiu":
                raise ParamsFileError(path, key, f"expected numbers of shape "
                                      f"({', '.join(map(str, expected))}) (N subjects, V views),"
                                      f" got {value.dtype} {value.shape}")
            cameras[key] = value.astype(np.float32)
        if not views:
            raise ParamsFileError(path, "R", "no views")
        R = cameras["R"].astype(np.float64)
        error = np.abs(R @ R.transpose(0, 1, 3, 2) - np.eye(3)).max(axis=(-1, -2))
        error = np.where(np.isfinite(error), error, 0.0)  # non-finite: flagged per sample
        bad = np.argwhere((error > 1e-3) | (np.linalg.det(np.nan_to_num(R)) < 0))
        if len(bad):
            row, view = bad[0]
            raise ParamsFileError(path, "R", f"row {row} ({names[row]}), view {view} is not a "
                                  "rotation (R Rᵀ = I, det +1)")
        if not (np.nan_to_num(cameras["image_size"], nan=1.0) > 0).all():
            raise ParamsFileError(path, "image_size", "image sizes must be positive")
    except (FileNotFoundError, FileKeyError) as error:
        raise DatasetError(str(error)) from None
    return names, cameras


@dataclass
class MultiViewFolder:
    """A multi-view folder, read (module docstring).

    Attributes:
        root: the folder.
        names: subject names, in ``cameras.npz`` order (the result rows).
        views: the V per-view datasets (``views/K``).
        cameras: :data:`CAMERA_SHAPES`' fields ``(N, V, ...)`` in ``names`` order.
        gt: world-frame ground truth in ``names`` order, or ``None``.
    """

    root: Path
    names: list[str]
    views: list[Dataset]
    cameras: dict[str, np.ndarray]
    gt: dict[str, np.ndarray] | None

    @property
    def num_views(self) -> int:
        """V."""
        return len(self.views)


def is_multiview(root: str | os.PathLike) -> bool:
    """Whether ``root`` is a multi-view folder (it holds ``cameras.npz``)."""
    return (Path(root) / CAMERA_FILE).is_file()


def _rows(arrays: dict[str, np.ndarray], names: list[str], have: list[str], path: Path,
          what: str) -> dict[str, np.ndarray]:
    """The rows of ``names`` in parameter arrays whose rows are ``have``.

    Raises:
        DatasetError: names that ``have`` lacks (named with the file).
    """
    missing = sorted(set(names) - set(have))
    if missing:
        raise DatasetError(f"{path}: key 'image_names' lacks {missing[:5]} of {what}")
    index = {name: row for row, name in enumerate(have)}
    picked = [index[name] for name in names]
    return {key: value[picked] for key, value in arrays.items()}


def open_multiview(root: str | os.PathLike, limit: int | None = None) -> MultiViewFolder:
    """Read a multi-view folder: ``cameras.npz``, every view's dataset, the world ``gt.npz``.

    Args:
        root: the folder; limit: keep the first ``limit`` subjects.
    Raises:
        DatasetError: a bad ``cameras.npz``, a missing view folder, a view or ``gt.npz``
            without a row for a subject (naming the file and key).
    """
    root = Path(root)
    path = root / CAMERA_FILE
    names, cameras = read_cameras(path)
    names = names[:limit]
    if not names:
        raise DatasetError(f"{path}: key 'image_names' has no rows: nothing to refine")
    cameras = {key: value[: len(names)] for key, value in cameras.items()}
    views = []
    for view in range(cameras["R"].shape[1]):
        folder = root / VIEWS_FOLDER / str(view)
        if not folder.is_dir():
            raise DatasetError(f"{folder} not found: {path} has {cameras['R'].shape[1]} views "
                               "(key 'R'), each needs its folder views/K")
        dataset = open_dataset(folder)
        if not dataset.init:
            raise DatasetError(f"{folder / 'init.npz'} not found: each view of a multi-view "
                               "folder needs its initial estimates")
        init = _rows(dataset.init, names, dataset.names, folder / "init.npz", path.name)
        gt = None if dataset.gt is None else _rows(dataset.gt, names, dataset.names,
                                                   folder / "gt.npz", path.name)
        views.append(Dataset(folder, list(names), init, gt))
    gt = None
    if (root / "gt.npz").is_file():
        try:
            arrays = read_dataset_params(root / "gt.npz")
        except (FileNotFoundError, ValueError) as error:
            raise DatasetError(str(error)) from None
        have = arrays.pop("image_names").tolist()
        gt = _rows(arrays, names, have, root / "gt.npz", path.name)
    return MultiViewFolder(root, list(names), views, cameras, gt)


@dataclass
class SequenceIndex:
    """Which sequence and frame each row of a dataset is.

    Attributes:
        sequence: ``(N,)`` int64 per row (in the dataset's order); frame: ``(N,)`` int64.
    """

    sequence: np.ndarray
    frame: np.ndarray


def read_sequences(path: str | os.PathLike, names: list[str]) -> SequenceIndex:
    """``sequences.npz`` for the rows ``names`` of its dataset.

    Raises:
        DatasetError: a missing key, wrong shapes or types, a row it lacks, a frame number twice
            in a sequence, or a sequence whose rows are not consecutive in ``names`` (naming
            the file and key).
    """
    path = Path(path)
    try:
        arrays = read_npz(path, ParamsFileError, "sequences")
        have = _names(arrays, path)
        for key in ("sequence", "frame"):
            if key not in arrays:
                raise ParamsFileError(path, key, "missing")
            if arrays[key].shape != (len(have),) or arrays[key].dtype.kind not in "iu":
                raise ParamsFileError(path, key, f"expected ({len(have)},) integers (one per "
                                      f"image name), got {arrays[key].dtype} "
                                      f"{arrays[key].shape}")
    except (FileNotFoundError, FileKeyError) as error:
        raise DatasetError(str(error)) from None
    rows = _rows({key: arrays[key].astype(np.int64) for key in ("sequence", "frame")}, names,
                 have, path, "init.npz")
    sequence, frame = rows["sequence"], rows["frame"]
    starts = np.flatnonzero(np.r_[True, sequence[1:] != sequence[:-1]])
    if len(starts) != len(np.unique(sequence)):
        again = next(value for value in sequence[starts]
                     if (sequence[starts] == value).sum() > 1)
        raise DatasetError(f"{path}: key 'sequence': the rows of sequence {again} are not "
                           "consecutive in init.npz; keep each sequence's frames together")
    pairs = sequence * (int(frame.max(initial=0)) + 1) + frame
    if len(np.unique(pairs)) != len(pairs):
        raise DatasetError(f"{path}: key 'frame': a frame number appears twice in a sequence")
    return SequenceIndex(sequence, frame)


def sequence_batches(sequence: np.ndarray, batch_size: int) -> list[tuple[int, int]]:
    """Row ranges of whole sequences, as many as fit in ``batch_size`` rows (a longer
    sequence alone).

    Args:
        sequence: ``(N,)`` the sequence of each row (each sequence's rows consecutive).
    """
    bounds = [*np.flatnonzero(np.r_[True, sequence[1:] != sequence[:-1]]).tolist(),
              len(sequence)]
    batches: list[tuple[int, int]] = []
    begin = 0
    for first, stop in zip(bounds[:-1], bounds[1:], strict=True):  # sequence [first, stop)
        if stop - begin > batch_size and first > begin:
            batches.append((begin, first))
            begin = first
    if begin < len(sequence):
        batches.append((begin, len(sequence)))
    return batches


def concat_rows(values: list[Any]) -> Any:
    """Batch inputs of several batches, one after the other: arrays and tensors along their
    first axis, dicts entry by entry, lists item by item; anything else (a texture mode,
    ``None``) must be the same in all and is kept."""
    first = values[0]
    if isinstance(first, np.ndarray):
        return np.concatenate(values)
    if isinstance(first, torch.Tensor):
        return torch.cat(values)
    if isinstance(first, dict):
        return {key: concat_rows([value[key] for value in values]) for key in first}
    if isinstance(first, list):
        return [item for value in values for item in value]
    if any(value != first for value in values[1:]):
        raise ValueError(f"batch inputs differ between views: {values}")
    return first


# --------------------------------------------------------------------------- rows to fit


@dataclass
class FolderRows:
    """The rows of a single-view folder, grouped by sequence when ``sequences`` is given
    (module docstring).

    Attributes:
        dataset: the folder.
        sequences: the rows' sequences and frames, or ``None`` (each row on its own).
        read_options: more keyword arguments for :func:`~fitkit.refine.inputs.batch_inputs`.
    """

    dataset: Dataset
    sequences: SequenceIndex | None = None
    read_options: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        """The folder the run reads."""
        return self.dataset.root

    @property
    def names(self) -> list[str]:
        """The result rows."""
        return self.dataset.names

    def data_terms(self, names: tuple[str, ...], learned: bool = False) -> tuple[str, ...]:
        """The run's data terms: ``names`` plus the temporal term for sequences.

        Raises:
            DatasetError: the temporal term asked for on a folder without sequences.
        """
        if self.sequences is None:
            if TEMPORAL in names:
                raise DatasetError(f"--data-term {TEMPORAL} links the frames of a sequence: "
                                   f"{self.root / SEQUENCE_FILE} not found (or --no-groups)")
            return names
        return names if learned or TEMPORAL in names else (*names, TEMPORAL)

    def settings(self) -> dict[str, Any]:
        """What the run's settings add for this layout (nothing for a plain folder)."""
        if self.sequences is None:
            return {}
        return {"layout": "sequences",
                "sequences_file": file_digest(self.root / SEQUENCE_FILE)}

    def batches(self, batch_size: int) -> list[tuple[int, int]]:
        """Row ranges fitted together (whole sequences)."""
        if self.sequences is None:
            count = len(self.names)
            return [(start, min(start + batch_size, count))
                    for start in range(0, count, batch_size)]
        return sequence_batches(self.sequences.sequence, batch_size)

    def fit(self, fitter: Fitter, start: int, stop: int, flow: str | None = None,
            texture: str | None = None) -> dict[str, np.ndarray]:
        """Read and fit rows ``[start, stop)``.

        Returns:
            the part file's arrays (:func:`~fitkit.refine.inputs.part_arrays`).
        Raises:
            ValueError: inputs the fitter refuses.
        """
        names = self.names[start:stop]
        errors = [""] * len(names)
        sizes, init, inputs = batch_inputs(self.dataset, names, fitter, errors, flow, texture,
                                           **self.read_options)
        if fitter.learned:  # ReFit reads the pixels
            inputs["images"] = predicted_inputs(self.dataset, names, fitter, errors)["images"]
        if self.sequences is not None:
            sequence = self.sequences.sequence[start:stop]
            inputs["groups"] = tuple(
                SampleGroup(tuple(np.flatnonzero(sequence == value).tolist()), shares="betas")
                for value in np.unique(sequence))
            if TEMPORAL in fitter.keywords:
                inputs[fitter.keywords[TEMPORAL]] = previous_frames(
                    sequence, self.sequences.frame[start:stop])
        return part_arrays(names, fitter(sizes, init, **inputs), errors)

    def report(self, body: BodyModel) -> Dataset:
        """The dataset metrics compare the results with (``init`` and ``gt`` in their frame)."""
        return self.dataset

    def overlay_inputs(self, body: BodyModel, results: dict[str, np.ndarray]
                       ) -> tuple[Dataset, dict[str, np.ndarray]]:
        """The dataset and results to draw over its images."""
        return self.dataset, results


@dataclass
class MultiViewRows:
    """The subjects of a multi-view folder, each fitted as one world body from all its views
    (module docstring).

    Attributes:
        folder: the folder.
        read_options: more keyword arguments for :func:`~fitkit.refine.inputs.batch_inputs`.
    """

    folder: MultiViewFolder
    read_options: dict[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.folder.root

    @property
    def names(self) -> list[str]:
        """The result rows: the subjects."""
        return self.folder.names

    @property
    def dataset(self) -> Dataset:
        """The subjects with view 0's initial estimates (camera frame) and the world ground
        truth (what the run's settings and checks read)."""
        return Dataset(self.root, self.names, self.folder.views[0].init, self.folder.gt)

    def data_terms(self, names: tuple[str, ...], learned: bool = False) -> tuple[str, ...]:
        """The run's data terms.

        Raises:
            DatasetError: the temporal term asked for (views are not frames).
        """
        if TEMPORAL in names:
            raise DatasetError(f"--data-term {TEMPORAL} links the frames of a sequence; "
                               f"{self.root} is a multi-view folder")
        return names

    def settings(self) -> dict[str, Any]:
        """What the run's settings add: the layout and the content digests of ``cameras.npz``
        and the views' ``init.npz``."""
        return {"layout": "views", "views": self.folder.num_views,
                "cameras_file": file_digest(self.root / CAMERA_FILE),
                "views_init": [file_digest(view.root / "init.npz")
                               for view in self.folder.views]}

    def batches(self, batch_size: int) -> list[tuple[int, int]]:
        """Subject ranges fitted together: ``batch_size // V`` subjects (at least one)."""
        step = max(1, batch_size // self.folder.num_views)
        count = len(self.names)
        return [(start, min(start + step, count)) for start in range(0, count, step)]

    def camera(self, start: int, stop: int) -> Camera:
        """The calibrated cameras of subjects ``[start, stop)``, subject-major (row
        ``s * V + k`` is view k of subject s)."""
        cams = {key: torch.as_tensor(value[start:stop].reshape(-1, *value.shape[2:]))
                for key, value in self.folder.cameras.items()}
        return Camera(cams["focal_length"], cams["camera_center"], cams["image_size"],
                      cams["R"], cams["t"])

    def fit(self, fitter: Fitter, start: int, stop: int, flow: str | None = None,
            texture: str | None = None) -> dict[str, np.ndarray]:
        """Read and fit subjects ``[start, stop)``: every view's inputs, one ``shares="all"``
        group per subject; one result row per subject (:meth:`subject_rows`).

        Raises:
            ValueError: inputs the fitter refuses.
        """
        names = self.names[start:stop]
        count, views = len(names), self.folder.num_views
        read, errors = [], []
        for dataset in self.folder.views:
            view_errors = [""] * count
            sizes, init, inputs = batch_inputs(dataset, names, fitter, view_errors, flow,
                                               texture, **self.read_options)
            if fitter.learned:
                inputs["images"] = predicted_inputs(dataset, names, fitter,
                                                    view_errors)["images"]
            read.append((sizes, init, inputs))
            errors.append(view_errors)
        order = np.arange(views * count).reshape(views, count).T.reshape(-1)  # subject-major
        sizes, init, inputs = (take_rows(concat_rows([item[i] for item in read]), order)
                               for i in range(3))
        row_errors = [errors[k][s] for s in range(count) for k in range(views)]
        groups = tuple(SampleGroup(tuple(range(s * views, (s + 1) * views)), shares="all")
                       for s in range(count))
        result = fitter(sizes, init, camera=self.camera(start, stop), groups=groups, **inputs)
        arrays = part_arrays([name for name in names for _ in range(views)], result,
                             row_errors)
        lost = arrays["flag_bad_input"].reshape(count, views).all(axis=1).any()
        pooled = self.pooled_init(fitter.body, start, stop, init) if lost else None
        return self.subject_rows(arrays, names, start, pooled)

    def subject_rows(self, arrays: dict[str, np.ndarray], names: list[str], start: int,
                     pooled: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """A subject-major part of V rows per subject -> one row per subject.

        A subject's row is its first fitted view's (the rows of a group hold one world body,
        the group's energy and flags); a subject whose views were all left out keeps its
        pooled initial body (``pooled``, :meth:`pooled_init`; needed only then) and is flagged
        ``bad_input``. ``error`` holds the messages of the views left out (``view K: ...``);
        ``focal_length`` and ``camera_center`` are view 0's.
        """
        views = self.folder.num_views
        bad = arrays["flag_bad_input"].reshape(len(names), views)
        pick = np.arange(len(names)) * views + np.where(bad.all(axis=1), 0, bad.argmin(axis=1))
        rows = {key: value[pick] for key, value in arrays.items()}
        rows["image_names"] = np.array(names)
        lost = bad.all(axis=1)
        if lost.any():
            for key in PARAM_SIZES:
                rows[key] = np.where(lost[:, None], pooled[key], rows[key]).astype(np.float32)
        for key in CAMERA_KEYS:
            rows[key] = self.folder.cameras[key][start:start + len(names), 0]
        rows["flag_bad_input"] = lost
        messages = arrays["error"].reshape(len(names), views)
        rows["error"] = np.array(["; ".join(f"view {k}: {message}"
                                            for k, message in enumerate(row) if message)
                                  for row in messages], dtype=str)
        return rows

    def pooled_init(self, body: BodyModel, start: int, stop: int,
                    init: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The world body each subject's views' initial estimates give together, as the
        solver starts from it (:func:`fitkit.fitting.groups.pool_rows`: each view's estimate
        moved into the world frame, orientations by rotation averaging, means of the rest).

        Args:
            init: the subject-major view rows' initial parameters (default read from the
                views).
        Returns:
            ``(S, ...)`` float32 parameters of subjects ``[start, stop)``.
        """
        views = self.folder.num_views
        count = stop - start
        if init is None:
            order = np.arange(views * count).reshape(views, count).T.reshape(-1)
            init = take_rows(concat_rows([{key: view.init[key][start:stop] for key in PARAM_SIZES}
                                          for view in self.folder.views]), order)
        like = {"device": body.device, "dtype": body.dtype}
        state = {key: torch.as_tensor(init[key]).to(**like) for key in PARAM_SIZES}
        groups = [SampleGroup(tuple(range(s * views, (s + 1) * views)), shares="all")
                  for s in range(count)]
        layout = GroupLayout.build(groups, count * views, body.device, body.dtype, world=True)
        rows = pool_rows(layout, state, self.camera(start, stop).to(**like), body,
                         given=tuple(PARAM_SIZES))
        return {key: value.detach().cpu().float().numpy() for key, value in rows.items()}

    def report(self, body: BodyModel) -> Dataset:
        """The subjects with the pooled initial bodies (:meth:`pooled_init`) and the world
        ground truth: what the metrics compare the results with."""
        chunk = 256
        parts = [self.pooled_init(body, start, min(start + chunk, len(self.names)))
                 for start in range(0, len(self.names), chunk)]
        init = {key: np.concatenate([part[key] for part in parts]) for key in PARAM_SIZES}
        init |= {key: self.folder.cameras[key][:, 0] for key in CAMERA_KEYS}
        return Dataset(self.root, self.names, init, self.folder.gt)

    def overlay_inputs(self, body: BodyModel, results: dict[str, np.ndarray]
                       ) -> tuple[Dataset, dict[str, np.ndarray]]:
        """View 0's dataset (its initial estimates) and the results moved into view 0's
        camera frame."""
        like = {"device": body.device, "dtype": body.dtype}
        params = {key: torch.as_tensor(results[key]).to(**like) for key in PARAM_SIZES}
        R = torch.as_tensor(self.folder.cameras["R"][:, 0]).to(**like)
        t = torch.as_tensor(self.folder.cameras["t"][:, 0]).to(**like)
        orient, transl = world_to_camera_params(params["global_orient"], params["transl"],
                                                rest_root(body, params["betas"]), R, t)
        moved = dict(results) | {"global_orient": orient.cpu().numpy(),
                                 "transl": transl.cpu().numpy()}
        return self.folder.views[0], moved


def open_rows(input: str | os.PathLike, limit: int | None = None, view: int | None = None,
              groups: bool = True) -> FolderRows | MultiViewRows:
    """What a refine run on ``input`` fits (module docstring).

    Args:
        input: a single-view, sequences or multi-view folder.
        limit: the first ``limit`` rows (subjects of a multi-view folder).
        view: refine view ``view`` of a multi-view folder alone, as the single-view folder
            ``views/VIEW`` (rows named by subject).
        groups: ``False`` fits every row of a sequences folder on its own (per-frame fits).
    Raises:
        DatasetError: an unusable folder, ``view`` on a folder that is not multi-view or out
            of its range, ``groups=False`` on a multi-view folder.
    """
    root = Path(input)
    if view is not None:
        if not is_multiview(root):
            raise DatasetError(f"--view {view}: {root / CAMERA_FILE} not found; --view picks one "
                               "view of a multi-view folder")
        folder = root / VIEWS_FOLDER / str(view)
        if view < 0 or not folder.is_dir():
            have = sorted(p.name for p in (root / VIEWS_FOLDER).glob("*") if p.is_dir())
            raise DatasetError(f"--view {view}: {folder} not found (views: {', '.join(have)})")
        return FolderRows(open_dataset(folder, limit))
    if is_multiview(root):
        if not groups:
            raise DatasetError(f"{root} is a multi-view folder: refine one view alone with "
                               "--view K rather than --no-groups")
        return MultiViewRows(open_multiview(root, limit))
    dataset = open_dataset(root, limit)
    if groups and (root / SEQUENCE_FILE).is_file():
        return FolderRows(dataset, read_sequences(root / SEQUENCE_FILE, dataset.names))
    return FolderRows(dataset)
