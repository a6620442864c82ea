"""DensePose surface coordinates of a body's vertices: the open body's own, or DensePose's
``UV_Processed.mat`` for official SMPL.

DensePose describes a body surface point by a part ``I`` (1-24) and coordinates ``(U, V)`` in
``[0, 1]`` inside that part's chart. A :class:`DensePoseUV` lists such ``(I, U, V)`` entries and
the body vertex each belongs to. A vertex on the border of two parts may appear once per part
(DensePose's SMPL layout splits the mesh along part seams), so the table can be longer than the
body has vertices.

``UV_Processed.mat`` (DensePose's ``DensePoseData/UV_data``; licensed, never shipped) holds, for a
mesh of ``N`` = 7,829 DensePose vertices and 13,774 triangles over SMPL's 6,890 vertices:

- ``All_vertices``: ``(1, N)`` the SMPL vertex of each DensePose vertex, 1-based;
- ``All_U_norm``, ``All_V_norm``: ``(N, 1)`` the vertex's ``U`` and ``V`` in ``[0, 1]``;
- ``All_Faces``: ``(F, 3)`` triangles over the DensePose vertices, 1-based;
- ``All_FaceIndices``: ``(F, 1)`` the part (1-24) of each triangle.

A DensePose vertex's part is the part of the triangles it is a corner of.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fitkit.body.loaders import BodyFileError
from fitkit.io.safe_pickle import error_summary

NUM_PARTS = 24
"""DensePose's body parts, numbered 1-24 (0 is the background in IUV images)."""

SMPL_NUM_VERTICES = 6890
"""Vertices of official SMPL, the body ``UV_Processed.mat`` describes."""

UV_PROCESSED_KEYS: tuple[str, ...] = (
    "All_vertices",
    "All_U_norm",
    "All_V_norm",
    "All_Faces",
    "All_FaceIndices",
)
"""The arrays of ``UV_Processed.mat`` that fitkit reads."""


@dataclass(frozen=True)
class DensePoseUV:
    """DensePose ``(I, U, V)`` entries of a body's vertices.

    Attributes:
        part: ``(N,)`` int64, part 1-24 of each entry.
        u, v: ``(N,)`` float64, chart coordinates in ``[0, 1]``.
        vertex: ``(N,)`` int64, the body vertex of each entry (0-based, ``< num_vertices``).
        num_vertices: V, vertices of the body the table describes.
        source: where the table came from (file or body), for messages.
    """

    part: np.ndarray
    u: np.ndarray
    v: np.ndarray
    vertex: np.ndarray
    num_vertices: int
    source: str

    @classmethod
    def from_per_vertex(
        cls, dp_I: np.ndarray, dp_U: np.ndarray, dp_V: np.ndarray, source: str
    ) -> DensePoseUV:
        """The table of a body with one ``(I, U, V)`` per vertex (the open body's ``dp_I``,
        ``dp_U``, ``dp_V``); vertices with part 0 (unlabelled) are left out.

        Args:
            dp_I: ``(V,)`` parts 0-24; dp_U, dp_V: ``(V,)`` in ``[0, 1]``.
            source: name for messages.
        Raises:
            ValueError: arrays of different shapes, or parts outside 0-24.
        """
        part = np.asarray(dp_I).astype(np.int64)
        u = np.asarray(dp_U, dtype=np.float64)
        v = np.asarray(dp_V, dtype=np.float64)
        if part.ndim != 1 or u.shape != part.shape or v.shape != part.shape:
            raise ValueError(
                f"{source}: dp_I, dp_U, dp_V must have one shape (V,), got "
                f"{part.shape}, {u.shape}, {v.shape}"
            )
        if part.size and (part.min() < 0 or part.max() > NUM_PARTS):
            raise ValueError(f"{source}: dp_I must lie in 0-{NUM_PARTS}")
        labelled = np.flatnonzero(part > 0)
        return cls(
            part=part[labelled],
            u=u[labelled],
            v=v[labelled],
            vertex=labelled.astype(np.int64),
            num_vertices=part.shape[0],
            source=source,
        )

    def per_vertex(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One ``(I, U, V)`` per body vertex: a vertex's first entry in the table.

        Returns:
            ``dp_I`` ``(V,)`` uint8 (0 for a vertex without an entry), ``dp_U``, ``dp_V``
            ``(V,)`` float64 (0 there too) — the open body's per-vertex layout.
        """
        vertex, first = np.unique(self.vertex, return_index=True)
        dp_I = np.zeros(self.num_vertices, dtype=np.uint8)
        dp_U = np.zeros(self.num_vertices)
        dp_V = np.zeros(self.num_vertices)
        dp_I[vertex] = self.part[first]
        dp_U[vertex] = self.u[first]
        dp_V[vertex] = self.v[first]
        return dp_I, dp_U, dp_V


def read_uv_processed(
    path: str | os.PathLike, num_vertices: int = SMPL_NUM_VERTICES
) -> DensePoseUV:
    """Read DensePose's ``UV_Processed.mat`` (module docstring) into a :class:`DensePoseUV`.

    The file is read with ``scipy.io.loadmat``, which builds only arrays, cells and structs from
    MATLAB v5 data (nothing in the file is run); a v7.3 (HDF5) file is refused.

    Args:
        path: the ``.mat`` file.
        num_vertices: vertices of the body it describes (official SMPL: 6890).
    Returns:
        One table entry per DensePose vertex: its part (from its triangles), ``U``, ``V`` and
        SMPL vertex (0-based).
    Raises:
        FileNotFoundError: no such file.
        BodyFileError: an unreadable or v7.3 file, non-numeric or non-finite data, a missing
            array, arrays of the wrong shape or sizes that disagree, indices out of range, or a
            DensePose vertex in triangles of two parts.
    """
    import scipy.io  # here, not at the top: importing scipy.io takes ~0.1 s

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (DensePose's UV_Processed.mat)")
    try:
        contents = scipy.io.loadmat(path)
    except NotImplementedError as error:  # scipy reads MATLAB v4-v7.2; v7.3 is HDF5
        raise BodyFileError(path, None, "a MATLAB v7.3 (HDF5) file; fitkit reads MATLAB v5 "
                            "files like DensePose's own (save with -v7)") from error
    except Exception as error:  # scipy's MatReadError, ValueError, OSError, ... on a bad file
        raise BodyFileError(
            path, None, f"cannot read as a MATLAB file ({error_summary(error)})"
        ) from error
    missing = [key for key in UV_PROCESSED_KEYS if key not in contents]
    if missing:
        raise BodyFileError(
            path, missing[0], f"missing (UV_Processed.mat needs {UV_PROCESSED_KEYS})"
        )

    vertex = _vector(contents, "All_vertices", path).astype(np.int64) - 1
    u = _vector(contents, "All_U_norm", path).astype(np.float64)
    v = _vector(contents, "All_V_norm", path).astype(np.float64)
    face_parts = _vector(contents, "All_FaceIndices", path).astype(np.int64)
    faces = _numbers(contents, "All_Faces", path)
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise BodyFileError(path, "All_Faces", f"must have shape (F, 3), got {faces.shape}")
    faces = faces.astype(np.int64) - 1

    count = vertex.shape[0]
    if u.shape[0] != count or v.shape[0] != count:
        raise BodyFileError(
            path,
            "All_U_norm",
            f"All_vertices, All_U_norm, All_V_norm disagree on the number of DensePose "
            f"vertices: {count}, {u.shape[0]}, {v.shape[0]}",
        )
    if face_parts.shape[0] != faces.shape[0]:
        raise BodyFileError(
            path,
            "All_FaceIndices",
            f"{face_parts.shape[0]} parts for {faces.shape[0]} triangles in All_Faces",
        )
    if count and (vertex.min() < 0 or vertex.max() >= num_vertices):
        raise BodyFileError(path, "All_vertices", f"indices must lie in 1-{num_vertices} (1-based)")
    if faces.size and (faces.min() < 0 or faces.max() >= count):
        raise BodyFileError(path, "All_Faces", f"indices must lie in 1-{count} (1-based)")
    if face_parts.size and (face_parts.min() < 1 or face_parts.max() > NUM_PARTS):
        raise BodyFileError(path, "All_FaceIndices", f"parts must lie in 1-{NUM_PARTS}")

    corner_parts = np.repeat(face_parts, 3)
    part = np.zeros(count, dtype=np.int64)
    part[faces.ravel()] = corner_parts
    if np.any(part[faces.ravel()] != corner_parts):
        raise BodyFileError(
            path, "All_FaceIndices", "a DensePose vertex is a corner of triangles of two parts"
        )
    used = part > 0
    return DensePoseUV(
        part=part[used],
        u=u[used],
        v=v[used],
        vertex=vertex[used],
        num_vertices=num_vertices,
        source=str(path),
    )


def _numbers(contents: dict[str, np.ndarray], key: str, path: Path) -> np.ndarray:
    """The array ``key``, which must hold finite real numbers (not cells or structs)."""
    array = np.asarray(contents[key])
    if array.dtype.kind not in "biuf":
        raise BodyFileError(path, key, f"expected numbers, got MATLAB data of dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise BodyFileError(path, key, "contains NaN or infinite values")
    return array


def _vector(contents: dict[str, np.ndarray], key: str, path: Path) -> np.ndarray:
    """The array ``key`` as a vector: MATLAB stores vectors as ``(1, N)`` or ``(N, 1)``."""
    array = _numbers(contents, key, path)
    if array.ndim != 2 or 1 not in array.shape:
        raise BodyFileError(path, key, f"must be a vector, (1, N) or (N, 1), got {array.shape}")
    return array.reshape(-1)
