"""Dataset folders (DESIGN.md's layout, what ``python -m fitkit.synth`` writes and
``python -m fitkit.refine`` reads)::

    images/NAME.png|jpg|jpeg        the images
    init.npz                        initial estimates, one row per image (the rows to refine)
    gt.npz                          optional ground truth, same layout
    <term files>                    each data term's input where its ``dataset_pattern`` says,
                                    e.g. keypoints/NAME_keypoints.json, densepose/NAME_IUV.png
    meta.json                       optional: how the folder was made

Names in ``image_names`` are plain file stems: a name that is empty, holds a path separator or
starts with a dot is refused, so no name can reach outside the folder.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fitkit.io.adapters import read_init_file
from fitkit.io.inputs import image_sizes
from fitkit.io.params import CAMERA_KEYS, ParamsFileError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

CAMERA_FILE = "cameras.npz"
"""The calibrated cameras of a multi-view folder (``docs/formats.md``)."""

VIEWS_FOLDER = "views"
"""The folder of a multi-view folder's per-view dataset folders ``views/0``, ``views/1``, ..."""

SEQUENCE_FILE = "sequences.npz"
"""The sequence and frame of each row of a sequences folder."""
NAME_PATTERN = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]*")
"""What an image name may be: a plain file stem (letters, digits, ``_ - .``, not starting with
a dot)."""


class DatasetError(ValueError):
    """A dataset folder that cannot be used (the message names the file and field)."""


@dataclass
class Dataset:
    """A dataset folder, read.

    Attributes:
        root: the folder.
        names: image name stems, in ``init.npz`` order (without one: the images', sorted).
        init: initial parameters ``(N, ...)`` by key (with ``focal_length``, ``camera_center``);
            empty for a folder without ``init.npz`` (fits from scratch).
        gt: ground-truth parameters, or ``None``.
    """

    root: Path
    names: list[str]
    init: dict[str, np.ndarray]
    gt: dict[str, np.ndarray] | None

    def image_path(self, name: str) -> Path:
        """``images/NAME.png`` (or ``.jpg``, ``.jpeg``; the ``.png`` path when none exists)."""
        return image_path(self.root, name)

    def files(self, pattern: str, names: Sequence[str]) -> list[Path]:
        """The files of ``names`` for a data term's ``dataset_pattern``
        (``"keypoints/{name}_keypoints.json"``)."""
        return [self.root / pattern.format(name=name) for name in names]

    def rows(self, names: Sequence[str], source: str = "init") -> dict[str, np.ndarray]:
        """The rows of ``init`` or ``gt`` for ``names``."""
        arrays = self.init if source == "init" else self.gt
        index = {name: row for row, name in enumerate(self.names)}
        picked = [index[name] for name in names]
        return {key: value[picked] for key, value in arrays.items()}


def image_path(root: Path, name: str) -> Path:
    """``root/images/NAME`` with the first suffix of :data:`IMAGE_SUFFIXES` that exists (the
    ``.png`` path when none does)."""
    for suffix in IMAGE_SUFFIXES:
        path = root / "images" / f"{name}{suffix}"
        if path.is_file():
            return path
    return root / "images" / f"{name}.png"


def check_names(names: Sequence[str], source: str | os.PathLike) -> None:
    """Refuse image names that are not plain file stems (:data:`NAME_PATTERN`).

    Raises:
        ParamsFileError: naming the file, the key ``image_names`` and the first bad row.
    """
    for row, name in enumerate(names):
        if not NAME_PATTERN.fullmatch(name):
            raise ParamsFileError(source, "image_names",
                                  f"row {row} is {name!r}, not a plain file name stem")


def read_dataset_params(path: Path) -> dict[str, np.ndarray]:
    """A parameter file of a dataset, in fitkit's layout or another tool's
    (:func:`fitkit.io.adapters.read_init_file`; its rows must be named); missing camera keys
    come from the images' size (when they all have one).

    Raises:
        FileNotFoundError, ParamsFileError: a missing or malformed file.
    """
    try:
        arrays = read_init_file(path)
    except ParamsFileError as error:
        if error.key not in CAMERA_KEYS:
            raise
        with np.load(path, allow_pickle=False) as npz:
            names = npz["image_names"].astype(str).tolist()
        check_names(names, path)
        sizes = image_sizes([image_path(path.parent, name) for name in names])
        if not len(sizes) or not (sizes == sizes[0]).all():
            raise ParamsFileError(path, "focal_length",
                                  "missing, and the images differ in size") from None
        arrays = read_init_file(path, image_size=sizes[0])
    check_names(arrays["image_names"].tolist(), path)
    return arrays


def image_names(root: Path) -> list[str]:
    """The stems of the images in ``root/images`` (:data:`IMAGE_SUFFIXES`), sorted; each name
    once.

    Raises:
        DatasetError: no ``images`` folder, or one stem with two suffixes (``a.png`` and
            ``a.jpg``).
        ParamsFileError: a stem that is not a plain name (:func:`check_names`).
    """
    folder = root / "images"
    if not folder.is_dir():
        raise DatasetError(f"{folder} not found: the input folder needs images/ (and an "
                           "init.npz of initial estimates, or none to fit from scratch)")
    paths = sorted(path for path in folder.iterdir()
                   if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
    names = [path.stem for path in paths]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        both = ", ".join(path.name for path in paths if path.stem == twice[0])
        raise DatasetError(f"{folder}: {twice[0]!r} has two images ({both}); keep one")
    check_names(names, folder)
    return names


def open_dataset(root: str | os.PathLike, limit: int | None = None) -> Dataset:
    """Read a dataset folder's parameter files.

    Args:
        root: the folder; limit: keep the first ``limit`` rows of ``init.npz``.
    Raises:
        DatasetError: no folder, neither ``init.npz`` nor images, no rows, malformed parameter
            files, a ``gt.npz`` that lacks rows of ``init.npz``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"input folder not found: {root}")
    init_path = root / "init.npz"
    try:
        if init_path.is_file():
            init = read_dataset_params(init_path)
        else:  # fits from scratch: the rows are the images
            init = {"image_names": np.array(image_names(root))}
        gt = read_dataset_params(root / "gt.npz") if (root / "gt.npz").is_file() else None
    except (FileNotFoundError, ValueError) as error:
        raise DatasetError(str(error)) from None
    names = init.pop("image_names").tolist()[:limit]
    if not names:
        if init_path.is_file():
            raise DatasetError(f"{init_path}: key 'image_names' has no rows: nothing to refine")
        raise DatasetError(f"{root / 'images'}: no images and no init.npz: nothing to refine")
    init = {key: value[: len(names)] for key, value in init.items()}
    if gt is not None:
        gt_names = gt.pop("image_names").tolist()
        missing = sorted(set(names) - set(gt_names))
        if missing:
            raise DatasetError(f"{root / 'gt.npz'}: key 'image_names' lacks {missing[:5]} of "
                               "init.npz")
        index = {name: row for row, name in enumerate(gt_names)}
        gt = {key: value[[index[n] for n in names]] for key, value in gt.items()}
    return Dataset(root, names, init, gt)
