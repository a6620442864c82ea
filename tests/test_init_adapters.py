"""Other tools' outputs as init: each layout, written from a known body and camera in the tool's
own conventions, projects through fitkit's camera exactly where the tool projects it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import fitkit
from fitkit.geometry import Camera, axis_angle_to_matrix
from fitkit.io import ParamsFileError
from fitkit.io.inputs import FitInputError, read_init

N = 3
SIZES = np.array([[640, 480], [480, 640], [1000, 800]])
TOLERANCE = 0.01  # pixels; fitkit's and the tool's projections differ by rounding only


@pytest.fixture(scope="module")
def body() -> fitkit.BodyModel:
    return fitkit.load_body("open")


@pytest.fixture(scope="module")
def pose() -> dict[str, np.ndarray]:
    """N bodies: upright-ish, facing the camera, random limbs and shape (float64)."""
    rng = np.random.default_rng(0)
    orient = np.array([np.pi, 0.0, 0.0]) + 0.3 * rng.standard_normal((N, 3))
    return {"global_orient": orient, "body_pose": 0.3 * rng.standard_normal((N, 69)),
            "betas": rng.standard_normal((N, 10))}


def posed(body: fitkit.BodyModel, pose: dict[str, np.ndarray]) -> np.ndarray:
    """``(N, V, 3)`` vertices of the known bodies without translation (what the tool's SMPL
    gives before its camera translation)."""
    params = {key: torch.as_tensor(value, dtype=torch.float32) for key, value in pose.items()}
    with torch.no_grad():
        return body(**params, transl=torch.zeros(N, 3)).vertices.double().numpy()


def fitkit_pixels(body: fitkit.BodyModel, arrays: dict[str, np.ndarray],
                  sizes: np.ndarray) -> np.ndarray:
    """The bodies of ``read_init``'s arrays projected through fitkit's camera of them."""
    keys = ("global_orient", "body_pose", "betas", "transl")
    params = {key: torch.as_tensor(arrays[key], dtype=torch.float32) for key in keys}
    with torch.no_grad():
        vertices = body(**params).vertices.double()
    camera = Camera(torch.as_tensor(arrays["focal_length"], dtype=torch.float64),
                    torch.as_tensor(arrays["camera_center"], dtype=torch.float64),
                    torch.as_tensor(sizes, dtype=torch.float64))
    return camera.project(vertices).numpy()


def pinhole(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """``K (X / Z)``: pixels of camera-frame points ``(N, V, 3)`` through ``(N, 3, 3)``."""
    return np.einsum("nij,nvj->nvi", K, points / points[..., 2:])[..., :2]


def matrices(axis_angle: np.ndarray, joints: int) -> np.ndarray:
    """``(N, joints, 3, 3)`` float32 rotation matrices of ``(N, 3 joints)`` axis-angle."""
    rotvec = torch.as_tensor(axis_angle).reshape(len(axis_angle), joints, 3)
    return axis_angle_to_matrix(rotvec).float().numpy()


# --------------------------------------------------------------------------- HMR 2.0


def hmr2_output(pose: dict[str, np.ndarray], sizes: np.ndarray = SIZES) -> dict[str, np.ndarray]:
    """What HMR 2.0's model and ViTDet dataset give for the known bodies: rotation matrices,
    the crop camera, the box (detector pixels: edges at integers) and the image size."""
    rng = np.random.default_rng(1)
    box_size = rng.uniform(200, 400, N)
    box_center = sizes / 2 + rng.uniform(-80, 80, (N, 2))
    pred_cam = np.stack([rng.uniform(0.6, 1.0, N), *rng.uniform(-0.1, 0.1, (2, N))], axis=1)
    return {
        "pred_smpl_params": {"global_orient": matrices(pose["global_orient"], 1),
                             "body_pose": matrices(pose["body_pose"], 23),
                             "betas": pose["betas"].astype(np.float32)},
        "pred_cam": pred_cam.astype(np.float32), "box_center": box_center.astype(np.float32),
        "box_size": box_size.astype(np.float32), "img_size": sizes.astype(np.float32),
        "focal_length": np.full((N, 2), 5000.0, np.float32),  # output['focal_length']: crop
    }


def hmr2_pixels(vertices: np.ndarray, output: dict[str, np.ndarray]) -> np.ndarray:
    """HMR 2.0's own full-frame projection (its demo's ``cam_crop_to_full`` and renderer:
    focal 5000 / 256 * max(W, H), principal point (W / 2, H / 2), pixel edges at integers),
    moved to fitkit's pixels (centres at integers: half a pixel up and left)."""
    s, tx, ty = output["pred_cam"].astype(np.float64).T
    (cx, cy), b = output["box_center"].astype(np.float64).T, output["box_size"]
    w, h = output["img_size"].astype(np.float64).T
    focal = 5000.0 / 256 * np.maximum(w, h)
    transl = np.stack([tx + 2 * (cx - w / 2) / (b * s), ty + 2 * (cy - h / 2) / (b * s),
                       2 * focal / (b * s)], axis=1)
    K = np.zeros((N, 3, 3))
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = focal, focal, w / 2, h / 2, 1
    return pinhole(vertices + transl[:, None], K) - 0.5, transl


def test_hmr2_file_projects_where_hmr2_does(tmp_path: Path, body, pose) -> None:
    output = hmr2_output(pose)
    path = tmp_path / "hmr2_out.npz"  # docs/formats.md: pred_smpl_params flattened with "/"
    np.savez(path, **{f"pred_smpl_params/{key}": value
                      for key, value in output.pop("pred_smpl_params").items()}, **output)
    arrays = read_init(path)
    expected, transl = hmr2_pixels(posed(body, pose), output)
    assert np.abs(fitkit_pixels(body, arrays, SIZES) - expected).max() < TOLERANCE
    assert np.allclose(arrays["transl"], transl, rtol=1e-5)
    assert np.allclose(arrays["body_pose"], pose["body_pose"], atol=1e-4)
    assert np.allclose(arrays["focal_length"][:, 0], 5000 / 256 * SIZES.max(axis=1))


def test_hmr2_demo_outputs_as_a_dict_and_full_frame_translation(body, pose) -> None:
    """``init={**out, **batch}`` as the demo holds them (nested dict of tensors), and a file
    form with top-level keys and the demo's ``pred_cam_t_full``; the image size from the
    images when the output lacks it."""
    output = hmr2_output(pose)
    expected, transl = hmr2_pixels(posed(body, pose), output)
    nested = {key: ({k: torch.as_tensor(v) for k, v in value.items()}
                    if isinstance(value, dict) else torch.as_tensor(value))
              for key, value in output.items()}
    arrays = read_init({**nested, "img": torch.zeros(N, 3, 8, 8)})
    assert np.abs(fitkit_pixels(body, arrays, SIZES) - expected).max() < TOLERANCE

    same = np.array([SIZES[0]] * N)
    output = hmr2_output(pose, same)
    expected, transl = hmr2_pixels(posed(body, pose), output)
    flat = {**output.pop("pred_smpl_params"), "pred_cam_t_full": transl}
    del output["img_size"], output["pred_cam"]
    arrays = read_init(flat, sizes=same)
    assert np.abs(fitkit_pixels(body, arrays, same) - expected).max() < TOLERANCE
    with pytest.raises(ParamsFileError, match="img_size"):
        read_init(flat)


def test_fit_starts_from_an_hmr2_file(tmp_path: Path, body, pose) -> None:
    """``fitkit.fit(images, init="hmr2_out.npz")``: the fit's camera and bodies are HMR 2.0's
    (no keypoint is confident, so every sample is ``no_data`` and keeps its init)."""
    from PIL import Image

    output = hmr2_output(pose)
    path = tmp_path / "hmr2_out.npz"
    np.savez(path, **{f"pred_smpl_params/{key}": value
                      for key, value in output["pred_smpl_params"].items()},
             **{key: value for key, value in output.items() if key != "pred_smpl_params"})
    images = [tmp_path / f"{row}.png" for row in range(N)]
    for image, (w, h) in zip(images, SIZES, strict=True):
        Image.new("RGB", (int(w), int(h))).save(image)
    result = fitkit.fit(images, init=path, keypoints=np.zeros((N, 25, 3)), iterations=1)
    assert result.flags["no_data"].all()
    camera = Camera(result.params["focal_length"].double(),
                    result.params["camera_center"].double(), torch.as_tensor(SIZES).double())
    expected, _ = hmr2_pixels(posed(body, pose), output)
    assert np.abs(camera.project(result.vertices.double()).numpy() - expected).max() < TOLERANCE


# --------------------------------------------------------------------------- CameraHMR


def test_camerahmr_file_projects_where_camerahmr_does_and_rows_follow_names(
        tmp_path: Path, body, pose) -> None:
    rng = np.random.default_rng(2)
    focal = rng.uniform(600, 1500, N)
    cam_int = np.zeros((N, 3, 3))
    cam_int[:, 0, 0], cam_int[:, 1, 1], cam_int[:, 2, 2] = focal, focal, 1.0
    cam_int[:, :2, 2] = SIZES / 2  # CameraHMR's own: (W / 2, H / 2)
    cam_t = np.stack([*rng.uniform(-0.3, 0.3, (2, N)), rng.uniform(4, 8, N)], axis=1)
    path = tmp_path / "camerahmr.npz"  # CamSMPLify's layout, extras included
    np.savez(path, imgname=np.array(["imgs/a.jpg", "imgs/b.jpg", "imgs/c.jpg"]),
             pose=np.concatenate([pose["global_orient"], pose["body_pose"]], axis=1),
             shape=pose["betas"], cam_int=cam_int, cam_t=cam_t,
             center=SIZES / 2, scale=np.full(N, 300.0), gt_keypoints=np.zeros((N, 25, 3)))
    expected = pinhole(posed(body, pose) + cam_t[:, None], cam_int)  # its K (X + cam_t)
    order = [2, 0, 1]
    arrays = read_init(path, names=["c", "a", "b"])
    assert np.abs(fitkit_pixels(body, arrays, SIZES[order]) - expected[order]).max() < TOLERANCE
    assert set(arrays) == {"global_orient", "body_pose", "betas", "transl", "focal_length",
                           "camera_center"}

    np.savez(path, imgname=np.array(["a.jpg", "a.jpg", "b.jpg"]), pose=np.zeros((N, 72)),
             shape=np.zeros((N, 10)), cam_int=cam_int, cam_t=cam_t)
    with pytest.raises(ParamsFileError, match="imgname.*repeat"):
        read_init(path)


# --------------------------------------------------------------------------- NLF / generic


@pytest.mark.parametrize("form", ["axis_angle", "matrices"])
def test_nlf_output_projects_where_nlf_does(tmp_path: Path, body, pose, form: str) -> None:
    rng = np.random.default_rng(3)
    w, h = SIZES[0]
    K = np.array([[900.0, 0, (w - 1) / 2], [0, 900.0, (h - 1) / 2], [0, 0, 1]])  # one, shared
    trans = np.stack([*rng.uniform(-0.3, 0.3, (2, N)), rng.uniform(3, 6, N)], axis=1)
    full = np.concatenate([pose["global_orient"], pose["body_pose"]], axis=1)
    pose_value = full if form == "axis_angle" else matrices(full, 24)
    path = tmp_path / "nlf.npz"
    np.savez(path, pose=pose_value, betas=pose["betas"], trans=trans, K=K)
    sizes = np.array([SIZES[0]] * N)
    expected = pinhole(posed(body, pose) + trans[:, None], np.broadcast_to(K, (N, 3, 3)))
    arrays = read_init(path, sizes=sizes)
    assert np.abs(fitkit_pixels(body, arrays, sizes) - expected).max() < TOLERANCE
    assert np.allclose(arrays["camera_center"], [(w - 1) / 2, (h - 1) / 2])


def test_generic_without_intrinsics_leaves_the_camera_to_the_fit(body, pose) -> None:
    full = np.concatenate([pose["global_orient"], pose["body_pose"]], axis=1)
    arrays = read_init({"pose": full.reshape(N, 24, 3), "betas": pose["betas"],
                        "transl": np.ones((N, 3)), "image_names": ["x", "y", "z"]},
                       names=["z", "y", "x"])
    assert set(arrays) == {"global_orient", "body_pose", "betas", "transl"}
    assert np.allclose(arrays["body_pose"], pose["body_pose"][::-1], atol=1e-6)


# --------------------------------------------------------------------------- bad files


def test_a_file_of_no_known_layout_names_the_layouts_and_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "other.npz"
    np.savez(path, poses=np.zeros((2, 72)), shapes=np.zeros((2, 10)))
    with pytest.raises(ParamsFileError) as error:
        read_init(path)
    message = str(error.value)
    for name in (str(path), "HMR 2.0", "CameraHMR", "NLF", "image_names", "pred_cam", "cam_int",
                 "found keys poses, shapes"):
        assert name in message
    with pytest.raises(FitInputError, match="unknown key 'poses'"):
        read_init({"poses": np.zeros((2, 72))})


def test_malformed_tool_outputs_name_the_key(tmp_path: Path, pose) -> None:
    output = hmr2_output(pose)
    smpl = output.pop("pred_smpl_params")
    del output["box_size"]
    with pytest.raises(ParamsFileError, match="box_size.*missing.*HMR 2.0"):
        read_init({**smpl, **output})
    skewed = matrices(pose["body_pose"], 23)
    skewed[1, 4] *= 2.0
    with pytest.raises(ParamsFileError, match="body_pose.*row 1, joint 4 is not a rotation"):
        read_init({**smpl, **output, "body_pose": skewed, "box_size": np.ones(N)})
    with pytest.raises(ParamsFileError, match="betas.*expected shape \\(N, 10\\)"):
        read_init({"pose": np.zeros((N, 72)), "betas": np.zeros((N, 16)), "trans": np.ones((N, 3))})
    with pytest.raises(ParamsFileError, match="trans.*2 rows, but pose has 3"):
        read_init({"pose": np.zeros((N, 72)), "betas": np.zeros((N, 10)), "trans": np.ones((2, 3))})
    with pytest.raises(ParamsFileError, match="K.*not a pinhole intrinsic matrix"):
        read_init({"pose": np.zeros((N, 72)), "betas": np.zeros((N, 10)),
                   "trans": np.ones((N, 3)), "K": np.ones((3, 3))})
