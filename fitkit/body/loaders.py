"""Readers for SMPL-format body model files (layouts in ``docs/formats.md``).

Three kinds: official SMPL pickles (read without chumpy), SMPL-format ``.npz`` files, and the open
body that ships with fitkit (``OPEN_BODY_PATH``, an ``.npz`` with extras). A folder of official
files is searched for the requested gender under the names the SMPL downloads and smplx use.
Every reader returns a validated ``BodyData``; a bad file raises ``BodyFileError`` naming the file
and the key, a missing one ``FileNotFoundError`` naming the path, a pickle that names code
``UnsafePickleError`` (nothing from the file runs).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from smplx.vertex_ids import vertex_ids as SMPLX_VERTEX_IDS

from fitkit.body.keypoints import OPENPOSE_VERTEX_NAMES, SMPL_JOINT_NAMES, SMPL_PARENTS
from fitkit.io.npz import FileKeyError, read_npz
from fitkit.io.safe_pickle import SparseMatrixState, error_summary, safe_load

OPEN_BODY_PATH = Path(__file__).resolve().parent / "data" / "open_body.npz"
"""The open body (an SMPL-format ``.npz`` with fitkit's extras), inside the installed package."""

NUM_JOINTS = 24
NUM_BETAS = 10
NUM_POSE_BASIS = 207
SMPL_NUM_VERTICES = 6890

GENDERS = ("neutral", "female", "male")

# Official file names per gender, matched case-insensitively (the SMPL downloads mix
# ``basicModel`` and ``basicmodel``); smplx's ``SMPL_<GENDER>`` names first.
OFFICIAL_FILE_NAMES: dict[str, tuple[str, ...]] = {
    gender: (
        f"SMPL_{gender.upper()}.pkl",
        f"SMPL_{gender.upper()}.npz",
        f"basicmodel_{short}_lbs_10_207_0_v1.1.0.pkl",
        f"basicModel_{short}_lbs_10_207_0_v1.0.0.pkl",
    )
    for gender, short in (("neutral", "neutral"), ("female", "f"), ("male", "m"))
}
"""File names ``find_body_file`` looks for, per gender, in order."""

# Where those files sit below a user's folder: the folder itself, smplx's ``models/smpl`` layout
# and the layout of the SMPL download (``SMPL_python_v.1.1.0/smpl/models``).
_SUBFOLDERS = (".", "smpl", "models", "models/smpl", "smpl/models")


class BodyFileError(FileKeyError):
    """A body model file that cannot be read, or a key in it that is missing or malformed
    (``.path``, ``.key``)."""


# --------------------------------------------------------------------------- chumpy-free pickles


class _ChumpyObject:
    """Stand-in for a pickled chumpy object.

    chumpy pickles ``Ch`` objects as their ``__dict__``: a plain ``Ch`` keeps its value in the
    state key ``'x'``; reordering objects keep their input in ``'a'`` plus the terms of the
    operation (``idxs``, ``newshape``, ``axes``). ``value()`` evaluates what fitkit needs.
    """

    chumpy_class = "chumpy.ch.Ch"

    def __setstate__(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            raise TypeError(f"{self.chumpy_class} state must be a dict, got {type(state).__name__}")
        self.state = state

    def value(self) -> np.ndarray:
        """The numpy value of the chumpy object (any shape)."""
        state = getattr(self, "state", {})
        name = self.chumpy_class.rsplit(".", 1)[-1]
        if "x" in state:
            return _array(state["x"])
        if name == "Select" and "a" in state:
            result = _array(state["a"]).ravel()[np.asarray(state["idxs"])]
            shape = state.get("preferred_shape")
            return result if shape is None else result.reshape(shape)
        if name == "Reshape" and "a" in state:
            return _array(state["a"]).reshape(state["newshape"])
        if name == "transpose" and "a" in state:
            return np.ascontiguousarray(np.transpose(_array(state["a"]), state.get("axes")))
        raise ValueError(f"unsupported chumpy object {self.chumpy_class}")


def _chumpy_stand_in(module: str, name: str) -> type | None:
    """The stand-in class of a chumpy class (any class of the ``chumpy`` package), else ``None``
    (refused by the restricted unpickler)."""
    if module != "chumpy" and not module.startswith("chumpy."):
        return None
    full = f"{module}.{name}"
    if full not in _CHUMPY_STAND_INS:
        _CHUMPY_STAND_INS[full] = type(name, (_ChumpyObject,), {"chumpy_class": full})
    return _CHUMPY_STAND_INS[full]


_CHUMPY_STAND_INS: dict[str, type] = {}


def _plain(value: Any) -> Any:
    """``value``, or its numpy array if it is a stand-in."""
    if isinstance(value, _ChumpyObject):
        return value.value()
    if isinstance(value, SparseMatrixState):
        return value.toarray()
    return value


def _array(value: Any) -> np.ndarray:
    return np.asarray(_plain(value))


def _is_scipy_sparse(value: Any) -> bool:
    """Whether ``value`` is a scipy sparse matrix or array, without importing scipy: if
    ``scipy.sparse`` was never imported, no such object exists."""
    sparse = sys.modules.get("scipy.sparse")
    return sparse is not None and sparse.issparse(value)


def read_smpl_pickle(path: str | os.PathLike) -> dict[str, Any]:
    """Read an official SMPL ``.pkl`` (latin1, chumpy objects inside) without chumpy and
    without running code from the file (:func:`fitkit.io.safe_pickle.safe_load`).

    Chumpy objects become numpy arrays, sparse matrices (``J_regressor``) dense arrays; other
    values are returned as unpickled.

    Args:
        path: the pickle.
    Returns:
        The pickled dict, e.g. ``v_template`` ``(V, 3)``, ``shapedirs`` ``(V, 3, S)``.
    Raises:
        FileNotFoundError: no such file.
        UnsafePickleError: the pickle names a class or function other than numpy arrays,
            scipy.sparse matrices and chumpy objects.
        BodyFileError: not a pickle of a dict, or a value that cannot be converted.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"body model file not found: {path}")
    content = safe_load(path, stand_in=_chumpy_stand_in, error=BodyFileError)
    if not isinstance(content, dict):
        raise BodyFileError(path, None, f"expected a pickled dict, got {type(content).__name__}")
    result = {}
    for key, value in content.items():
        try:
            result[str(key)] = _plain(value)
        # MemoryError: a matrix shape in the file far too large to allocate.
        except (KeyError, TypeError, ValueError, IndexError, RecursionError, MemoryError) as error:
            raise BodyFileError(
                path, str(key), f"cannot convert to an array ({error_summary(error)})"
            ) from error
    return result


# --------------------------------------------------------------------------- validated contents


@dataclass
class BodyData:
    """The validated arrays of an SMPL-format body model (numpy, float64 / int64).

    Attributes:
        source: the file it came from.
        v_template: ``(V, 3)`` rest vertices.
        faces: ``(F, 3)`` triangles.
        shapedirs: ``(V, 3, 10)`` shape blend shapes (the first 10 components of the file).
        posedirs: ``(V, 3, 207)`` pose-corrective blend shapes.
        J_regressor: ``(24, V)`` dense joint regressor.
        weights: ``(V, 24)`` skinning weights.
        joint_names: the 24 joint names (SMPL's when the file has none).
        vt: ``(T, 2)`` UV coordinates, or ``None``.
        ft: ``(F, 3)`` per-corner UV indices, or ``None``.
        dp_I: ``(V,)`` DensePose part index 1-24, or ``None``.
        dp_U, dp_V: ``(V,)`` DensePose part coordinates, or ``None``.
        vertex_ids: name -> vertex of the vertex keypoints (the file's; smplx's SMPL ids for a
            6890-vertex body without them), or ``None``.
        marker_names: names of the surface markers, or ``None``.
        marker_ids: ``(M,)`` vertex of each marker, or ``None``.
    """

    source: str
    v_template: np.ndarray
    faces: np.ndarray
    shapedirs: np.ndarray
    posedirs: np.ndarray
    J_regressor: np.ndarray
    weights: np.ndarray
    joint_names: tuple[str, ...]
    vt: np.ndarray | None = None
    ft: np.ndarray | None = None
    dp_I: np.ndarray | None = None
    dp_U: np.ndarray | None = None
    dp_V: np.ndarray | None = None
    vertex_ids: dict[str, int] | None = None
    marker_names: tuple[str, ...] | None = None
    marker_ids: np.ndarray | None = None

    @property
    def num_vertices(self) -> int:
        """V."""
        return int(self.v_template.shape[0])

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any], source: str | os.PathLike) -> BodyData:
        """Validate the keys of an SMPL-format file (``docs/formats.md``).

        Args:
            arrays: key -> array-like, as in the file (``shapedirs`` may have more than 10
                components; only the first 10 are kept).
            source: the file, for error messages.
        Raises:
            BodyFileError: a missing key, a wrong shape or dtype, or out-of-range values.
        """
        read = _Reader(arrays, str(source))
        v_template = read.float("v_template", (None, 3))
        num_vertices = v_template.shape[0]
        faces = read.index("f", (None, 3), num_vertices)
        shapedirs = read.float("shapedirs", (num_vertices, 3, None))
        if shapedirs.shape[2] < NUM_BETAS:
            raise read.error(
                "shapedirs",
                f"needs at least {NUM_BETAS} shape components, has {shapedirs.shape[2]}",
            )
        posedirs = read.float("posedirs", (num_vertices, 3, NUM_POSE_BASIS))
        j_regressor = read.float("J_regressor", (NUM_JOINTS, num_vertices))
        empty = np.flatnonzero(~(np.abs(j_regressor.sum(axis=1) - 1.0) < 0.1))
        if len(empty):  # each joint is a weighted mean of vertices: its row sums to 1
            raise read.error("J_regressor", f"row {int(empty[0])} sums to "
                             f"{j_regressor[empty[0]].sum():.4g}, not 1 (rows {empty[:5].tolist()}"
                             "...); each joint must be a weighted mean of vertices")
        weights = read.float("weights", (num_vertices, NUM_JOINTS))
        if not np.allclose(weights.sum(axis=1), 1.0, atol=1e-3):
            raise read.error("weights", "skinning weights must sum to 1 for every vertex")
        read.kintree()
        joint_names = read.names("joint_names", NUM_JOINTS)

        vt = ft = dp_i = dp_u = dp_v = marker_ids = None
        marker_names = vertex_ids = None
        if read.has_group("vt", "ft"):
            vt = read.float("vt", (None, 2))
            ft = read.index("ft", (faces.shape[0], 3), vt.shape[0])
        if read.has_group("dp_I", "dp_U", "dp_V"):
            dp_i = read.index("dp_I", (num_vertices,), NUM_JOINTS + 1)
            if dp_i.min() < 1:
                raise read.error("dp_I", "DensePose part indices must be 1-24")
            dp_u = read.float("dp_U", (num_vertices,))
            dp_v = read.float("dp_V", (num_vertices,))
        if read.has_group("vertex_ids_names", "vertex_ids"):
            names = read.names("vertex_ids_names", None)
            ids = read.index("vertex_ids", (len(names),), num_vertices)
            vertex_ids = dict(zip(names, ids.tolist(), strict=True))
            missing = [name for name in OPENPOSE_VERTEX_NAMES if name not in vertex_ids]
            if missing:
                raise read.error("vertex_ids_names", f"lacks {', '.join(missing)}")
        elif num_vertices == SMPL_NUM_VERTICES:
            vertex_ids = dict(SMPLX_VERTEX_IDS["smplh"])  # official SMPL topology
        if read.has_group("marker_names", "marker_ids"):
            marker_names = read.names("marker_names", None)
            marker_ids = read.index("marker_ids", (len(marker_names),), num_vertices)

        return cls(
            source=str(source),
            v_template=v_template,
            faces=faces,
            shapedirs=np.ascontiguousarray(shapedirs[:, :, :NUM_BETAS]),
            posedirs=posedirs,
            J_regressor=j_regressor,
            weights=weights,
            joint_names=joint_names or SMPL_JOINT_NAMES,
            vt=vt,
            ft=ft,
            dp_I=dp_i,
            dp_U=dp_u,
            dp_V=dp_v,
            vertex_ids=vertex_ids,
            marker_names=marker_names,
            marker_ids=marker_ids,
        )


class _Reader:
    """Typed, shape-checked access to the keys of one body model file."""

    def __init__(self, arrays: Mapping[str, Any], source: str) -> None:
        self.arrays = arrays
        self.source = source

    def error(self, key: str, message: str) -> BodyFileError:
        return BodyFileError(self.source, key, message)

    def has_group(self, *keys: str) -> bool:
        """Whether the file has the optional ``keys`` (which come all together or not at all)."""
        present = [key for key in keys if key in self.arrays]
        if present and len(present) != len(keys):
            missing = next(key for key in keys if key not in self.arrays)
            raise self.error(missing, f"missing (it goes with {', '.join(present)})")
        return bool(present)

    def _get(self, key: str, shape: tuple[int | None, ...]) -> np.ndarray:
        if key not in self.arrays:
            raise self.error(key, "missing")
        value = self.arrays[key]
        if _is_scipy_sparse(value):
            value = value.toarray()
        try:
            value = np.asarray(value)
        except (TypeError, ValueError) as error:
            raise self.error(key, f"not an array ({error})") from error
        if value.ndim != len(shape) or any(
            want is not None and got != want for got, want in zip(value.shape, shape, strict=True)
        ):
            expected = "(" + ", ".join("N" if s is None else str(s) for s in shape) + ")"
            raise self.error(key, f"expected shape {expected}, got {value.shape}")
        return value

    def float(self, key: str, shape: tuple[int | None, ...]) -> np.ndarray:
        value = self._get(key, shape)
        if value.dtype.kind not in "fiu":
            raise self.error(key, f"expected numbers, got dtype {value.dtype}")
        value = value.astype(np.float64)
        if not np.isfinite(value).all():
            raise self.error(key, "contains NaN or infinite values")
        return value

    def index(self, key: str, shape: tuple[int | None, ...], bound: int) -> np.ndarray:
        value = self._get(key, shape)
        if value.dtype.kind not in "iu":
            raise self.error(key, f"expected integers, got dtype {value.dtype}")
        value = value.astype(np.int64)
        if value.size and (value.min() < 0 or value.max() >= bound):
            span = f"{value.min()}..{value.max()}"
            raise self.error(key, f"values must lie in [0, {bound}), got {span}")
        return value

    def names(self, key: str, count: int | None) -> tuple[str, ...]:
        """A tuple of strings, or ``()`` when the optional key is absent."""
        if key not in self.arrays:
            return ()
        value = self._get(key, (count,))
        if value.dtype.kind == "S":
            return tuple(item.decode("latin1") for item in value)
        if value.dtype.kind != "U" and not all(isinstance(item, str) for item in value):
            raise self.error(key, f"expected strings, got dtype {value.dtype}")
        return tuple(str(item) for item in value)

    def kintree(self) -> None:
        """Check that ``kintree_table`` is SMPL's 24-joint tree (root parent -1 or 2**32 - 1)."""
        table = self._get("kintree_table", (2, NUM_JOINTS))
        if table.dtype.kind not in "iu":
            raise self.error("kintree_table", f"expected integers, got dtype {table.dtype}")
        parents = table[0].astype(np.int64)
        if parents[0] in (2**32 - 1, 2**64 - 1):
            parents[0] = -1
        if tuple(parents.tolist()) != SMPL_PARENTS:
            raise self.error(
                "kintree_table",
                f"parents {parents.tolist()} are not SMPL's tree {list(SMPL_PARENTS)}",
            )


# --------------------------------------------------------------------------- finding files


def find_body_file(folder: str | os.PathLike, gender: str = "neutral") -> Path:
    """The official body model file of ``gender`` in ``folder``.

    Looks for ``OFFICIAL_FILE_NAMES[gender]`` (case-insensitively) in the folder and in its
    ``smpl``, ``models``, ``models/smpl`` and ``smpl/models`` subfolders.

    Args:
        folder: a folder holding official SMPL files.
        gender: ``"neutral"``, ``"female"`` or ``"male"``.
    Raises:
        ValueError: unknown gender.
        FileNotFoundError: no such folder, or none of the names in it.
    """
    gender = _check_gender(gender)
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"body model folder not found: {folder}")
    wanted = [name.lower() for name in OFFICIAL_FILE_NAMES[gender]]
    for sub in _SUBFOLDERS:
        directory = folder / sub
        if not directory.is_dir():
            continue
        entries = {entry.name.lower(): entry for entry in directory.iterdir() if entry.is_file()}
        for name in wanted:
            if name in entries:
                return entries[name]
    raise FileNotFoundError(
        f"no {gender} SMPL model in {folder} (looked for "
        f"{', '.join(OFFICIAL_FILE_NAMES[gender])} in {', '.join(_SUBFOLDERS)})"
    )


def resolve_body_path(name_or_path: str | os.PathLike, gender: str = "neutral") -> Path:
    """The file ``load_body`` reads for ``name_or_path``.

    Args:
        name_or_path: ``"open"`` (the open body), a ``.pkl``/``.npz`` file, or a folder of
            official files (searched for ``gender`` by ``find_body_file``).
        gender: used for folders; the open body is gender-neutral; a file is its own gender.
    Raises:
        ValueError: unknown gender, or a gender the open body does not have.
        FileNotFoundError: no such file or folder, or the open body's data file is missing.
    """
    gender = _check_gender(gender)
    if isinstance(name_or_path, str) and name_or_path == "open":
        if gender != "neutral":
            raise ValueError(f"the open body is gender-neutral; got gender={gender!r}")
        if not OPEN_BODY_PATH.is_file():
            raise FileNotFoundError(
                f"the open body's data file is missing: {OPEN_BODY_PATH} (it ships with fitkit; "
                "in a source checkout it is built by fitkit/body/build_open.py)"
            )
        return OPEN_BODY_PATH
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return find_body_file(path, gender)
    if not path.is_file():
        raise FileNotFoundError(
            f"body model not found: {path} (expected 'open', a .pkl/.npz file or a folder)"
        )
    return path


def read_body_file(path: str | os.PathLike) -> BodyData:
    """Read and validate an SMPL-format body model file (``.pkl`` or ``.npz``).

    Args:
        path: the file.
    Raises:
        FileNotFoundError: no such file.
        BodyFileError: unknown file type, unreadable content, or a bad key.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".pkl":
        arrays: Mapping[str, Any] = read_smpl_pickle(path)
    elif suffix == ".npz":
        arrays = read_npz(path, BodyFileError, "body model")
    else:
        raise BodyFileError(path, None, "unknown body model file type (expected .pkl or .npz)")
    return BodyData.from_arrays(arrays, path)


def _check_gender(gender: str) -> str:
    if gender.lower() not in GENDERS:
        raise ValueError(f"unknown gender {gender!r}; expected one of {', '.join(GENDERS)}")
    return gender.lower()
