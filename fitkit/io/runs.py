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
- **Locks** (:func:`exclusive_lock`, :meth:`RunStore.lock`): an exclusive lock file holding its
  owner (``PID HOST``), for the step only one worker may do; a lock of a process that no longer
  exists is taken over. A writer holds one for as long as it writes (``RunStore(writer=...)``,
  :func:`writer_lock`), so a second writer of the same output is refused.
- **Inputs by content** (:func:`file_digest`): a run's settings record the digest of its input
  files, so a resume after an input changed is refused.
- **Seed streams** (:func:`seed_stream`): a generator per ``(seed, key...)``, so what a run draws
  for one item does not depend on the items before it.
- **The error policy of the command lines** (:func:`run_command`): a failure caused by the input
  ends with one line ``PROG: error: ...`` and exit code 2, a failure of the machine (disk full,
  permission denied) with one line and exit code 1, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import re
import shutil
import socket
import sys
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

PART_PATTERN = re.compile(r"rows_(\d{6,})-(\d{6,})\.npz")


class RunError(Exception):
    """A run that cannot go on because of its arguments, inputs or output folder: a folder that
    holds a run with other settings or is being written by another process, unreadable
    bookkeeping. The message names the file and what differs (exit code 2 under
    :func:`run_command`). A folder the machine cannot write raises ``OSError`` instead."""


# --------------------------------------------------------------------------- atomic writes


def temporary_path(path: Path) -> Path:
    """The temporary name :func:`atomic_write` uses for ``path``: ``.NAME.PID.tmp``."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path: str | os.PathLike, data: bytes | Callable[[Path], None]) -> Path:
    """Write ``data`` (bytes, or a writer called with a path) to a temporary file beside
    ``path`` and rename it into place; parent folders are created.

    Returns:
        ``path``.
    Raises:
        OSError: the file cannot be written (disk full, no permission); it names ``path``, and
            neither ``path`` nor the temporary file is left changed.
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
    except BaseException as error:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if (isinstance(error, OSError) and error.errno is not None
                and error.filename in (None, str(tmp))):  # name the file the caller asked for
            raise OSError(error.errno, error.strerror, str(path)) from error
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


def file_digest(path: str | os.PathLike) -> str:
    """``"sha256:HEX"`` of a file's bytes, or of a folder's files (their relative names and
    bytes, in name order): recorded in a run's settings, so that a resume after an input
    changed is refused."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        if path.is_dir():
            digest.update(f"{file.relative_to(path).as_posix()}\0".encode())
        with open(file, "rb") as handle:
            for block in iter(lambda handle=handle: handle.read(1 << 20), b""):
                digest.update(block)
    return f"sha256:{digest.hexdigest()}"


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


# --------------------------------------------------------------------------- locks


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike) -> Iterator[bool]:
    """Try to take the exclusive lock file ``path`` (its folder must exist); yields whether this
    process holds it (a lock held by another process is not waited for). The lock is released
    on exit.

    A lock left by a killed process is taken over when its process no longer exists; a lock
    held on another machine (``HOST`` differs) is never judged stale.
    """
    path = Path(path)
    held = _acquire(path)
    try:
        yield held
    finally:
        if held:
            path.unlink(missing_ok=True)


def lock_holder(path: str | os.PathLike) -> str:
    """Who holds a lock file, for messages: ``"process PID on HOST"``."""
    try:
        owner, _, host = Path(path).read_text().partition(" ")
    except OSError:
        return "another process"
    return f"process {owner.strip()} on {host.strip() or 'this machine'}"


def locked_message(path: Path, what: str) -> str:
    """The message that refuses a second writer of ``what`` (locked by ``path``)."""
    return (f"{what} is being written by another run ({lock_holder(path)}, lock {path}); wait "
            "for it to end or use another output (if that process is not running, delete the "
            "lock)")


@contextlib.contextmanager
def writer_lock(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold the exclusive lock file ``path`` while writing ``what`` (an output folder or
    file); its folder is created.

    Raises:
        RunError: another live process holds it (named, with the lock's path).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(path) as held:
        if not held:
            raise RunError(locked_message(path, what))
        yield


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
        writer: the name of the writer lock (``.locks/NAME.lock``) this store holds until it is
            closed (:meth:`close`, or the end of a ``with`` block): ``"writer"`` for a run that
            writes the folder alone, ``"shard-I-N"`` for a shard. It is taken before anything
            in the folder is removed. A store that is not ``shared`` is refused while any other
            lock of the folder is live; a ``shared`` one while the lock ``"writer"`` is.
            ``None``: no writer lock.
    Raises:
        RunError: a non-empty folder without ``resume``/``overwrite``/``shared``, one that holds
            a run with other settings, or one that another live writer holds.
        OSError: a folder the machine cannot write.
    """

    SETTINGS = "settings.json"
    SOLE_WRITER = "writer"
    """The writer lock of a run that writes its folder alone (no shards)."""

    def __init__(
        self,
        root: str | os.PathLike,
        settings: Mapping[str, Any],
        outputs: tuple[str, ...] = (),
        resume: bool = False,
        overwrite: bool = False,
        shared: bool = False,
        writer: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.settings = canonical(settings)
        self.outputs = outputs
        self._writer: Path | None = None
        if self.root.exists() and not self.root.is_dir():
            raise RunError(f"output {self.root} exists and is not a folder")
        has_content = self.root.is_dir() and any(
            path.name != ".locks" for path in self.root.iterdir())
        if has_content and not (resume or overwrite or shared):
            raise RunError(f"output folder {self.root} is not empty; pass --resume to continue "
                           "the run in it or --overwrite to replace its results")
        (self.root / ".locks").mkdir(parents=True, exist_ok=True)
        if writer is not None:
            self._take_writer(writer, shared)
        try:
            if has_content and overwrite:
                for name in (self.SETTINGS, "parts", *outputs):
                    path = self.root / name
                    if path.is_dir():
                        shutil.rmtree(path)
                    elif path.exists():
                        path.unlink()
            (self.root / "parts").mkdir(exist_ok=True)
            if not shared:  # in a shared folder, another worker may be writing its temporaries
                remove_temporaries(self.root, self.root / "parts")
            self._check_settings()
        except BaseException:
            self.close()
            raise

    def _take_writer(self, name: str, shared: bool) -> None:
        """Take the writer lock ``name`` and check that no conflicting writer is live."""
        locks = self.root / ".locks"
        path = locks / f"{name}.lock"
        if not _acquire(path):
            raise RunError(locked_message(path, f"output folder {self.root}"))
        self._writer = path
        others = [locks / f"{self.SOLE_WRITER}.lock"] if shared else sorted(locks.glob("*.lock"))
        for other in others:
            if other != path and _lock_is_live(other):
                self.close()
                raise RunError(locked_message(other, f"output folder {self.root}"))

    def close(self) -> None:
        """Release the writer lock (if any); the store's files stay."""
        if self._writer is not None:
            self._writer.unlink(missing_ok=True)
            self._writer = None

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise RunError(f"{path} is unreadable ({error}); delete it and resume") from None

    def remove_damaged_parts(self) -> list[str]:
        """Delete the parts that cannot be read (a file damaged after it was written, e.g.
        truncated by a copy), so that their rows count as not done and are made again.

        Returns:
            One message per removed part: ``"PATH is unreadable (REASON)"``.
        """
        removed = []
        for path in self.parts().values():
            try:
                read_npz_arrays(path)
            except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
                path.unlink(missing_ok=True)
                removed.append(f"{path} is unreadable ({error})")
        return removed

    # locks ---------------------------------------------------------------------------------

    def lock(self, name: str) -> contextlib.AbstractContextManager[bool]:
        """Try to take the exclusive lock ``.locks/NAME.lock`` (:func:`exclusive_lock`); yields
        whether this worker holds it."""
        return exclusive_lock(self.root / ".locks" / f"{name}.lock")


# --------------------------------------------------------------------------- devices


def check_device(device: str | None) -> None:
    """Refuse a device this machine does not have (``"tpu"``, ``"cuda"`` without a GPU,
    ``"cuda:3"`` with one), before a long job loads anything.

    Raises:
        ValueError: naming the device and why it cannot be used.
    """
    if device is None:
        return
    try:
        torch.empty(0, device=torch.device(device))
    except (RuntimeError, AssertionError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "unavailable"
        raise ValueError(f"device {device!r} cannot be used on this machine ({reason}); "
                         f"cuda available: {torch.cuda.is_available()}") from None


# --------------------------------------------------------------------------- the error policy


def exit_code(error: BaseException) -> int | None:
    """The exit code of fitkit's command lines for a failure (:func:`run_command`).

    Returns:
        2 for a failure caused by the input or the arguments (``ValueError``, which every
        fitkit reader's error is, a missing file, :class:`RunError`); 1 for a failure of the
        machine (any other ``OSError``: disk full, permission denied, a read-only folder; out
        of memory); ``None`` for anything else (a bug, whose traceback should be seen).
    """
    if isinstance(error, ValueError | FileNotFoundError | RunError):
        return 2
    if isinstance(error, OSError | MemoryError | torch.cuda.OutOfMemoryError):
        return 1
    return None


def error_line(error: BaseException) -> str:
    """A failure's message on one line (an operating system error as ``FILE: REASON``)."""
    if isinstance(error, OSError) and error.strerror and error.filename is not None:
        text = f"{error.filename}: {error.strerror}"
        if error.filename2 is not None:
            text += f" ({error.filename2})"
    else:
        text = str(error) or type(error).__name__
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def run_command(prog: str, command: Callable[[], int], interrupted: str = "") -> int:
    """Run a command line's work under fitkit's error policy; returns the exit code.

    ``command`` returns the exit code of a success (0, usually). A failure caused by the input
    or the arguments prints one line ``PROG: error: MESSAGE`` (the message names the file and
    field) and returns 2; a failure of the machine prints one such line and returns 1
    (:func:`exit_code`); every file is written atomically, so nothing half-written is left.
    Ctrl-C prints ``PROG: interrupted`` and ``interrupted`` (what to do next) and returns 130.
    Anything else is a bug and propagates with its traceback.
    """
    try:
        return command()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted" + (f"; {interrupted}" if interrupted else ""),
              file=sys.stderr)
        return 130
    except Exception as error:
        code = exit_code(error)
        if code is None:
            raise
        print(f"{prog}: error: {error_line(error)}", file=sys.stderr)
        return code


def _whole_number(text: str, minimum: int) -> int:
    """``text`` as an integer >= ``minimum``, or an ``argparse`` error saying why not."""
    try:
        value = int(text)
    except ValueError:
        message = f"expected an integer >= {minimum}, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def positive_int(text: str) -> int:
    """``argparse`` type of a count: an integer > 0."""
    return _whole_number(text, 1)


def non_negative_int(text: str) -> int:
    """``argparse`` type of a count that may be 0."""
    return _whole_number(text, 0)


def positive_float(text: str) -> float:
    """``argparse`` type of a rate or scale: a finite number > 0 (not ``nan``, not ``inf``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value
