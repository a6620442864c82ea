"""Geometry against independent computations: scipy's rotations, explicit formulas, round trips."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from fitkit.geometry import (
    Camera,
    average_rotations,
    axis_angle_to_matrix,
    axis_angle_to_rot6d,
    crop_camera,
    crop_to_pixels,
    default_focal_length,
    full_frame_adjusted_projection,
    full_frame_to_weak_perspective,
    matrix_to_axis_angle,
    matrix_to_rot6d,
    pixels_to_crop,
    procrustes_align,
    rot6d_to_axis_angle,
    rot6d_to_matrix,
    weak_perspective_to_full_frame,
)

DTYPES = [torch.float32, torch.float64]


def tol(dtype: torch.dtype) -> dict:
    return (
        {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-10, "rtol": 1e-10}
    )


def tensor_of(values, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values), dtype=dtype)


def rotvecs_with_edge_cases(rng: np.random.Generator) -> np.ndarray:
    """Random rotation vectors plus angles near 0 and near (not at) pi."""
    axes = rng.normal(size=(6, 3))
    axes /= np.linalg.norm(axes, axis=-1, keepdims=True)
    angles = np.array([1e-9, 1e-4, 0.7, 2.0, math.pi - 1e-3, math.pi - 1e-2])
    return np.concatenate([rng.normal(size=(8, 3)), axes * angles[:, None]])


# --- rotations -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_axis_angle_to_matrix_matches_scipy(dtype):
    rotvec = rotvecs_with_edge_cases(np.random.default_rng(0))
    matrix = axis_angle_to_matrix(tensor_of(rotvec, dtype))
    assert matrix.dtype == dtype and matrix.shape == (14, 3, 3)
    expected = Rotation.from_rotvec(rotvec).as_matrix()
    torch.testing.assert_close(matrix, tensor_of(expected, dtype), **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_matrix_to_axis_angle_matches_scipy(dtype):
    rotvec = rotvecs_with_edge_cases(np.random.default_rng(1))
    matrices = Rotation.from_rotvec(rotvec).as_matrix()
    result = matrix_to_axis_angle(tensor_of(matrices, dtype))
    expected = Rotation.from_matrix(matrices).as_rotvec()  # angles in [0, pi]
    loose = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else tol(dtype)
    torch.testing.assert_close(result, tensor_of(expected, dtype), **loose)


@pytest.mark.parametrize("dtype", DTYPES)
def test_axis_angle_at_pi_round_trips_through_the_matrix(dtype):
    """At exactly pi the axis sign is ambiguous; the rotation itself must survive."""
    rotvec = tensor_of([[math.pi, 0.0, 0.0], [0.0, 0.0, -math.pi], [0.0, math.pi, 0.0]], dtype)
    back = matrix_to_axis_angle(axis_angle_to_matrix(rotvec))
    torch.testing.assert_close(back.norm(dim=-1), rotvec.norm(dim=-1), **tol(dtype))
    torch.testing.assert_close(back.abs(), rotvec.abs(), **tol(dtype))


def test_rot6d_layout_is_the_first_two_columns_row_major():
    """The SPIN/VPoser/ReFit layout, checked against a hand computation on x.view(3, 2)."""
    x = torch.tensor([3.0, 1.0, 0.0, 2.0, 4.0, 1.0], dtype=torch.float64)
    a1 = np.array([3.0, 0.0, 4.0])  # x[0], x[2], x[4]: the first column
    a2 = np.array([1.0, 2.0, 1.0])  # x[1], x[3], x[5]: the second column
    b1 = a1 / 5.0
    b2 = a2 - (b1 @ a2) * b1
    b2 /= np.linalg.norm(b2)
    b3 = np.cross(b1, b2)
    expected = np.stack([b1, b2, b3], axis=-1)  # columns
    torch.testing.assert_close(rot6d_to_matrix(x), torch.from_numpy(expected))

    matrix = torch.arange(9.0).reshape(3, 3)
    assert matrix_to_rot6d(matrix).tolist() == [0.0, 1.0, 3.0, 4.0, 6.0, 7.0]
    assert torch.equal(matrix_to_rot6d(matrix), matrix[:, :2].reshape(6))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rot6d_round_trips(dtype):
    rng = np.random.default_rng(2)
    rotvec = rotvecs_with_edge_cases(rng)
    matrices = tensor_of(Rotation.from_rotvec(rotvec).as_matrix(), dtype)
    torch.testing.assert_close(rot6d_to_matrix(matrix_to_rot6d(matrices)), matrices, **tol(dtype))
    rotvec_t = tensor_of(rotvec, dtype)
    torch.testing.assert_close(
        axis_angle_to_matrix(rot6d_to_axis_angle(axis_angle_to_rot6d(rotvec_t))),
        matrices,
        **tol(dtype),
    )
    # Any non-degenerate 6D vector gives a rotation; scaling a column does not change it.
    raw = tensor_of(rng.normal(size=(2, 5, 6)), dtype)
    rotation = rot6d_to_matrix(raw)
    assert rotation.shape == (2, 5, 3, 3)
    eye = torch.eye(3, dtype=dtype).expand(2, 5, 3, 3)
    torch.testing.assert_close(rotation.transpose(-1, -2) @ rotation, eye, **tol(dtype))
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(2, 5, dtype=dtype))
    scaled = raw * tensor_of([2.0, 0.5] * 3, dtype)
    torch.testing.assert_close(rot6d_to_matrix(scaled), rotation, **tol(dtype))


def test_rotation_conversions_keep_batch_dims_and_gradients():
    rotvec = torch.zeros(2, 4, 3, dtype=torch.float64, requires_grad=True)
    matrix = axis_angle_to_matrix(rotvec)
    assert matrix.shape == (2, 4, 3, 3)
    rot6d = matrix_to_rot6d(matrix)
    assert rot6d.shape == (2, 4, 6)
    (rot6d_to_axis_angle(rot6d) * torch.arange(3.0, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(rotvec.grad).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_average_of_symmetric_scatter_recovers_the_centre(dtype):
    rng = np.random.default_rng(3)
    centre = Rotation.from_rotvec(rng.normal(size=(4, 3)))
    offsets = Rotation.from_rotvec(0.3 * rng.normal(size=(5, 3)))
    # Each offset with its inverse: the chordal mean is exactly the centre.
    scattered = [
        np.concatenate([(c * offsets).as_matrix(), (c * offsets.inv()).as_matrix()]) for c in centre
    ]
    matrices = tensor_of(np.stack(scattered), dtype)  # (4, 10, 3, 3)
    mean = average_rotations(matrices)
    assert mean.shape == (4, 3, 3) and mean.dtype == dtype
    loose = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-9, "rtol": 0.0}
    torch.testing.assert_close(mean, tensor_of(centre.as_matrix(), dtype), **loose)


def test_average_is_the_chordal_optimum_and_respects_weights():
    rng = np.random.default_rng(4)
    matrices = torch.from_numpy(Rotation.from_rotvec(0.8 * rng.normal(size=(6, 3))).as_matrix())
    weights = torch.from_numpy(rng.uniform(0.1, 1.0, size=6))
    mean = average_rotations(matrices, weights)
    objective = torch.einsum("k,kij,ij->", weights, matrices, mean)  # trace(R^T sum w_k R_k)
    for delta in Rotation.from_rotvec(0.05 * rng.normal(size=(20, 3))).as_matrix():
        other = mean @ torch.from_numpy(delta)
        assert torch.einsum("k,kij,ij->", weights, matrices, other) < objective
    # Zero weight removes a rotation; a weight of 1 everywhere else equals the plain mean.
    weights = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(
        average_rotations(matrices, weights), average_rotations(matrices[:5])
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_average_with_reflection_inducing_mean_is_a_rotation(dtype):
    # Half-turns about x, y, z: the weighted mean is diag(-0.6, -0.3, -0.1), whose orthogonal
    # polar factor is -I (det -1). The nearest rotation flips the weakest direction.
    matrices = tensor_of([np.diag([1, -1, -1]), np.diag([-1, 1, -1]), np.diag([-1, -1, 1])], dtype)
    weights = tensor_of([0.2, 0.35, 0.45], dtype)
    mean_matrix = torch.einsum("k,kij->ij", weights, matrices)
    u, _, vh = torch.linalg.svd(mean_matrix)
    assert torch.linalg.det(u @ vh) < 0
    mean = average_rotations(matrices, weights)
    torch.testing.assert_close(mean, tensor_of(np.diag([-1.0, -1.0, 1.0]), dtype), **tol(dtype))
    assert torch.linalg.det(mean) == pytest.approx(1.0)


# --- camera --------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_camera_projects_by_hand_and_unprojects(dtype):
    camera = Camera(
        focal_length=tensor_of([[500.0, 600.0]], dtype),
        principal_point=tensor_of([[320.0, 240.0]], dtype),
        image_size=tensor_of([[640.0, 480.0]], dtype),
    )
    points = tensor_of([[[0.1, -0.2, 2.0], [0.0, 0.0, 5.0]]], dtype)
    pixels = camera.project(points)
    torch.testing.assert_close(pixels, tensor_of([[[345.0, 180.0], [320.0, 240.0]]], dtype))
    torch.testing.assert_close(camera.unproject(pixels, points[..., 2]), points, **tol(dtype))


def test_camera_from_image_size_and_batching():
    camera = Camera.from_image_size(640, 480, batch_size=3, dtype=torch.float64)
    assert camera.batch_size == 3
    torch.testing.assert_close(camera.focal_length, torch.full((3, 2), 800.0, dtype=torch.float64))
    torch.testing.assert_close(camera.principal_point[0], torch.tensor([319.5, 239.5]).double())
    torch.testing.assert_close(camera.image_size[2], torch.tensor([640.0, 480.0]).double())
    assert float(default_focal_length(3.0, 4.0)) == pytest.approx(5.0)
    # A point on the optical axis lands on the centre of the image.
    axis = torch.tensor([[[0.0, 0.0, 3.0]]], dtype=torch.float64).expand(3, 1, 3)
    torch.testing.assert_close(camera.project(axis)[:, 0], camera.principal_point)
    per_sample = Camera.from_image_size(
        100, 100, batch_size=2, focal_length=torch.tensor([1.0, 2.0])
    )
    assert per_sample.focal_length.tolist() == [[1.0, 1.0], [2.0, 2.0]]
    assert camera[1].batch_size == 1 and camera[0:2].batch_size == 2
    assert camera.to(dtype=torch.float32).focal_length.dtype == torch.float32
    with pytest.raises(ValueError, match="batch size"):
        Camera(torch.ones(2, 2), torch.ones(3, 2), torch.ones(2, 2))
    with pytest.raises(ValueError, match="focal_length"):
        Camera(torch.ones(2, 3), torch.ones(2, 2), torch.ones(2, 2))


# --- full-frame cameras --------------------------------------------------------------------------


def make_full_frame_case(dtype: torch.dtype, square_pixels: bool = True):
    """Two cameras on 1000x800 images, crop boxes off-centre, weak-perspective cameras."""
    focal = (
        [[1200.0, 1200.0], [900.0, 900.0]] if square_pixels else [[1200.0, 1100.0], [900.0, 950.0]]
    )
    camera = Camera(
        focal_length=tensor_of(focal, dtype),
        principal_point=tensor_of([[499.5, 399.5], [510.0, 390.0]], dtype),
        image_size=tensor_of([[1000.0, 800.0], [1000.0, 800.0]], dtype),
    )
    box_center = tensor_of([[700.0, 300.0], [250.0, 520.0]], dtype)
    box_size = tensor_of([300.0, 420.0], dtype)
    weak = tensor_of([[0.9, 0.05, -0.1], [1.2, -0.2, 0.3]], dtype)
    return camera, box_center, box_size, weak


@pytest.mark.parametrize("dtype", DTYPES)
def test_weak_perspective_to_full_frame_is_refits_formula(dtype):
    """With the principal point at (w/2, h/2) and fx = fy, the seed's formula holds exactly."""
    camera, box_center, box_size, weak = make_full_frame_case(dtype)
    camera = Camera(camera.focal_length, camera.image_size / 2, camera.image_size)
    transl = weak_perspective_to_full_frame(weak, box_center, box_size, camera)
    s, tx, ty = weak.unbind(-1)
    f, b = camera.focal_length[:, 0], box_size
    (w, h), (cx, cy) = camera.image_size.unbind(-1), box_center.unbind(-1)
    expected = torch.stack(
        [tx + 2 * (cx - w / 2) / (s * b), ty + 2 * (cy - h / 2) / (s * b), 2 * f / (s * b)], dim=-1
    )
    torch.testing.assert_close(transl, expected, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("square_pixels", [True, False])
def test_full_frame_and_weak_perspective_round_trip(dtype, square_pixels):
    camera, box_center, box_size, weak = make_full_frame_case(dtype, square_pixels)
    transl = weak_perspective_to_full_frame(weak, box_center, box_size, camera)
    back = full_frame_to_weak_perspective(transl, box_center, box_size, camera)
    torch.testing.assert_close(back, weak, **tol(dtype))
    transl2 = tensor_of([[0.3, -0.2, 8.0], [-1.0, 0.5, 12.0]], dtype)
    weak2 = full_frame_to_weak_perspective(transl2, box_center, box_size, camera)
    again = weak_perspective_to_full_frame(weak2, box_center, box_size, camera)
    torch.testing.assert_close(again, transl2, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_adjusted_projection_equals_weak_perspective_on_the_fronto_parallel_plane(dtype):
    """Body points with Z = 0 land at s (X + t) in crop coordinates, off-centre crops included."""
    camera, box_center, box_size, weak = make_full_frame_case(dtype)
    transl = weak_perspective_to_full_frame(weak, box_center, box_size, camera)
    body = tensor_of(np.random.default_rng(5).normal(size=(2, 7, 3)) * [0.4, 0.8, 0.0], dtype)
    crop = full_frame_adjusted_projection(body + transl[:, None], box_center, box_size, camera)
    expected = weak[:, None, :1] * (body[..., :2] + weak[:, None, 1:])
    torch.testing.assert_close(crop, expected, **tol(dtype))
    # Off the plane the full-frame model differs from weak perspective (perspective effects).
    body[..., 2] = 0.3
    crop = full_frame_adjusted_projection(body + transl[:, None], box_center, box_size, camera)
    assert (crop - weak[:, None, :1] * (body[..., :2] + weak[:, None, 1:])).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", DTYPES)
def test_adjusted_projection_by_hand_and_with_the_crop_camera(dtype):
    camera = Camera(
        focal_length=tensor_of([[1000.0, 1000.0]], dtype),
        principal_point=tensor_of([[499.5, 399.5]], dtype),
        image_size=tensor_of([[1000.0, 800.0]], dtype),
    )
    box_center, box_size = tensor_of([[600.0, 300.0]], dtype), tensor_of([200.0], dtype)
    point = tensor_of([[[0.2, -0.1, 4.0]]], dtype)
    # u = 1000 * 0.05 + 499.5 = 549.5, v = 1000 * -0.025 + 399.5 = 374.5;
    # crop = 2 (u - c) / b = (-0.505, 0.745); in a 256-pixel crop (crop + 1) * 128 - 0.5.
    crop = full_frame_adjusted_projection(point, box_center, box_size, camera)
    torch.testing.assert_close(crop, tensor_of([[[-0.505, 0.745]]], dtype), **tol(dtype))
    cropped = crop_camera(camera, box_center, box_size, resolution=256)
    torch.testing.assert_close(
        cropped.project(point), tensor_of([[[62.86, 222.86]]], dtype), **tol(dtype)
    )
    assert cropped.image_size.tolist() == [[256.0, 256.0]]


@pytest.mark.parametrize("dtype", DTYPES)
def test_crop_camera_matches_adjusted_projection_and_pixel_centres(dtype):
    camera, box_center, box_size, weak = make_full_frame_case(dtype, square_pixels=False)
    resolution = 64
    points = tensor_of(np.random.default_rng(6).normal(size=(2, 9, 3)) * 0.5 + [0, 0, 6], dtype)
    crop = full_frame_adjusted_projection(points, box_center, box_size, camera)
    cropped = crop_camera(camera, box_center, box_size, resolution)
    torch.testing.assert_close(
        cropped.project(points), (crop + 1) * resolution / 2 - 0.5, **tol(dtype)
    )
    # The centre of the crop's first pixel, in full-image pixels, is crop pixel (0, 0).
    first = box_center - box_size[:, None] / 2 + 0.5 * box_size[:, None] / resolution
    ray = camera.unproject(first[:, None], torch.full((2, 1), 5.0, dtype=dtype))
    torch.testing.assert_close(
        cropped.project(ray), torch.zeros(2, 1, 2, dtype=dtype), **tol(dtype)
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_pixels_and_crop_coordinates(dtype):
    box_center, box_size = tensor_of([[100.0, 50.0]], dtype), tensor_of([40.0], dtype)
    edges = tensor_of([[[80.0, 30.0], [120.0, 70.0], [100.0, 50.0]]], dtype)
    crop = pixels_to_crop(edges, box_center, box_size)
    assert crop.tolist() == [[[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]]]
    pixels = tensor_of(np.random.default_rng(7).uniform(0, 200, size=(1, 5, 2)), dtype)
    back = crop_to_pixels(pixels_to_crop(pixels, box_center, box_size), box_center, box_size)
    torch.testing.assert_close(back, pixels, **tol(dtype))


# --- Procrustes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_procrustes_recovers_a_known_similarity(dtype):
    rng = np.random.default_rng(8)
    rotation = Rotation.from_rotvec(rng.normal(size=(4, 3))).as_matrix()
    scale = np.array([1.7, 0.5, 1.0, 3.0])
    translation = rng.normal(size=(4, 3))
    source = rng.normal(size=(4, 10, 3))
    target = (
        scale[:, None, None] * np.einsum("bij,bnj->bni", rotation, source) + translation[:, None]
    )
    result = procrustes_align(tensor_of(source, dtype), tensor_of(target, dtype))
    loose = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else tol(dtype)
    torch.testing.assert_close(result.rotation, tensor_of(rotation, dtype), **loose)
    torch.testing.assert_close(result.scale, tensor_of(scale, dtype), **loose)
    torch.testing.assert_close(result.translation, tensor_of(translation, dtype), **loose)
    torch.testing.assert_close(result.aligned, tensor_of(target, dtype), **loose)
    other = rng.normal(size=(4, 2, 3))
    expected = (
        scale[:, None, None] * np.einsum("bij,bnj->bni", rotation, other) + translation[:, None]
    )
    torch.testing.assert_close(
        result.apply(tensor_of(other, dtype)), tensor_of(expected, dtype), **loose
    )


def test_procrustes_on_noisy_points_matches_scipy_kabsch_and_umeyama_scale():
    rng = np.random.default_rng(9)
    source = rng.normal(size=(12, 3))
    target = 2.0 * source @ Rotation.from_rotvec([0.3, -1.0, 0.5]).as_matrix().T + 1.0
    target += 0.1 * rng.normal(size=target.shape)
    weights = rng.uniform(0.2, 1.0, size=12)
    result = procrustes_align(
        torch.from_numpy(source[None]),
        torch.from_numpy(target[None]),
        torch.from_numpy(weights[None]),
    )
    w = weights / weights.sum()
    src0, tgt0 = source - w @ source, target - w @ target
    expected_rotation, _ = Rotation.align_vectors(tgt0, src0, weights=weights)
    rotation = expected_rotation.as_matrix()
    expected_scale = np.sum(w[:, None] * tgt0 * (src0 @ rotation.T)) / np.sum(w[:, None] * src0**2)
    torch.testing.assert_close(result.rotation[0], torch.from_numpy(rotation))
    assert float(result.scale[0]) == pytest.approx(expected_scale, rel=1e-9)


def test_procrustes_mask_rigid_mode_and_no_reflections():
    rng = np.random.default_rng(10)
    source = torch.from_numpy(rng.normal(size=(2, 8, 3)))
    rotation = torch.from_numpy(
        Rotation.from_rotvec([[0.0, 0.5, 0.0], [1.0, 0.0, 2.0]]).as_matrix()
    )
    target = source @ rotation.transpose(-1, -2) + 0.3
    corrupted = target.clone()
    corrupted[:, -2:] += 5.0
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[:, -2:] = False
    masked = procrustes_align(source, corrupted, weights=mask, scale=False)
    torch.testing.assert_close(masked.rotation, rotation)
    torch.testing.assert_close(masked.scale, torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(masked.aligned[:, :6], target[:, :6])
    mirrored = source * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    result = procrustes_align(source, mirrored)
    torch.testing.assert_close(
        torch.linalg.det(result.rotation), torch.ones(2, dtype=torch.float64)
    )


def test_procrustes_is_differentiable():
    source = torch.randn(3, 6, 3, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, 6, 3, dtype=torch.float64)
    (procrustes_align(source, target).aligned - target).square().sum().backward()
    assert torch.isfinite(source.grad).all()
