"""FitResult.save and FitResult.export_mesh: what they write reads back (fitkit's parameter
reader, trimesh) to the same parameters, vertices and faces."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

import fitkit
from fitkit.fitting import FitResult
from fitkit.io import read_params
from fitkit.io.inputs import read_init

N = 3
FORMATS = (".obj", ".ply", ".glb")


@pytest.fixture(scope="module")
def result() -> FitResult:
    """A fit of N bodies through SMPLify (no confident keypoint: flagged ``no_data``)."""
    rng = np.random.default_rng(0)
    init = {"global_orient": np.tile([[np.pi, 0.0, 0.0]], (N, 1)),
            "body_pose": 0.2 * rng.standard_normal((N, 69)),
            "betas": rng.standard_normal((N, 10)),
            "transl": np.tile([[0.0, 0.2, 5.0]], (N, 1))}
    return fitkit.fit(np.zeros((N, 64, 80, 3), np.uint8), init=init,
                      keypoints=np.zeros((N, 25, 3)), iterations=1)


def reload(path: Path, force: str | None = None) -> trimesh.Trimesh | trimesh.Scene:
    """The file as trimesh reads it (``force="mesh"``: one mesh even from a ``.glb``)."""
    return trimesh.load(path, process=False, maintain_order=True, force=force)


@pytest.mark.parametrize("suffix", FORMATS)
def test_export_mesh_reloads_to_the_same_vertices_and_faces(
        tmp_path: Path, result: FitResult, suffix: str) -> None:
    faces = result.faces.numpy()
    path = result.export_mesh(tmp_path / f"body{suffix}", index=-1)
    mesh = reload(path, force="mesh")
    assert np.abs(mesh.vertices - result.vertices[N - 1].double().numpy()).max() < 1e-6
    assert np.array_equal(mesh.faces, faces)

    path = result.export_mesh(tmp_path / f"all{suffix}", index="all")
    vertices = result.vertices.double().numpy()
    if suffix == ".glb":  # one node per sample
        scene = reload(path)
        assert sorted(scene.geometry) == [f"body_{row}" for row in range(N)]
        for row in range(N):
            mesh = scene.geometry[f"body_{row}"]
            assert np.abs(mesh.vertices - vertices[row]).max() < 1e-6
            assert np.array_equal(mesh.faces, faces)
    else:  # one mesh: the samples concatenated in order
        mesh = reload(path)
        assert np.abs(mesh.vertices - vertices.reshape(-1, 3)).max() < 1e-6
        offsets = np.arange(N)[:, None, None] * vertices.shape[1]
        assert np.array_equal(mesh.faces, (faces[None] + offsets).reshape(-1, 3))


def test_export_mesh_leaves_out_failed_samples_and_refuses_bad_requests(
        tmp_path: Path, result: FitResult) -> None:
    vertices = result.vertices.clone()
    vertices[1] = torch.nan
    failed = dataclasses.replace(result, vertices=vertices,
                                 errors=["", "init transl is not finite", ""])
    scene = reload(failed.export_mesh(tmp_path / "all.glb", index="all"))
    assert sorted(scene.geometry) == ["body_0", "body_2"]
    with pytest.raises(ValueError, match="sample 1 has no mesh.*init transl is not finite"):
        failed.export_mesh(tmp_path / "one.obj", index=1)
    with pytest.raises(ValueError, match="index must be"):
        result.export_mesh(tmp_path / "one.obj", index=N)
    with pytest.raises(ValueError, match=r"\.obj, \.ply, \.glb"):
        result.export_mesh(tmp_path / "one.stl")
    bare = dataclasses.replace(result, faces=None)
    with pytest.raises(ValueError, match="faces="):
        bare.export_mesh(tmp_path / "one.obj")
    path = bare.export_mesh(tmp_path / "one.ply", faces=result.faces.numpy())
    assert np.array_equal(reload(path, force="mesh").faces, result.faces.numpy())
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_save_reloads_to_the_same_parameters_energies_flags_and_errors(
        tmp_path: Path, result: FitResult) -> None:
    failed = dataclasses.replace(result, errors=["", "bad keypoints", ""])
    path = failed.save(tmp_path / "out" / "results.npz", names=["a", "b", "c"])
    arrays = read_params(path)
    assert arrays["image_names"].tolist() == ["a", "b", "c"]
    for key, value in result.params.items():
        assert np.array_equal(arrays[key], value.float().numpy()), key
    assert np.array_equal(arrays["energy"], result.energy.double().numpy())
    for name, value in result.terms.items():
        assert np.array_equal(arrays[f"energy_{name}"], value.double().numpy()), name
    for name, value in result.flags.items():
        assert np.array_equal(arrays[f"flag_{name}"], value.numpy()), name
    assert arrays["error"].tolist() == ["", "bad keypoints", ""]

    # as init: rows by name, the energies, flags and errors left out
    again = read_init(path, names=["c", "a"])
    assert set(again) == set(result.params)
    assert np.array_equal(again["body_pose"], result.params["body_pose"][[2, 0]].numpy())
    assert read_params(result.save(tmp_path / "unnamed.npz"))["image_names"][1] == "row000001"
    with pytest.raises(ValueError, match="2 names for 3 samples"):
        result.save(tmp_path / "short.npz", names=["a", "b"])
