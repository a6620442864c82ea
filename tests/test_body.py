"""Behaviour of fitkit.body: loaders (chumpy-free pickles, npz, folders), BodyModel, keypoints."""

from __future__ import annotations

import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
import torch
from smplx.vertex_ids import vertex_ids as smplx_vertex_ids

import fitkit
from fitkit.body import (
    OPEN_BODY_PATH,
    OPENPOSE25_NAMES,
    OPENPOSE_VERTEX_NAMES,
    SMPL_PARENTS,
    BodyFileError,
    find_body_file,
    load_body,
    read_smpl_pickle,
)
from fitkit.geometry.rotations import axis_angle_to_matrix

NUM_VERTICES = 64
MARKER_NAMES = ("C7", "STRN", "LKNE", "RKNE")
LBS_ATOL = 1e-7  # smplx adds 1e-8 to every rotation angle


def smpl_arrays(num_vertices: int = NUM_VERTICES, num_shapes: int = 10, seed: int = 0) -> dict:
    """A small random body in the SMPL-format ``.npz`` layout, with vertex keypoints and markers."""
    rng = np.random.default_rng(seed)
    v = num_vertices
    j_regressor = np.zeros((24, v))
    for joint in range(24):
        picked = rng.choice(v, size=4, replace=False)
        j_regressor[joint, picked] = rng.dirichlet(np.ones(4))
    weights = rng.random((v, 24)) ** 4
    point_ids = rng.choice(v, size=len(OPENPOSE_VERTEX_NAMES) + len(MARKER_NAMES), replace=False)
    return {
        "v_template": rng.normal(scale=0.3, size=(v, 3)),
        "f": rng.integers(0, v, size=(2 * v, 3)),
        "shapedirs": rng.normal(scale=0.02, size=(v, 3, num_shapes)),
        "posedirs": rng.normal(scale=0.01, size=(v, 3, 207)),
        "J_regressor": j_regressor,
        "weights": weights / weights.sum(axis=1, keepdims=True),
        "kintree_table": np.stack([np.array(SMPL_PARENTS), np.arange(24)]),
        "vertex_ids_names": np.array(OPENPOSE_VERTEX_NAMES),
        "vertex_ids": point_ids[: len(OPENPOSE_VERTEX_NAMES)],
        "marker_names": np.array(MARKER_NAMES),
        "marker_ids": point_ids[len(OPENPOSE_VERTEX_NAMES) :],
    }


def write_npz(path: Path, arrays: dict) -> Path:
    np.savez(path, **arrays)
    return path


def random_params(batch: int, dtype: torch.dtype, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    sizes = {"global_orient": 3, "body_pose": 69, "betas": 10, "transl": 3}
    return {
        name: 0.3 * torch.randn(batch, size, generator=generator, dtype=dtype)
        for name, size in sizes.items()
    }


def reference_lbs(arrays: dict, params: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """SMPL's equations written out: (B, V, 3) vertices and (B, 24, 3) joints, float64."""
    a = {
        k: torch.as_tensor(arrays[k], dtype=torch.float64)
        for k in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights")
    }
    pose = torch.cat([params["global_orient"], params["body_pose"]], dim=1).view(-1, 24, 3)
    rotations = axis_angle_to_matrix(pose)
    batch = pose.shape[0]
    shaped = a["v_template"] + torch.einsum("vck,bk->bvc", a["shapedirs"], params["betas"])
    rest_joints = torch.einsum("jv,bvc->bjc", a["J_regressor"], shaped)
    feature = (rotations[:, 1:] - torch.eye(3, dtype=torch.float64)).reshape(batch, 207)
    posed = shaped + torch.einsum("vck,bk->bvc", a["posedirs"], feature)
    world_rot, world_pos = [rotations[:, 0]], [rest_joints[:, 0]]
    for joint in range(1, 24):
        parent = SMPL_PARENTS[joint]
        offset = rest_joints[:, joint] - rest_joints[:, parent]
        world_rot.append(world_rot[parent] @ rotations[:, joint])
        world_pos.append(world_pos[parent] + (world_rot[parent] @ offset[..., None])[..., 0])
    rot = torch.stack(world_rot, dim=1)
    pos = torch.stack(world_pos, dim=1)
    shift = pos - (rot @ rest_joints[..., None])[..., 0]
    blend_rot = torch.einsum("vj,bjmn->bvmn", a["weights"], rot)
    blend_shift = torch.einsum("vj,bjm->bvm", a["weights"], shift)
    vertices = (blend_rot @ posed[..., None])[..., 0] + blend_shift
    transl = params["transl"][:, None]
    return vertices + transl, pos + transl


def test_npz_round_trip_and_output_equals_smpl_equations(tmp_path):
    arrays = smpl_arrays()
    body = load_body(write_npz(tmp_path / "body.npz", arrays), dtype=torch.float64)
    np.testing.assert_array_equal(body.smpl.v_template.numpy(), arrays["v_template"])
    np.testing.assert_array_equal(body.smpl.shapedirs.numpy(), arrays["shapedirs"])
    np.testing.assert_array_equal(body.smpl.J_regressor.numpy(), arrays["J_regressor"])
    np.testing.assert_array_equal(body.faces.numpy(), arrays["f"])
    assert body.faces.dtype == torch.long and body.num_vertices == NUM_VERTICES
    assert body.parents.tolist() == list(SMPL_PARENTS)
    assert body.uv is None and body.dp_I is None
    params = random_params(3, torch.float64)
    output = body(**params)
    vertices, joints = reference_lbs(arrays, params)
    torch.testing.assert_close(output.vertices, vertices, rtol=0, atol=LBS_ATOL)
    torch.testing.assert_close(output.joints, joints, rtol=0, atol=LBS_ATOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_and_backward_reach_all_parameters(tmp_path, dtype):
    body = load_body(write_npz(tmp_path / "body.npz", smpl_arrays()), dtype=dtype)
    params = {k: v.requires_grad_() for k, v in random_params(2, dtype).items()}
    output = body(**params)
    assert output.vertices.shape == (2, NUM_VERTICES, 3) and output.vertices.dtype == dtype
    assert output.joints.shape == (2, 24, 3)
    (output.vertices.square().sum() + output.keypoints("openpose25").square().sum()).backward()
    for name, value in params.items():
        assert value.grad is not None and value.grad.abs().sum() > 0, name


def test_missing_inputs_are_zero_and_batch_comes_from_given_ones(tmp_path):
    arrays = smpl_arrays()
    body = load_body(write_npz(tmp_path / "body.npz", arrays), dtype=torch.float64)
    rest = body()
    assert rest.vertices.shape == (1, NUM_VERTICES, 3)
    np.testing.assert_allclose(rest.vertices[0].numpy(), arrays["v_template"], atol=1e-12)
    transl = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    moved = body(transl=transl)
    torch.testing.assert_close(moved.vertices, rest.vertices + transl[:, None])
    with pytest.raises(ValueError, match="batch size"):
        body(transl=transl, betas=torch.zeros(3, 10, dtype=torch.float64))
    with pytest.raises(ValueError, match="body_pose"):
        body(body_pose=torch.zeros(2, 72, dtype=torch.float64))


def test_keypoint_sets_follow_smpl_and_openpose_conventions(tmp_path):
    arrays = smpl_arrays()
    body = load_body(write_npz(tmp_path / "body.npz", arrays))
    assert body.keypoint_sets == (
        "smpl24", "openpose25", "coco17", "coco_wholebody", "halpe26", "h36m17", "mediapipe33",
        "markers", "sampled", "vertices")
    output = body(**random_params(2, torch.float32))
    openpose = output.keypoints("openpose25")
    assert openpose.shape == (2, 25, 3)
    assert body.keypoint_names("openpose25") == OPENPOSE25_NAMES
    ids = dict(zip(OPENPOSE_VERTEX_NAMES, arrays["vertex_ids"].tolist(), strict=True))
    at = OPENPOSE25_NAMES.index
    joints, vertices = output.joints, output.vertices
    expected = {
        "Nose": vertices[:, ids["nose"]],
        "Neck": joints[:, 12],
        "RShoulder": joints[:, 17],
        "LWrist": joints[:, 20],
        "MidHip": joints[:, 0],
        "RHip": joints[:, 2],
        "LAnkle": joints[:, 7],
        "REye": vertices[:, ids["reye"]],
        "LEar": vertices[:, ids["lear"]],
        "RHeel": vertices[:, ids["RHeel"]],
        "LBigToe": vertices[:, ids["LBigToe"]],
    }
    for name, point in expected.items():
        torch.testing.assert_close(openpose[:, at(name)], point, msg=name)
    assert torch.equal(output.keypoints("smpl24"), joints)
    assert torch.equal(output.keypoints("vertices"), vertices)
    markers = output.keypoints("markers")
    torch.testing.assert_close(markers, vertices[:, arrays["marker_ids"]])
    assert body.keypoint_names("markers") == MARKER_NAMES
    with pytest.raises(ValueError, match="unknown keypoint set"):
        output.keypoints("coco18")


def test_body_without_markers_or_vertex_ids_says_so(tmp_path):
    arrays = smpl_arrays()
    for key in ("marker_names", "marker_ids", "vertex_ids_names", "vertex_ids"):
        del arrays[key]
    body = load_body(write_npz(tmp_path / "plain.npz", arrays))
    assert body.keypoint_sets == ("smpl24", "h36m17", "sampled", "vertices")  # H36M: joints only
    output = body()
    with pytest.raises(ValueError, match="plain.npz.*marker_names"):
        output.keypoints("markers")
    with pytest.raises(ValueError, match="plain.npz.*vertex_ids"):
        output.keypoints("openpose25")


def test_smpl_sized_body_without_ids_uses_smplx_smpl_vertex_ids(tmp_path):
    arrays = smpl_arrays(num_vertices=6890)
    arrays["posedirs"] = np.zeros((6890, 3, 207), dtype=np.float32)
    for key in ("marker_names", "marker_ids", "vertex_ids_names", "vertex_ids"):
        del arrays[key]
    body = load_body(write_npz(tmp_path / "SMPL_NEUTRAL.npz", arrays))
    output = body(**random_params(1, torch.float32))
    nose = output.keypoints("openpose25")[:, 0]
    torch.testing.assert_close(nose, output.vertices[:, smplx_vertex_ids["smplh"]["nose"]])


def test_uv_and_densepose_extras_move_with_to(tmp_path):
    rng = np.random.default_rng(0)
    arrays = smpl_arrays()
    arrays.update(
        vt=rng.random((80, 2)),
        ft=rng.integers(0, 80, size=arrays["f"].shape),
        dp_I=rng.integers(1, 25, size=NUM_VERTICES).astype(np.uint8),
        dp_U=rng.random(NUM_VERTICES),
        dp_V=rng.random(NUM_VERTICES),
    )
    body = load_body(write_npz(tmp_path / "body.npz", arrays)).to(dtype=torch.float64)
    assert body.dtype == torch.float64 and body.vt.dtype == torch.float64
    assert body.faces.dtype == torch.long and body.ft.dtype == torch.long
    vt, ft = body.uv
    assert vt.shape == (80, 2) and ft.shape == arrays["f"].shape
    np.testing.assert_array_equal(body.dp_I.numpy(), arrays["dp_I"])
    assert body.dp_U.dtype == torch.float64 and body.dp_V.shape == (NUM_VERTICES,)
    assert body(**random_params(1, torch.float64)).vertices.dtype == torch.float64
    assert not any(p.numel() for p in body.parameters())  # nothing sized by batch on the module


def install_fake_chumpy(monkeypatch) -> None:
    """Stand-ins registered under chumpy's module names, pickling like chumpy: the object's
    ``__dict__`` as state, the value of a plain ``Ch`` under ``'x'``."""
    chumpy, ch, reordering = (
        types.ModuleType(n) for n in ("chumpy", "chumpy.ch", "chumpy.reordering")
    )

    class Ch:
        def __init__(self, x):
            self.x = np.asarray(x, dtype=np.float64)
            self._dirty_vars = set()
            self._itr = None
            self._depends_on_deps = {}
            self._make_dense = False
            self._make_sparse = False

    class Reshape(Ch):
        def __init__(self, a, newshape):
            super().__init__(0.0)
            del self.x
            self.a = a
            self.newshape = newshape

    for cls, module in ((Ch, ch), (Reshape, reordering)):
        cls.__module__ = module.__name__
        cls.__qualname__ = cls.__name__
        setattr(module, cls.__name__, cls)
    chumpy.ch, chumpy.reordering = ch, reordering
    for module in (chumpy, ch, reordering):
        monkeypatch.setitem(sys.modules, module.__name__, module)


def write_official_pickle(path: Path, arrays: dict, monkeypatch) -> None:
    """An official-style SMPL pickle: chumpy arrays, sparse J_regressor, protocol 2."""
    install_fake_chumpy(monkeypatch)
    ch = sys.modules["chumpy.ch"]
    reordering = sys.modules["chumpy.reordering"]
    kintree = arrays["kintree_table"].astype(np.int64)
    kintree[0, 0] = 2**32 - 1
    content = {
        "v_template": ch.Ch(arrays["v_template"]),
        "f": arrays["f"].astype(np.uint32),
        "shapedirs": ch.Ch(arrays["shapedirs"]),
        "posedirs": reordering.Reshape(ch.Ch(arrays["posedirs"].ravel()), arrays["posedirs"].shape),
        "J_regressor": scipy.sparse.csc_matrix(arrays["J_regressor"]),
        "weights": ch.Ch(arrays["weights"]),
        "kintree_table": kintree,
        "J": ch.Ch(arrays["J_regressor"] @ arrays["v_template"]),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }
    with open(path, "wb") as file:
        pickle.dump(content, file, protocol=2)
    for name in ("chumpy", "chumpy.ch", "chumpy.reordering"):
        monkeypatch.setitem(sys.modules, name, None)  # importing chumpy now fails


def test_official_pickle_loads_without_chumpy(tmp_path, monkeypatch):
    arrays = smpl_arrays(num_shapes=300)
    path = tmp_path / "basicmodel_neutral_lbs_10_207_0_v1.1.0.pkl"
    write_official_pickle(path, arrays, monkeypatch)
    with pytest.raises(ImportError):
        import chumpy  # noqa: F401
    content = read_smpl_pickle(path)
    for key in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights"):
        assert isinstance(content[key], np.ndarray), key
        np.testing.assert_array_equal(content[key], arrays[key], err_msg=key)
    assert content["bs_style"] == "lbs"
    body = load_body(path, dtype=torch.float64)
    np.testing.assert_array_equal(body.smpl.shapedirs.numpy(), arrays["shapedirs"][:, :, :10])
    assert body.smpl.shapedirs.shape[-1] == 10
    params = random_params(2, torch.float64)
    arrays["shapedirs"] = arrays["shapedirs"][:, :, :10]
    vertices, _ = reference_lbs(arrays, params)
    torch.testing.assert_close(body(**params).vertices, vertices, rtol=0, atol=LBS_ATOL)


def test_folder_and_gender_find_official_file_names(tmp_path):
    arrays = smpl_arrays()
    plain = {k: v for k, v in arrays.items() if k not in ("vertex_ids_names", "vertex_ids")}
    models = tmp_path / "SMPL_python_v.1.1.0" / "smpl" / "models"
    models.mkdir(parents=True)
    for name in ("basicModel_f_lbs_10_207_0_v1.0.0.pkl", "basicmodel_m_lbs_10_207_0_v1.1.0.pkl"):
        with open(models / name, "wb") as file:
            pickle.dump(plain, file, protocol=2)
    root = tmp_path / "SMPL_python_v.1.1.0"
    assert find_body_file(root, "female").name == "basicModel_f_lbs_10_207_0_v1.0.0.pkl"
    assert find_body_file(root, "male").name == "basicmodel_m_lbs_10_207_0_v1.1.0.pkl"
    with pytest.raises(FileNotFoundError, match="SMPL_NEUTRAL.pkl"):
        find_body_file(root, "neutral")
    write_npz(models / "SMPL_FEMALE.npz", arrays)
    assert find_body_file(root, "female").name == "SMPL_FEMALE.npz"  # smplx's names come first
    body = fitkit.load_body(root, gender="male")
    assert body.num_vertices == NUM_VERTICES and body.source.endswith("v1.1.0.pkl")
    with pytest.raises(ValueError, match="gender"):
        load_body(root, gender="other")


def test_bad_files_name_the_file_and_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        load_body(tmp_path / "nowhere.npz")
    arrays = smpl_arrays()
    del arrays["weights"]
    with pytest.raises(BodyFileError, match="no_weights.npz: key 'weights': missing") as error:
        load_body(write_npz(tmp_path / "no_weights.npz", arrays))
    assert error.value.key == "weights"
    cases = {
        "posedirs": np.zeros((NUM_VERTICES, 3, 200)),
        "J_regressor": np.zeros((23, NUM_VERTICES)),
        "shapedirs": np.zeros((NUM_VERTICES, 3, 8)),
        "f": np.full((10, 3), NUM_VERTICES),
        "kintree_table": np.stack([np.arange(24) - 1, np.arange(24)]),
        "v_template": np.full((NUM_VERTICES, 3), np.nan),
    }
    for key, value in cases.items():
        arrays = {**smpl_arrays(), key: value}
        with pytest.raises(BodyFileError, match=f"bad_{key}.npz: key '{key}'"):
            load_body(write_npz(tmp_path / f"bad_{key}.npz", arrays))
    arrays = {**smpl_arrays(), "J_regressor": np.zeros((24, NUM_VERTICES))}
    with pytest.raises(BodyFileError, match="zero_joints.npz: key 'J_regressor': row 0 sums to 0"):
        load_body(write_npz(tmp_path / "zero_joints.npz", arrays))  # would report MPJPE 0
    arrays = smpl_arrays()
    del arrays["marker_ids"]
    with pytest.raises(BodyFileError, match="key 'marker_ids': missing"):
        load_body(write_npz(tmp_path / "half_markers.npz", arrays))
    (tmp_path / "broken.pkl").write_bytes(b"not a pickle")
    with pytest.raises(BodyFileError, match="broken.pkl"):
        load_body(tmp_path / "broken.pkl")
    (tmp_path / "body.obj").write_text("v 0 0 0\n")
    with pytest.raises(BodyFileError, match="body.obj"):
        load_body(tmp_path / "body.obj")


def test_open_body_name_resolves_to_the_packaged_file():
    assert OPEN_BODY_PATH.name == "open_body.npz"
    assert OPEN_BODY_PATH.parent == Path(fitkit.body.__file__).resolve().parent / "data"
    with pytest.raises(ValueError, match="gender-neutral"):
        load_body("open", gender="female")


def test_open_body_loads_with_its_keypoint_sets():
    body = load_body()
    assert body.keypoint_sets == (
        "smpl24", "openpose25", "coco17", "coco_wholebody", "halpe26", "h36m17", "mediapipe33",
        "markers", "sampled", "vertices")
    output = body(**random_params(2, torch.float32))
    assert output.keypoints("openpose25").shape == (2, 25, 3)
    assert output.vertices.shape == (2, body.num_vertices, 3)
