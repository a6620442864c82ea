"""Cameras with extrinsics, the one default camera and moving bodies into views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from fitkit.geometry import Camera, crop_camera, default_intrinsics, points_to_views


def random_cameras(batch: int = 3, seed: int = 0) -> tuple[Camera, torch.Tensor, torch.Tensor]:
    """B cameras of 640 x 480 images with random rotations and translations (float64)."""
    rotations = torch.as_tensor(Rotation.random(batch, random_state=seed).as_matrix())
    translations = torch.as_tensor(np.random.default_rng(seed).normal(size=(batch, 3)))
    translations[:, 2] += 6.0
    plain = Camera.from_image_size(640, 480, batch, dtype=torch.float64)
    return Camera(plain.focal_length, plain.principal_point, plain.image_size, rotations,
                  translations), rotations, translations


def world_points(batch: int = 3, count: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(seed).normal(size=(batch, count, 3)) * 0.5)


def test_projecting_world_points_applies_r_then_t():
    camera, rotations, translations = random_cameras()
    points = world_points()
    by_hand = torch.einsum("bij,bnj->bni", rotations, points) + translations[:, None]
    torch.testing.assert_close(camera.to_camera(points), by_hand)
    plain = Camera(camera.focal_length, camera.principal_point, camera.image_size)
    torch.testing.assert_close(camera.project_world(points), plain.project(by_hand))
    # project keeps taking camera-frame points: the extrinsics are not applied twice
    torch.testing.assert_close(camera.project(by_hand), plain.project(by_hand))
    assert camera.has_extrinsics and not plain.has_extrinsics


def test_rotation_or_translation_alone():
    camera, rotations, translations = random_cameras()
    points = world_points()
    only_t = Camera(camera.focal_length, camera.principal_point, camera.image_size,
                    t=translations)
    only_r = Camera(camera.focal_length, camera.principal_point, camera.image_size, R=rotations)
    torch.testing.assert_close(only_t.to_camera(points), points + translations[:, None])
    torch.testing.assert_close(only_r.to_camera(points), points @ rotations.transpose(1, 2))
    assert only_t.has_extrinsics and only_r.has_extrinsics


def test_identity_extrinsics_give_the_results_of_none():
    plain = Camera.from_image_size(320, 240, 2, dtype=torch.float64)
    identity = Camera(plain.focal_length, plain.principal_point, plain.image_size,
                      torch.eye(3, dtype=torch.float64).expand(2, 3, 3), torch.zeros(2, 3).double())
    points = world_points(2) + torch.tensor([0.0, 0.0, 4.0], dtype=torch.float64)
    assert torch.equal(identity.project_world(points), plain.project(points))
    assert plain.to_camera(points) is points  # no extrinsics: nothing computed
    assert torch.equal(plain.project_world(points), plain.project(points))


def test_indexing_moving_expanding_and_cropping_keep_the_extrinsics():
    camera, rotations, translations = random_cameras()
    points = world_points()
    second = camera[1]
    assert torch.equal(second.R, rotations[1:2]) and torch.equal(second.t, translations[1:2])
    torch.testing.assert_close(second.project_world(points[1:2]),
                               camera.project_world(points)[1:2])
    picked = camera[torch.tensor([2, 0])]
    assert torch.equal(picked.R, rotations[[2, 0]]) and torch.equal(picked.t, translations[[2, 0]])
    moved = camera.to(dtype=torch.float32)
    assert moved.R.dtype == torch.float32 and moved.t.dtype == torch.float32
    many = second.expand(4)
    assert many.batch_size == 4 and torch.equal(many.R[3], rotations[1])
    assert torch.equal(many.t[0], translations[1])
    with pytest.raises(ValueError, match="3 cameras for a batch of 4"):
        camera.expand(4)
    cropped = crop_camera(camera, torch.full((3, 2), 100.0, dtype=torch.float64),
                          torch.full((3,), 50.0, dtype=torch.float64), 64)
    assert torch.equal(cropped.R, rotations) and torch.equal(cropped.t, translations)


@pytest.mark.parametrize(("field", "value"), [
    ("R", torch.zeros(2, 3, 3)),
    ("R", torch.zeros(3, 3)),
    ("R", torch.zeros(3, 4, 4)),
    ("t", torch.zeros(3, 2)),
    ("t", torch.zeros(2, 3)),
    ("principal_point", torch.zeros(3, 3)),
])
def test_shape_errors_name_the_field(field, value):
    fields = {"focal_length": torch.ones(3, 2), "principal_point": torch.ones(3, 2),
              "image_size": torch.ones(3, 2), field: value}
    with pytest.raises(ValueError, match=f"Camera.{field} "):
        Camera(**fields)


def test_points_to_views_moves_each_body_into_its_views():
    camera, rotations, translations = random_cameras(batch=4)
    bodies = world_points(batch=2, count=5)
    group = torch.tensor([0, 0, 1, 1])
    views = points_to_views(bodies, camera, group)
    assert views.shape == (4, 5, 3)
    for view, body in enumerate(group.tolist()):
        expected = bodies[body] @ rotations[view].T + translations[view]
        torch.testing.assert_close(views[view], expected)
    with pytest.raises(ValueError, match=r"group must have shape \(4,\)"):
        points_to_views(bodies, camera, group[:3])


def test_the_default_camera_from_tensors_arrays_and_numpy():
    sizes = np.array([[640, 480], [100, 300]])
    camera = Camera.default(sizes, dtype=torch.float64)
    focal = np.sqrt([640.0**2 + 480.0**2, 100.0**2 + 300.0**2])
    np.testing.assert_allclose(camera.focal_length.numpy(), np.stack([focal, focal], -1))
    assert camera.principal_point.tolist() == [[319.5, 239.5], [49.5, 149.5]]
    assert camera.image_size.tolist() == [[640.0, 480.0], [100.0, 300.0]]
    assert not camera.has_extrinsics
    same = Camera.default(torch.as_tensor(sizes), dtype=torch.float64)
    assert torch.equal(same.focal_length, camera.focal_length)
    numpy_focal, numpy_center = default_intrinsics(sizes)
    np.testing.assert_allclose(numpy_focal, camera.focal_length.numpy(), rtol=1e-15)
    np.testing.assert_array_equal(numpy_center, camera.principal_point.numpy())
    given = Camera.default(sizes, focal_length=500.0)
    assert given.focal_length.tolist() == [[500.0, 500.0]] * 2
    assert given.focal_length.dtype == torch.get_default_dtype()
    # from_image_size is the default camera of one size, repeated
    repeated = Camera.from_image_size(100, 300, 2, dtype=torch.float64)
    assert torch.equal(repeated.focal_length, camera.focal_length[1:].expand(2, 2))
    with pytest.raises(ValueError, match=r"image_size must have shape \(B, 2\)"):
        Camera.default(np.array([640, 480]))
    with pytest.raises(ValueError, match=r"image_size must have shape \(N, 2\)"):
        default_intrinsics(np.array([640, 480, 1]))
