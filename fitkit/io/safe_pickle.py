"""Reading pickles and torch checkpoints without running code from them.

A pickle names the functions and classes its loader calls; a hostile file can name ``os.system``.
Official assets are pickles all the same (SMPL ``.pkl``, SMPLify's ``gmm_08.pkl``), so fitkit reads
them with :class:`RestrictedUnpickler`, which resolves only the names data needs:

- numpy arrays, dtypes and scalars (``numpy.core`` and ``numpy._core`` spellings);
- scipy.sparse CSC/CSR/COO matrices (old ``scipy.sparse.csc`` and new ``scipy.sparse._csc``
  modules), as :class:`SparseMatrixState` stand-ins that never run scipy code while loading;
- data-only builtins: ``set``, ``frozenset``, ``object``, the empty ``bytes`` and latin-1
  ``_codecs.encode`` (how Python 3 writes bytes at protocol 2), ``copyreg._reconstructor`` only
  for a class the unpickler allowed (how protocol 0/1 rebuilds objects);
- Python 2 names (``__builtin__``, ``copy_reg``) read as their Python 3 names;
- what a caller adds (``allowed``, ``stand_in``: e.g. the body loader's chumpy stand-ins).

Any other name raises :class:`UnsafePickleError` before anything is called. Torch checkpoints
are read with :func:`safe_torch_load`: ``torch.load(weights_only=True)`` plus an explicit list of
stand-ins, never a retry without the restriction.
"""

from __future__ import annotations

import _compat_pickle
import copyreg
import os
import pickle
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import torch

from fitkit.io.npz import FileKeyError

if TYPE_CHECKING:
    import scipy.sparse


class UnsafePickleError(FileKeyError):
    """A pickle or checkpoint that names code fitkit refuses to run (``.path``, ``.refused``:
    the ``module.name`` of each refused global)."""

    def __init__(self, path: str | os.PathLike, refused: Sequence[str]) -> None:
        self.refused = tuple(refused)
        names = ", ".join(self.refused)
        super().__init__(
            path,
            None,
            f"refused to load {names}: fitkit reads only data from pickles and checkpoints "
            "(arrays, tensors, plain containers), never code",
        )


class SparseMatrixState:
    """Stand-in for a pickled scipy CSC, CSR or COO matrix: keeps the pickled attributes and
    builds the matrix only on request, independent of scipy's module layout."""

    sparse_format = "csc"

    def __setstate__(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict):
            raise TypeError(f"sparse matrix state must be a dict, got {type(state).__name__}")
        self.state = state

    def to_scipy(self) -> scipy.sparse.spmatrix:
        """The matrix, its index arrays checked against its shape.

        Raises:
            KeyError, TypeError, ValueError: a missing attribute or inconsistent arrays.
        """
        import scipy.sparse  # here, not at the top: importing scipy.sparse takes ~0.2 s

        state = getattr(self, "state", {})
        shape = tuple(int(n) for n in state.get("_shape", state.get("shape")))
        if self.sparse_format == "coo":
            row, col = state["coords"] if "coords" in state else (state["row"], state["col"])
            return scipy.sparse.coo_matrix((state["data"], (row, col)), shape=shape)
        build = scipy.sparse.csc_matrix if self.sparse_format == "csc" else scipy.sparse.csr_matrix
        matrix = build((state["data"], state["indices"], state["indptr"]), shape=shape)
        matrix.check_format(full_check=True)
        return matrix

    def toarray(self) -> np.ndarray:
        """The matrix as a dense array."""
        return self.to_scipy().toarray()


def _sparse_globals() -> dict[str, type]:
    names: dict[str, type] = {}
    for fmt in ("csc", "csr", "coo"):
        stand_in = type(f"{fmt}_matrix", (SparseMatrixState,), {"sparse_format": fmt})
        for module in (f"scipy.sparse.{fmt}", f"scipy.sparse._{fmt}", "scipy.sparse._arrays"):
            for kind in ("matrix", "array"):
                names[f"{module}.{fmt}_{kind}"] = stand_in
    return names


def _latin1_bytes(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it (latin-1 text to bytes), nothing else."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ValueError("_codecs.encode is allowed only for latin-1 text")
    return text.encode("latin1", errors)


def _empty_bytes() -> bytes:
    """``bytes()`` as protocol-2 pickles write an empty bytes object."""
    return b""


def _numpy_globals() -> dict[str, Any]:
    reconstruct = np.ndarray.__reduce__(np.zeros(0))[0]
    scalar = np.float64(0.0).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    names: dict[str, Any] = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for core in ("numpy.core", "numpy._core"):
        names[f"{core}.multiarray._reconstruct"] = reconstruct
        names[f"{core}.multiarray.scalar"] = scalar
        names[f"{core}.numeric._frombuffer"] = frombuffer
    return names


def _builtin_globals() -> dict[str, Any]:
    return {"_codecs.encode": _latin1_bytes, "builtins.set": set, "builtins.frozenset": frozenset,
            "builtins.object": object, "builtins.bytes": _empty_bytes}


NUMPY_GLOBALS: Mapping[str, Any] = _numpy_globals()
"""numpy arrays, dtypes and scalars, by every ``module.name`` numpy 1 and 2 pickle them under."""

SPARSE_GLOBALS: Mapping[str, type] = _sparse_globals()
"""scipy.sparse CSC/CSR/COO matrices and arrays -> :class:`SparseMatrixState` stand-ins."""

DATA_GLOBALS: Mapping[str, Any] = {**NUMPY_GLOBALS, **SPARSE_GLOBALS, **_builtin_globals()}
"""Everything :class:`RestrictedUnpickler` resolves by default."""

StandIn = Callable[[str, str], Any]
"""``(module, name) -> object`` for a global not in ``allowed``, or ``None`` to refuse it."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allowed globals and refuses every other one.

    Args:
        file: the open binary file.
        source: the file's name, for messages.
        allowed: ``"module.name"`` -> the object that name resolves to.
        stand_in: resolves names outside ``allowed`` (returns ``None`` to refuse them); the
            objects it returns must not run code.
        encoding: how to decode Python 2 ``str`` (``"latin1"`` keeps numpy's bytes intact).
    """

    def __init__(self, file: IO[bytes], source: str, allowed: Mapping[str, Any] = DATA_GLOBALS,
                 stand_in: StandIn | None = None, encoding: str = "latin1") -> None:
        super().__init__(file, encoding=encoding)
        self.source = source
        self.allowed = allowed
        self.stand_in = stand_in
        self._classes: set[type] = set()

    def find_class(self, module: str, name: str) -> Any:
        """The allowed object named ``module.name``.

        Raises:
            UnsafePickleError: any name that is not allowed.
        """
        # Python 2 names (``__builtin__``, ``copy_reg``) as Python 3 spells them, like pickle's
        # own ``fix_imports``.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full = f"{module}.{name}"
        if full == "copyreg._reconstructor":
            return self._reconstructor
        found = self.allowed.get(full)
        if found is None and self.stand_in is not None:
            found = self.stand_in(module, name)
        if found is None:
            raise UnsafePickleError(self.source, [full])
        if isinstance(found, type):
            self._classes.add(found)
        return found

    def _reconstructor(self, cls: type, base: type, state: Any) -> Any:
        """``copyreg._reconstructor`` limited to ``object.__new__`` of a class allowed here."""
        if cls not in self._classes or base is not object or state is not None:
            name = f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls)}"
            raise UnsafePickleError(self.source, [f"copyreg._reconstructor({name})"])
        return copyreg._reconstructor(cls, base, state)


def safe_load(
    file_or_path: str | os.PathLike | IO[bytes],
    allowed: Mapping[str, Any] = DATA_GLOBALS,
    encoding: str = "latin1",
    stand_in: StandIn | None = None,
    error: type[FileKeyError] = FileKeyError,
) -> Any:
    """Unpickle data with :class:`RestrictedUnpickler`.

    Args:
        file_or_path: a path, or an open binary file (named by its ``name`` in messages).
        allowed, stand_in, encoding: see :class:`RestrictedUnpickler`.
        error: the :class:`FileKeyError` subclass for a file that is not a readable pickle.
    Returns:
        The unpickled object.
    Raises:
        FileNotFoundError: no such file.
        UnsafePickleError: the pickle names a global that is not allowed (nothing was called).
        FileKeyError: (``error``) not a pickle, truncated, or inconsistent content.
    """
    if isinstance(file_or_path, str | os.PathLike):
        path = Path(file_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        with open(path, "rb") as file:
            return safe_load(file, allowed, encoding, stand_in, error)
    source = str(getattr(file_or_path, "name", "<pickle>"))
    try:
        return RestrictedUnpickler(file_or_path, source, allowed, stand_in, encoding).load()
    except UnsafePickleError:
        raise
    except Exception as exc:
        raise error(source, None, f"not a readable pickle ({error_summary(exc)})") from exc


def safe_torch_load(
    path: str | os.PathLike,
    allowed: Sequence[tuple[Any, str]] = (),
    error: type[FileKeyError] = FileKeyError,
) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU with clear errors.

    Args:
        path: a file written by ``torch.save``.
        allowed: ``(stand-in, "module.name")`` pairs for the few non-tensor globals a known
            layout holds (``torch.serialization.safe_globals``); stand-ins must not run code.
        error: the :class:`FileKeyError` subclass for an unreadable file.
    Raises:
        FileNotFoundError: no such file.
        UnsafePickleError: the file names globals outside tensors, containers and ``allowed``.
        FileKeyError: (``error``) not a torch checkpoint, truncated or corrupt.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with torch.serialization.safe_globals(list(allowed)):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            refused = _refused_torch_globals(path, exc)
            if refused:
                raise UnsafePickleError(path, refused) from exc
            reason = error_summary(exc)
        except Exception as exc:
            reason = error_summary(exc)
    raise error(path, None, f"not a readable tensors-only torch checkpoint ({reason})")


def _refused_torch_globals(path: Path, exc: Exception) -> list[str]:
    """The globals of a checkpoint that ``weights_only`` loading refuses (inside the caller's
    ``safe_globals``)."""
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # not a zip checkpoint: the name is in torch's message
        return re.findall(r"GLOBAL ([\w.]+)", str(exc))


def error_summary(error: BaseException) -> str:
    """An exception as one line: its type and message, lines joined (torch's weights-only
    message reduced to its cause)."""
    text = str(error)
    if text.startswith("Weights only load failed"):  # torch's advice around the cause
        text = re.split(r"WeightsUnpickler error:|trusted source\.", text)[-1]
        text = text.split("Check the documentation")[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(error).__name__}: {' '.join(lines)}" if lines else type(error).__name__
