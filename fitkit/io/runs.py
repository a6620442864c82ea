"""The run store: the one home of atomic writes, run settings, resume, parts, locks and seeds.

Every long job of fitkit (``refine``, ``synth``, the ``train`` commands) and every checkpoint
writes through this module:

- **Atomic writes** (:func:`atomic_write`, :func:`write_json`, :func:`write_npz`,
  :func:`write_torch`): a temporary file ``.NAME.PID.tmp`` beside the target, renamed into place,
  so a file that exists is complete; :func:`remove_temporaries` clears what a killed run left.
- **Settings** (:class:`RunStore`): a run folder holds ``settings.json`` (the settings and their
  fingerprint, :func:`fingerprint`); reopening it with other settings is refused with the keys
  that differ, unless the run is started over.
- **Parts** named by row range (``parts/rows_000000-000032.npz``), not by count, so workers that
  share a folder (``--shard i/N``, torchrun ranks) never collide, and a run resumed with another
  sharding still finds what is done.
- **Locks** (:meth:`RunStore.lock`): an exclusive lock file holding its owner (``PID HOST``), for
  the step only one worker may do.
- **Seed streams** (:func:`seed_stream`): a generator per ``(seed, key...)``, so what a run draws
  for one item does not depend on the items before it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import socket
import time
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

PART_PATTERN = re.compile(r"rows_(\d{6,})-(\d{6,})\.npz")


class RunError(Exception):
    """A run folder that cannot be used: not writable, holding a run with other settings, or
    unreadable bookkeeping. The message names the folder and what differs."""


# --------------------------------------------------------------------------- atomic writes


def temporary_path(path: Path) -> Path:
    """The temporary name :func:`atomic_write` uses for ``path``: ``.NAME.PID.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[Path], None]) -> Path:
    """Write ``data`` (bytes, or a writer called with a path) to a temporary file beside
    ``path`` and rename it into place; parent folders are created.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            data(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def json_bytes(document: Any) -> bytes:
    """``document`` as indented JSON bytes; non-finite floats are refused (they are not JSON).

    Raises:
        ValueError: NaN or infinity in ``document``.
    """
    return (json.dumps(document, indent=1, allow_nan=False) + "\n").encode()


def write_json(path: str | os.PathLike, document: Any) -> Path:
    """Atomically write ``document`` as JSON (:func:`json_bytes`)."""
    return atomic_write(path, json_bytes(document))


def npz_bytes(arrays: Mapping[str, Any]) -> bytes:
    """An ``.npz`` archive as bytes, with fixed member timestamps (``np.savez`` stamps the
    current time, so its files would differ from run to run) and no pickled objects."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for key, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def write_npz(path: str | os.PathLike, arrays: Mapping[str, Any]) -> Path:
    """Atomically write ``arrays`` as a reproducible ``.npz`` (:func:`npz_bytes`)."""
    return atomic_write(path, npz_bytes(arrays))


def read_npz_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` written by :func:`write_npz` (no pickled objects)."""
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def write_torch(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """Atomically ``torch.save`` a state (tensors, numbers, strings, lists, dicts: what
    ``torch.load(..., weights_only=True)`` reads back).

    The state is saved through an open file: given a path, ``torch.save`` names the archive's
    folder after the file, here the temporary ``.NAME.PID.tmp``, so equal states would give
    files that differ with the process id.
    """

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as file:
            torch.save(dict(state), file)

    return atomic_write(path, save)


def remove_temporaries(*folders: Path) -> None:
    """Delete the temporary files (``.*.tmp``) a killed run left in ``folders``."""
    for folder in folders:
        if folder.is_dir():
            for stale in folder.glob(".*.tmp"):
                stale.unlink(missing_ok=True)


# --------------------------------------------------------------------------- settings, seeds


def canonical(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` as plain JSON values (paths and other objects as strings)."""
    return json.loads(json.dumps(settings, default=str, sort_keys=True))


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A short hex digest of the settings (sorted JSON), for files and messages."""
    text = json.dumps(canonical(settings), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def settings_difference(saved: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ between two settings documents (sorted)."""
    saved, given = canonical(saved), canonical(given)
    return sorted(key for key in saved.keys() | given.keys() if saved.get(key) != given.get(key))


def seed_stream(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator for ``(seed, *keys)``: one independent stream per item or step, so a
    resumed or sharded run draws exactly what a whole run would."""
    value = seed
    for key in keys:
        value = (value * 1_000_003 + key) % (2**63 - 1)
    return torch.Generator().manual_seed(value)


# --------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class Shard:
    """Worker ``index`` of ``count`` sharing a run (``--shard i/N``, or a torchrun rank).

    Work items (batches) are dealt round robin: item ``k`` belongs to shard ``k % count``.
    """

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= i < N")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"i/N"`` (0-based ``i``).

        Raises:
            ValueError: anything else.
        """
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
        if not match:
            raise ValueError(f"--shard {text!r}: expected i/N, e.g. 0/4")
        return cls(int(match.group(1)), int(match.group(2)))

    def owns(self, item: int) -> bool:
        """Whether work item ``item`` is this shard's."""
        return item % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


# --------------------------------------------------------------------------- the run folder


class RunStore:
    """A run folder: settings, parts by row range, locks.

    Args:
        root: the folder (created).
        settings: what decides the run's results; saved in ``settings.json`` on the first open
            and compared on every later one.
        outputs: the names (files or folders) the run writes besides ``settings.json`` and
            ``parts/``, removed by ``overwrite``.
        resume: continue a run found in the folder.
        overwrite: start over in a folder that holds a run (its outputs are removed).
        shared: other workers may open the same folder at the same time (shards): a folder
            that holds a run with the same settings is joined without ``resume``.
    Raises:
        RunError: a non-empty folder without ``resume``/``overwrite``/``shared``, one that holds
            a run with other settings, or one that cannot be written.
    """

    SETTINGS = "settings.json"

    def __init__(
        self,
        root: str | os.PathLike,
        settings: Mapping[str, Any],
        outputs: tuple[str, ...] = (),
        resume: bool = False,
        overwrite: bool = False,
        shared: bool = False,
    ) -> None:
        self.root = Path(root)
        self.settings = canonical(settings)
        self.outputs = outputs
        if self.root.exists() and not self.root.is_dir():
            raise RunError(f"output {self.root} exists and is not a folder")
        has_content = self.root.is_dir() and any(self.root.iterdir())
        if has_content and overwrite:
            for name in (self.SETTINGS, "parts", ".locks", *outputs):
                path = self.root / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        elif has_content and not (resume or shared):
            raise RunError(f"output folder {self.root} is not empty; pass --resume to continue "
                           "the run in it or --overwrite to replace its results")
        try:
            (self.root / "parts").mkdir(parents=True, exist_ok=True)
            (self.root / ".locks").mkdir(exist_ok=True)
            if not shared:  # in a shared folder, another worker may be writing its temporaries
                remove_temporaries(self.root, self.root / "parts")
        except OSError as error:
            raise RunError(f"cannot write the output folder {self.root}: "
                           f"{error.strerror or error}") from None
        self._check_settings()

    def _check_settings(self) -> None:
        path = self.root / self.SETTINGS
        document = {"fingerprint": fingerprint(self.settings), "settings": self.settings}
        try:
            # Exclusive creation: of several workers opening a new folder, one writes it.
            with open(path, "x") as file:
                file.write(json_bytes(document).decode())
            return
        except FileExistsError:
            pass
        except OSError as error:
            raise RunError(f"cannot write {path}: {error.strerror or error}") from None
        saved = None
        for _ in range(50):  # another worker may be writing it this instant
            try:
                saved = json.loads(path.read_text())["settings"]
                break
            except (OSError, ValueError, KeyError):
                time.sleep(0.1)
        if saved is None:
            raise RunError(f"{path} is unreadable; use --overwrite")
        changed = settings_difference(saved, self.settings)
        if changed:
            raise RunError(f"{self.root} holds a run with other settings ({', '.join(changed)} "
                           "differ); use the same settings, --overwrite or another folder")

    # parts ---------------------------------------------------------------------------------

    def part_path(self, start: int, stop: int) -> Path:
        """``parts/rows_START-STOP.npz``: the rows ``[start, stop)`` of the run."""
        return self.root / "parts" / f"rows_{start:06d}-{stop:06d}.npz"

    def write_part(self, start: int, stop: int, arrays: Mapping[str, Any]) -> Path:
        """Atomically write the rows ``[start, stop)``."""
        return write_npz(self.part_path(start, stop), arrays)

    def parts(self) -> dict[tuple[int, int], Path]:
        """The finished parts, ``{(start, stop): path}`` in row order."""
        found = {}
        for path in (self.root / "parts").glob("rows_*.npz"):
            match = PART_PATTERN.fullmatch(path.name)
            if match:
                found[(int(match.group(1)), int(match.group(2)))] = path
        return dict(sorted(found.items()))

    def read_part(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """The arrays of a finished part.

        Raises:
            RunError: an unreadable part (named).
        """
        path = self.part_path(start, stop)
        try:
            return read_npz_arrays(path)
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise RunError(f"{path} is unreadable ({error}); delete it and resume") from None

    # locks ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[bool]:
        """Try to take the exclusive lock ``name``; yields whether this worker holds it (a lock
        held by another worker is not waited for). The lock is released on exit.

        A lock left by a killed worker is taken over when its process no longer exists; a lock
        held on another machine (``HOST`` differs) is never judged stale.
        """
        path = self.root / ".locks" / f"{name}.lock"
        held = self._acquire(path)
        try:
            yield held
        finally:
            if held:
                path.unlink(missing_ok=True)

    @staticmethod
    def _acquire(path: Path) -> bool:
        for _ in range(2):
            # The lock appears with its owner written in it (a hard link to a finished file),
            # so no worker ever reads an empty lock and takes it for a stale one.
            tmp = temporary_path(path)
            tmp.write_text(f"{os.getpid()} {socket.gethostname()}")
            try:
                os.link(tmp, path)
            except FileExistsError:
                if _lock_is_live(path):
                    return False
                path.unlink(missing_ok=True)  # stale: its worker is gone
                continue
            finally:
                tmp.unlink(missing_ok=True)
            return True
        return False


def _lock_is_live(path: Path) -> bool:
    """Whether the owner written in a lock file (``PID HOST``) may still hold it: a process
    of this machine that exists, or any process of another machine."""
    try:
        owner, _, host = path.read_text().partition(" ")
        pid = int(owner)
    except (FileNotFoundError, ValueError):
        return False  # released this instant, or not written by a live lock (always complete)
    except OSError:
        return True  # unreadable: not provably stale
    if host.strip() and host.strip() != socket.gethostname():
        return True
    return _process_exists(pid)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
