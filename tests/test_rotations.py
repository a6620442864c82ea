"""fitkit's own rotation code against an independent reference (scipy's ``Rotation``, float64,
quaternions scalar-last) and analytic properties: edge angles near 0 and at pi, round trips,
gradients (finite at zero angle, ``gradcheck`` in both AD modes), the nearest-rotation projection
behind rotation averaging and Procrustes, batch dims, dtype and device."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from fitkit.geometry.procrustes import procrustes_align
from fitkit.geometry.rotations import (
    SMALL_ANGLE_SQUARED,
    average_rotations,
    axis_angle_to_matrix,
    axis_angle_to_quaternion,
    compose_axis_angle,
    matrix_to_axis_angle,
    matrix_to_rot6d,
    nearest_rotation,
    quaternion_conjugate,
    quaternion_product,
    quaternion_to_axis_angle,
    rot6d_to_matrix,
)

F64 = torch.float64
EXACT = {"atol": 1e-12, "rtol": 0.0}
DEVICES = ["cpu", "meta"] + (["cuda"] if torch.cuda.is_available() else [])


def random_rotations(count: int, seed: int) -> Rotation:
    return Rotation.random(count, random_state=seed)


def edge_rotvecs(seed: int = 0) -> np.ndarray:
    """Random rotation vectors, then angles 0, near 0 (around the series threshold too) and near
    (not at) pi about random axes."""
    rng = np.random.default_rng(seed)
    axes = rng.normal(size=(9, 3))
    axes /= np.linalg.norm(axes, axis=-1, keepdims=True)
    threshold = math.sqrt(SMALL_ANGLE_SQUARED)
    angles = np.array([0.0, 1e-9, 1e-6, 1e-4, 0.99 * threshold, 1.01 * threshold, 1e-2,
                       math.pi - 1e-6, math.pi - 1e-3])
    return np.concatenate([random_rotations(20, seed).as_rotvec(), axes * angles[:, None]])


def half_turns() -> np.ndarray:
    """Rotation vectors of angle exactly pi about several axes (the axis sign is ambiguous)."""
    axes = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, -2, 3], [-1, -1, -1]])
    return math.pi * axes / np.linalg.norm(axes, axis=-1, keepdims=True)


def t(values: np.ndarray, dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values), dtype=dtype)


# --- conversions against scipy --------------------------------------------------------------------


def test_axis_angle_to_matrix_matches_scipy_at_all_angles():
    rotvec = np.concatenate([edge_rotvecs(), half_turns()])
    expected = Rotation.from_rotvec(rotvec).as_matrix()
    torch.testing.assert_close(axis_angle_to_matrix(t(rotvec)), t(expected), **EXACT)
    assert torch.equal(axis_angle_to_matrix(torch.zeros(3, dtype=F64)), torch.eye(3, dtype=F64))


def test_matrix_to_axis_angle_matches_scipy_near_zero_and_near_pi():
    rotvec = edge_rotvecs(1)
    matrices = Rotation.from_rotvec(rotvec).as_matrix()
    result = matrix_to_axis_angle(t(matrices))
    torch.testing.assert_close(result, t(Rotation.from_matrix(matrices).as_rotvec()), **EXACT)
    torch.testing.assert_close(result, t(rotvec), atol=1e-9, rtol=0.0)  # angles below pi


def test_matrix_to_axis_angle_at_exactly_pi_gives_one_of_the_two_vectors():
    rotvec = half_turns()
    result = matrix_to_axis_angle(t(Rotation.from_rotvec(rotvec).as_matrix()))
    torch.testing.assert_close(result.norm(dim=-1), torch.full((6,), math.pi, dtype=F64), **EXACT)
    sign = torch.where((result * t(rotvec)).sum(dim=-1) < 0, -1.0, 1.0).to(F64)
    torch.testing.assert_close(result, sign[:, None] * t(rotvec), **EXACT)


def test_tiny_angles_are_relatively_accurate():
    """Near 0 the entries that carry the rotation are of the size of the angle: they must be
    accurate relative to it, on both sides of the series threshold (angles below 2e-4)."""
    axis = np.array([0.48, -0.6, 0.64])
    rotvec = axis * np.array([1e-9, 1e-6, 1e-5, 0.99e-4, 1.01e-4, 1.5e-4, 1.99e-4, 2.01e-4,
                              1e-3])[:, None]
    reference = Rotation.from_rotvec(rotvec)
    quaternion = axis_angle_to_quaternion(t(rotvec))
    torch.testing.assert_close(quaternion[:, :3], t(reference.as_quat()[:, :3]), atol=0.0,
                               rtol=1e-14)
    off_diagonal = ~torch.eye(3, dtype=torch.bool)
    torch.testing.assert_close(axis_angle_to_matrix(t(rotvec))[:, off_diagonal],
                               t(reference.as_matrix()[:, off_diagonal.numpy()]), atol=0.0,
                               rtol=1e-13)
    torch.testing.assert_close(quaternion_to_axis_angle(t(reference.as_quat())), t(rotvec),
                               atol=0.0, rtol=1e-14)
    torch.testing.assert_close(matrix_to_axis_angle(t(reference.as_matrix())), t(rotvec),
                               atol=0.0, rtol=1e-11)


def test_shortest_arc_angles_are_in_zero_to_pi():
    # Rotation vectors of angle up to 3 pi map to their shortest-arc equivalents.
    rng = np.random.default_rng(2)
    rotvec = rng.normal(size=(200, 3))
    rotvec *= rng.uniform(0.0, 3 * math.pi, size=(200, 1)) / np.linalg.norm(rotvec, axis=-1,
                                                                             keepdims=True)
    back = matrix_to_axis_angle(axis_angle_to_matrix(t(rotvec)))
    assert back.norm(dim=-1).max() <= math.pi + 1e-12
    torch.testing.assert_close(back, t(Rotation.from_rotvec(rotvec).as_rotvec()), atol=1e-10,
                               rtol=0.0)


def test_quaternions_match_scipy_scalar_last():
    rotvec = np.concatenate([edge_rotvecs(3), half_turns()])
    quaternion = axis_angle_to_quaternion(t(rotvec))
    torch.testing.assert_close(quaternion, t(Rotation.from_rotvec(rotvec).as_quat()), **EXACT)
    # Any quaternion (either sign, near identity too) back to the shortest-arc rotation vector.
    rng = np.random.default_rng(4)
    quats = rng.normal(size=(50, 4))
    quats[:25, 3] = -np.abs(quats[:25, 3])  # w < 0: the long way round unless negated
    quats[-3:] = [[1e-9, -2e-9, 0.0, -1.0], [0.0, 0.0, 0.0, 1.0], [3e-5, 0.0, 0.0, 1.0]]
    quats /= np.linalg.norm(quats, axis=-1, keepdims=True)
    torch.testing.assert_close(quaternion_to_axis_angle(t(quats)),
                               t(Rotation.from_quat(quats).as_rotvec()), **EXACT)


def test_quaternion_product_and_conjugate_match_scipy_composition():
    first, second = random_rotations(30, 5), random_rotations(30, 6)
    product = quaternion_product(t(first.as_quat()), t(second.as_quat()))
    expected = t((first * second).as_quat())
    same_sign = torch.where((product * expected).sum(dim=-1, keepdim=True) < 0, -1.0, 1.0)
    torch.testing.assert_close(product, same_sign.to(F64) * expected, **EXACT)
    conjugate = quaternion_conjugate(t(first.as_quat()))
    torch.testing.assert_close(conjugate, t(first.inv().as_quat()), **EXACT)
    identity = quaternion_product(t(first.as_quat()), conjugate)
    torch.testing.assert_close(identity, t([0.0, 0.0, 0.0, 1.0]).expand(30, 4), **EXACT)


def test_compose_axis_angle_matches_scipy_and_broadcasts():
    rotations = [random_rotations(8, seed) for seed in (7, 8)]
    shared = Rotation.from_rotvec([0.0, 2.5, 0.0])
    composed = compose_axis_angle([t(rotations[0].as_rotvec()), t(rotations[1].as_rotvec()),
                                   t(shared.as_rotvec())])  # (8, 3), (8, 3), (3,)
    expected = (rotations[0] * rotations[1] * shared).as_rotvec()  # the last applied first
    torch.testing.assert_close(composed, t(expected), **EXACT)
    with pytest.raises(ValueError, match="at least one"):
        compose_axis_angle([])


def test_round_trips_matrix_axis_angle_quaternion():
    matrices = t(random_rotations(40, 9).as_matrix())
    torch.testing.assert_close(axis_angle_to_matrix(matrix_to_axis_angle(matrices)), matrices,
                               **EXACT)
    rotvec = t(edge_rotvecs(10))
    torch.testing.assert_close(quaternion_to_axis_angle(axis_angle_to_quaternion(rotvec)), rotvec,
                               **EXACT)


# --- 6D -------------------------------------------------------------------------------------------


def test_gram_schmidt_gives_rotations_and_recovers_a_rotations_own_6d():
    rng = np.random.default_rng(11)
    raw = t(rng.normal(size=(4, 25, 6)))
    rotation = rot6d_to_matrix(raw)
    torch.testing.assert_close(rotation.transpose(-1, -2) @ rotation,
                               torch.eye(3, dtype=F64).expand(4, 25, 3, 3), **EXACT)
    torch.testing.assert_close(torch.linalg.det(rotation), torch.ones(4, 25, dtype=F64), **EXACT)
    columns = raw.unflatten(-1, (3, 2))
    # b1 along a1; b2 in the plane of a1, a2 on a2's side; b3 = b1 x b2.
    torch.testing.assert_close(rotation[..., 0] * columns[..., 0].norm(dim=-1, keepdim=True),
                               columns[..., 0], **EXACT)
    assert ((rotation[..., 1] * columns[..., 1]).sum(dim=-1) > 0).all()
    torch.testing.assert_close((rotation[..., 2] * columns[..., 1]).sum(dim=-1),
                               torch.zeros(4, 25, dtype=F64), **EXACT)
    matrices = t(random_rotations(30, 12).as_matrix())
    torch.testing.assert_close(rot6d_to_matrix(matrix_to_rot6d(matrices)), matrices, **EXACT)


# --- gradients ------------------------------------------------------------------------------------


def test_gradients_at_zero_angle_are_finite_and_exact():
    """At 0, dR/dv_k is the generator [e_k]_x, and log(exp(v)) has the identity Jacobian."""
    zero = torch.zeros(3, dtype=F64)
    jacobian = torch.autograd.functional.jacobian(axis_angle_to_matrix, zero)  # (3, 3, 3)
    generators = torch.zeros(3, 3, 3, dtype=F64)
    for k, (i, j) in enumerate([(2, 1), (0, 2), (1, 0)]):
        generators[i, j, k], generators[j, i, k] = 1.0, -1.0
    torch.testing.assert_close(jacobian, generators, **EXACT)
    eye = torch.eye(3, dtype=F64)
    for angle in (0.0, 1e-9, 1e-6, 1e-4):
        point = angle * t([0.6, 0.0, -0.8])
        for through in (lambda v: matrix_to_axis_angle(axis_angle_to_matrix(v)),
                        lambda v: quaternion_to_axis_angle(axis_angle_to_quaternion(v)),
                        lambda v: compose_axis_angle([v, torch.zeros_like(v)])):
            torch.testing.assert_close(torch.autograd.functional.jacobian(through, point), eye,
                                       atol=1e-9, rtol=0.0)
    rotvec = torch.zeros(5, 3, dtype=torch.float32, requires_grad=True)
    (axis_angle_to_matrix(rotvec) * torch.arange(45.0).view(5, 3, 3)).sum().backward()
    assert torch.isfinite(rotvec.grad).all() and rotvec.grad.abs().sum() > 0


def test_gradcheck_conversions_in_reverse_and_forward_mode():
    threshold = math.sqrt(SMALL_ANGLE_SQUARED)
    rotvec = t(np.concatenate([random_rotations(5, 13).as_rotvec(),
                               [[0.0, 0.0, 0.0], [1e-7, -2e-7, 0.0], [2 * threshold, 0.0, 0.0],
                                [0.0, 0.0, math.pi - 1e-3]]])).requires_grad_(True)
    assert torch.autograd.gradcheck(axis_angle_to_matrix, rotvec, check_forward_ad=True)
    assert torch.autograd.gradcheck(axis_angle_to_quaternion, rotvec, check_forward_ad=True)
    # Away from pi; the input leaves SO(3) under the finite differences, which is fine.
    matrices = t(Rotation.from_rotvec(0.9 * random_rotations(6, 14).as_rotvec()).as_matrix())
    assert torch.autograd.gradcheck(matrix_to_axis_angle, matrices.requires_grad_(True),
                                    check_forward_ad=True)
    raw = t(np.random.default_rng(15).normal(size=(6, 6))).requires_grad_(True)
    assert torch.autograd.gradcheck(rot6d_to_matrix, raw, check_forward_ad=True)


def test_nearest_rotation_derivative_including_repeated_singular_values():
    rng = np.random.default_rng(16)
    general = t(rng.normal(size=(4, 3, 3))).requires_grad_(True)
    assert torch.autograd.gradcheck(nearest_rotation, general, check_forward_ad=True)
    # The mean of identical rotations is a rotation: all singular values 1, where the plain
    # SVD derivative is NaN. The nearest rotation's derivative is still defined and correct.
    same = t(random_rotations(1, 17).as_matrix()).expand(3, 3, 3).clone().requires_grad_(True)
    assert torch.autograd.gradcheck(average_rotations, same, check_forward_ad=True)
    forward = torch.func.jacfwd(nearest_rotation)(same.detach()[0])
    reverse = torch.func.jacrev(nearest_rotation)(same.detach()[0])
    torch.testing.assert_close(forward, reverse, **EXACT)
    assert torch.isfinite(forward).all()


# --- averaging ------------------------------------------------------------------------------------


def test_average_fixes_the_reflection_of_the_plain_svd_solution():
    """Half-turns about x, y, z weighted (0.25, 0.35, 0.4), turned by a random rotation Q:
    the weighted mean is Q diag(-0.5, -0.3, -0.2), whose orthogonal polar factor -Q is not a
    rotation; the chordal mean maximises -0.5 S00 - 0.3 S11 - 0.2 S22 over rotations S = Q^T R:
    S = diag(-1, -1, 1)."""
    turn = t(random_rotations(1, 18).as_matrix()[0])
    matrices = turn @ t(np.stack([np.diag([1.0, -1, -1]), np.diag([-1.0, 1, -1]),
                                  np.diag([-1.0, -1, 1])]))
    weights = t([0.25, 0.35, 0.4])
    u, _, vh = torch.linalg.svd(torch.einsum("k,kij->ij", weights, matrices))
    assert torch.linalg.det(u @ vh) < 0
    mean = average_rotations(matrices, weights)
    torch.testing.assert_close(mean, turn @ t(np.diag([-1.0, -1.0, 1.0])), **EXACT)


def test_average_of_identical_rotations_is_that_rotation_batched():
    rotations = t(random_rotations(6, 19).as_matrix()).reshape(2, 3, 1, 3, 3)
    weights = t(np.random.default_rng(26).uniform(0.1, 1.0, size=(2, 3, 4)))
    mean = average_rotations(rotations.expand(2, 3, 4, 3, 3), weights)
    assert mean.shape == (2, 3, 3, 3)
    torch.testing.assert_close(mean, rotations[:, :, 0], **EXACT)


def test_a_non_finite_matrix_spoils_only_its_own_average():
    rotations = t(random_rotations(3, 20).as_matrix())[:, None].expand(3, 2, 3, 3).clone()
    rotations[1, 0, 2, 1] = math.nan
    mean = average_rotations(rotations)
    assert mean[1].isnan().all()
    torch.testing.assert_close(mean[[0, 2]], rotations[[0, 2], 0], **EXACT)


# --- Procrustes -----------------------------------------------------------------------------------


def similarity_problem(seed: int, batch: tuple[int, ...] = (3,), points: int = 12):
    rng = np.random.default_rng(seed)
    count = int(np.prod(batch))
    rotation = random_rotations(count, seed).as_matrix().reshape(*batch, 3, 3)
    translation = rng.normal(size=(*batch, 3))
    scale = rng.uniform(0.3, 3.0, size=batch)
    source = rng.normal(size=(*batch, points, 3))
    target = (scale[..., None, None] * np.einsum("...ij,...nj->...ni", rotation, source)
              + translation[..., None, :])
    return t(source), t(target), t(rotation), t(translation), t(scale)


def test_procrustes_recovers_a_known_similarity_with_and_without_weights():
    source, target, rotation, translation, scale = similarity_problem(21, batch=(2, 3))
    weights = t(np.random.default_rng(27).uniform(0.1, 1.0, size=(2, 3, 12)))
    mask = torch.arange(12) % 3 > 0  # 8 of the 12 points
    for given in (None, weights, mask):
        result = procrustes_align(source, target, weights=given)
        torch.testing.assert_close(result.rotation, rotation, **EXACT)
        torch.testing.assert_close(result.translation, translation, **EXACT)
        torch.testing.assert_close(result.scale, scale, **EXACT)
        torch.testing.assert_close(result.aligned, target, **EXACT)


def test_procrustes_ignores_points_of_weight_zero():
    source, target, rotation, translation, scale = similarity_problem(22)
    weights = torch.ones(3, 12, dtype=F64)
    weights[:, ::3] = 0.0
    spoiled, spoiled_source = target.clone(), source.clone()
    spoiled[:, ::3] = t([1e6, math.nan, -math.inf])  # whatever sits there must not matter
    spoiled_source[:, ::3] = t([math.inf, -1e6, math.nan])
    noise = t(0.05 * np.random.default_rng(28).normal(size=(3, 12, 3)))
    for mask in (weights, weights > 0):
        result = procrustes_align(spoiled_source, spoiled, weights=mask)
        torch.testing.assert_close(result.rotation, rotation, **EXACT)
        torch.testing.assert_close(result.scale, scale, **EXACT)
        torch.testing.assert_close(result.translation, translation, **EXACT)
        kept = weights[0] > 0
        noisy = procrustes_align(source, spoiled + noise, weights=mask)
        subset = procrustes_align(source[:, kept], (target + noise)[:, kept])
        torch.testing.assert_close(noisy.rotation, subset.rotation, **EXACT)
        torch.testing.assert_close(noisy.scale, subset.scale, **EXACT)
        torch.testing.assert_close(noisy.aligned[:, kept], subset.aligned, **EXACT)


def test_procrustes_rigid_keeps_scale_one_and_matches_scipy_kabsch():
    source, target, rotation, translation, _ = similarity_problem(23)
    result = procrustes_align(source, target, scale=False)  # a scaled target, fitted rigidly
    torch.testing.assert_close(result.scale, torch.ones(3, dtype=F64), **EXACT)
    assert not torch.allclose(result.aligned, target, atol=1e-3)
    rigid = source @ rotation.transpose(-1, -2) + translation[:, None]
    exact = procrustes_align(source, rigid, scale=False)
    torch.testing.assert_close(exact.rotation, rotation, **EXACT)
    torch.testing.assert_close(exact.translation, translation, **EXACT)
    # Noisy, weighted: the rotation of the weighted-centred vectors is scipy's align_vectors.
    rng = np.random.default_rng(24)
    weights = rng.uniform(0.1, 1.0, size=12)
    noisy = rigid[0].numpy() + 0.1 * rng.normal(size=(12, 3))
    fitted = procrustes_align(source[:1], t(noisy[None]), weights=t(weights[None]), scale=False)

    def centred(points: np.ndarray) -> np.ndarray:
        return points - weights @ points / weights.sum()

    expected, _ = Rotation.align_vectors(centred(noisy), centred(source[0].numpy()), weights)
    torch.testing.assert_close(fitted.rotation[0], t(expected.as_matrix()), atol=1e-10, rtol=0.0)


def test_procrustes_rotation_is_proper_for_a_mirrored_target():
    source, _, _, _, _ = similarity_problem(25)
    mirrored = source * t([-1.0, 1.0, 1.0])
    result = procrustes_align(source, mirrored)
    torch.testing.assert_close(torch.linalg.det(result.rotation), torch.ones(3, dtype=F64),
                               **EXACT)


# --- shapes, dtypes, devices ----------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batch_dims_dtype_and_device_are_kept(dtype, device):
    rotvec = (0.5 * torch.ones(2, 5, 3, dtype=dtype)).to(device)
    matrices = axis_angle_to_matrix(rotvec)
    outputs = {
        "matrix": (matrices, (2, 5, 3, 3)),
        "axis_angle": (matrix_to_axis_angle(matrices), (2, 5, 3)),
        "rot6d": (rot6d_to_matrix(matrix_to_rot6d(matrices)), (2, 5, 3, 3)),
        "quaternion": (axis_angle_to_quaternion(rotvec), (2, 5, 4)),
        "from_quaternion": (quaternion_to_axis_angle(axis_angle_to_quaternion(rotvec)), (2, 5, 3)),
        "product": (quaternion_product(axis_angle_to_quaternion(rotvec),
                                       quaternion_conjugate(axis_angle_to_quaternion(rotvec))),
                    (2, 5, 4)),
        "compose": (compose_axis_angle([rotvec, rotvec[0]]), (2, 5, 3)),
        "average": (average_rotations(matrices), (2, 3, 3)),
        "procrustes": (procrustes_align(rotvec, rotvec.flip(-1)).aligned, (2, 5, 3)),
    }
    for name, (value, shape) in outputs.items():
        assert value.shape == shape and value.dtype == dtype, name
        assert value.device.type == device, name
    if device != "meta":
        expected = t(Rotation.from_rotvec(rotvec.double().cpu().numpy().reshape(-1, 3))
                     .as_matrix().reshape(2, 5, 3, 3), dtype)
        torch.testing.assert_close(matrices.cpu(), expected)


@pytest.mark.parametrize(("call", "name"), [
    (lambda: axis_angle_to_matrix(torch.zeros(2, 4)), "axis_angle"),
    (lambda: matrix_to_axis_angle(torch.zeros(3, 3, 2)), "matrix"),
    (lambda: rot6d_to_matrix(torch.zeros(3, 2)), "rot6d"),
    (lambda: quaternion_to_axis_angle(torch.zeros(3)), "quaternion"),
    (lambda: average_rotations(torch.zeros(3, 3)), "matrices"),
    (lambda: procrustes_align(torch.zeros(4, 3), torch.zeros(5, 3)), "source and target"),
    (lambda: procrustes_align(torch.zeros(4, 3), torch.zeros(4, 3), torch.ones(5)), "weights"),
])
def test_bad_shapes_are_named(call, name):
    with pytest.raises(ValueError, match=name):
        call()
