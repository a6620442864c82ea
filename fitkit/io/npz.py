"""Strict ``.npz`` reading shared by every fitkit file kind stored as ``.npz``."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class FileKeyError(ValueError):
    """A file that cannot be read, or a key in it that is missing or malformed.

    Attributes:
        path: the file (or a description of an in-memory source).
        key: the offending key, or ``None`` when the file as a whole is unreadable.
    """

    def __init__(self, path: str | os.PathLike, key: str | None, message: str) -> None:
        self.path = str(path)
        self.key = key
        where = f"{self.path}: key '{key}'" if key is not None else self.path
        super().__init__(f"{where}: {message}")


def read_npz(
    path: str | os.PathLike, error: type[FileKeyError] = FileKeyError, what: str = "npz"
) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` file, refusing pickled objects.

    Args:
        path: the ``.npz``.
        error: the :class:`FileKeyError` subclass to raise (names the file kind).
        what: the kind of file, for the not-found message (``"body model"``, ...).
    Returns:
        key -> array.
    Raises:
        FileNotFoundError: no such file.
        FileKeyError: (``error``) not an ``.npz``, or a key that holds pickled objects.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise error(path, None, f"not a readable .npz file ({exc})") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise error(path, None, "not an .npz archive (a single .npy array?)")
    arrays = {}
    with npz:
        for key in npz.files:
            try:
                arrays[key] = npz[key]
            except ValueError as exc:
                raise error(path, key, f"cannot be read ({exc})") from exc
    return arrays
