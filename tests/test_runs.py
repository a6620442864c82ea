"""Behaviour of the run store (fitkit.io.runs): atomic writes, settings, parts, locks, shards,
seed streams."""

from __future__ import annotations

import math
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from fitkit.io.runs import (
    RunError,
    RunStore,
    Shard,
    atomic_write,
    fingerprint,
    npz_bytes,
    read_npz_arrays,
    remove_temporaries,
    seed_stream,
    settings_difference,
    temporary_path,
    write_json,
    write_npz,
    write_torch,
)

SETTINGS = {"prior": "gmm", "batch_size": 4, "weights": {"pose": 1.0}}


def files(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def dead_pid() -> int:
    """The id of a process that has ended."""
    process = subprocess.Popen([sys.executable, "-c", ""])
    process.wait()
    return process.pid


# --------------------------------------------------------------------------- atomic writes


def test_a_failing_writer_leaves_the_old_file_and_no_partial_one(tmp_path):
    path = atomic_write(tmp_path / "sub" / "out.bin", b"complete")

    def writer(tmp):
        tmp.write_bytes(b"half of it")
        raise KeyboardInterrupt  # a killed run

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, writer)
    assert path.read_bytes() == b"complete"
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "sub" / "new.bin", writer)
    assert files(tmp_path) == ["sub/out.bin"]


def test_temporaries_of_a_killed_run_are_removed(tmp_path):
    stale = temporary_path(tmp_path / "part.npz")
    stale.write_bytes(b"half")
    (tmp_path / "keep.npz").write_bytes(b"done")
    remove_temporaries(tmp_path, tmp_path / "absent")
    assert files(tmp_path) == ["keep.npz"]


def test_write_json_refuses_nan_and_writes_nothing(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "metrics.json", {"mpjpe": math.nan})
    assert files(tmp_path) == []
    write_json(tmp_path / "metrics.json", {"mpjpe": 1.5})
    assert (tmp_path / "metrics.json").read_text() == '{\n "mpjpe": 1.5\n}\n'


def test_npz_files_are_reproducible_and_hold_no_objects(tmp_path):
    arrays = {"image_names": np.array(["a", "b"]), "betas": np.arange(20.0).reshape(2, 10)}
    assert npz_bytes(arrays) == npz_bytes(dict(arrays))
    read = read_npz_arrays(write_npz(tmp_path / "params.npz", arrays))
    assert read.keys() == arrays.keys()
    for key, value in arrays.items():
        np.testing.assert_array_equal(read[key], value)
    with pytest.raises(ValueError):
        npz_bytes({"messages": np.array([{"a": 1}], dtype=object)})


def test_torch_files_depend_on_the_state_only(tmp_path):
    state = {"step": 3, "model": {"weight": torch.arange(6.0).view(2, 3)}}
    first = write_torch(tmp_path / "a.pt", state)
    second = write_torch(tmp_path / "sub" / "other_name.pt", state)
    assert first.read_bytes() == second.read_bytes()
    loaded = torch.load(first, weights_only=True)
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["weight"], state["model"]["weight"])


# --------------------------------------------------------------------------- settings


def test_fingerprint_and_difference_of_settings():
    reordered = {"weights": {"pose": 1.0}, "batch_size": 4, "prior": "gmm"}
    assert fingerprint(reordered) == fingerprint(SETTINGS)
    assert fingerprint({**SETTINGS, "batch_size": 8}) != fingerprint(SETTINGS)
    assert settings_difference(SETTINGS, reordered) == []
    changed = {**SETTINGS, "prior": "vposer", "new": 1, "weights": {"pose": 2.0}}
    assert settings_difference(SETTINGS, changed) == ["new", "prior", "weights"]


def test_run_store_refuses_a_used_folder_without_resume_or_overwrite(tmp_path):
    RunStore(tmp_path / "run", SETTINGS)
    with pytest.raises(RunError, match="not empty.*--resume.*--overwrite"):
        RunStore(tmp_path / "run", SETTINGS)
    RunStore(tmp_path / "run", SETTINGS, resume=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(RunError, match="not a folder"):
        RunStore(tmp_path / "file", SETTINGS)


def test_run_store_refuses_other_settings_naming_the_key(tmp_path):
    RunStore(tmp_path / "run", SETTINGS)
    other = {**SETTINGS, "batch_size": 8}
    for flags in ({"resume": True}, {"shared": True}):
        with pytest.raises(RunError, match=r"other settings \(batch_size differ\)"):
            RunStore(tmp_path / "run", other, **flags)


def test_workers_join_a_shared_folder_and_overwrite_starts_over(tmp_path):
    first = RunStore(tmp_path / "run", SETTINGS, outputs=("results.npz",), shared=True)
    first.write_part(0, 4, {"x": np.zeros(4)})
    (tmp_path / "run" / "results.npz").write_bytes(b"old")
    # A worker of the same run joins while the first is writing a part: its temporary stays.
    writing = temporary_path(first.part_path(4, 8))
    writing.write_bytes(b"half")
    second = RunStore(tmp_path / "run", SETTINGS, outputs=("results.npz",), shared=True)
    assert list(second.parts()) == [(0, 4)] and writing.exists()
    # A single worker resuming clears what killed workers left.
    RunStore(tmp_path / "run", SETTINGS, outputs=("results.npz",), resume=True)
    assert not writing.exists()
    fresh = RunStore(tmp_path / "run", {**SETTINGS, "batch_size": 8}, outputs=("results.npz",),
                     overwrite=True)
    assert fresh.parts() == {} and not (tmp_path / "run" / "results.npz").exists()


def test_parts_are_listed_by_row_range(tmp_path):
    store = RunStore(tmp_path / "run", SETTINGS)
    for start, stop in ((32, 64), (0, 32), (64, 70)):
        store.write_part(start, stop, {"rows": np.arange(start, stop)})
    (tmp_path / "run" / "parts" / "batch_00003.npz").write_bytes(b"not a part")
    assert list(store.parts()) == [(0, 32), (32, 64), (64, 70)]
    assert store.parts()[(32, 64)].name == "rows_000032-000064.npz"
    np.testing.assert_array_equal(store.read_part(64, 70)["rows"], np.arange(64, 70))
    store.part_path(70, 80).write_bytes(b"junk")
    with pytest.raises(RunError, match="rows_000070-000080.npz is unreadable"):
        store.read_part(70, 80)


# --------------------------------------------------------------------------- locks


def test_a_lock_is_held_by_one_worker_at_a_time(tmp_path):
    store = RunStore(tmp_path / "run", SETTINGS)
    with store.lock("merge") as held:
        assert held
        with store.lock("merge") as again:
            assert not again
        with store.lock("other") as other:
            assert other
        with RunStore(tmp_path / "run", SETTINGS, shared=True).lock("merge") as joined:
            assert not joined
    with store.lock("merge") as after:
        assert after
    assert files(tmp_path / "run" / ".locks") == []


def test_a_stale_lock_is_taken_over_but_not_one_of_another_machine(tmp_path):
    store = RunStore(tmp_path / "run", SETTINGS)
    path = tmp_path / "run" / ".locks" / "merge.lock"
    path.write_text(f"{dead_pid()} {socket.gethostname()}")
    with store.lock("merge") as held:
        assert held
    path.write_text(f"{dead_pid()} {socket.gethostname()}-elsewhere")
    with store.lock("merge") as held:
        assert not held
    assert path.exists()


# --------------------------------------------------------------------------- shards, seeds


def test_shards_parse_and_deal_items_round_robin():
    shard = Shard.parse("1/4")
    assert shard == Shard(1, 4) and str(shard) == "1/4"
    assert [item for item in range(10) if shard.owns(item)] == [1, 5, 9]
    for bad in ("4/4", "x", "-1/4", "1/0", "1"):
        with pytest.raises(ValueError):
            Shard.parse(bad)


def test_seed_streams_depend_on_seed_and_keys_only():
    def draw(*keys):
        return torch.rand(4, generator=seed_stream(*keys)).tolist()

    assert draw(3, 7, 1) == draw(3, 7, 1)
    draws = [draw(*keys) for keys in ((3, 7, 1), (3, 7, 2), (3, 1, 7), (4, 7, 1), (3, 7))]
    assert len({tuple(d) for d in draws}) == len(draws)
    # The streams of the prior trainers' batches are the generators they always used.
    generator = torch.Generator().manual_seed(5 * 1_000_003 + 11)
    assert draw(5, 11) == torch.rand(4, generator=generator).tolist()
