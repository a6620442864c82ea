"""Metrics on hand-made cases whose values are computed by hand."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from fitkit.eval import (
    body_metrics,
    end_point_error,
    keypoint_error_2d,
    mpjpe,
    n_mpjpe,
    n_pve,
    pa_mpjpe,
    pa_pve,
    pve,
)

DTYPES = [torch.float32, torch.float64]
ZERO_MM = 0.01  # float32 rounding of meter-scale coordinates is ~1e-3 mm


def tensor_of(values, dtype: torch.dtype) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values), dtype=dtype)


def skeleton(dtype: torch.dtype) -> torch.Tensor:
    """(2, 5, 3) two small 'skeletons' in meters, root (index 0) away from the origin."""
    rng = np.random.default_rng(0)
    return tensor_of(rng.normal(size=(2, 5, 3)) * 0.3 + [0.2, -0.1, 3.0], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mpjpe_of_a_3_4_5_offset(dtype):
    gt = skeleton(dtype)
    offset = tensor_of([0.003, 0.004, 0.0], dtype)
    # A uniform offset: 5 mm without alignment, nothing after root alignment.
    assert mpjpe(gt + offset, gt, root=None).tolist() == pytest.approx([5.0, 5.0], rel=1e-5)
    assert mpjpe(gt + offset, gt).abs().max() < ZERO_MM
    # One non-root joint off by 3-4-5 cm among 5 joints: 50 mm / 5.
    pred = gt.clone()
    pred[:, 3] += 10 * offset
    result = mpjpe(pred, gt)
    assert result.dtype == dtype and result.shape == (2,)
    assert result.tolist() == pytest.approx([10.0, 10.0], rel=1e-5)
    # Moving the root instead moves every other joint relative to it: 4 * 50 mm / 5.
    pred = gt.clone()
    pred[:, 0] += 10 * offset
    assert mpjpe(pred, gt).tolist() == pytest.approx([40.0, 40.0], rel=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mask_and_explicit_roots(dtype):
    gt = skeleton(dtype)
    pred = gt.clone()
    pred[:, 4] += tensor_of([0.0, 0.0, 1.0], dtype)  # a wild joint, masked out below
    pred[:, 2] += tensor_of([0.03, 0.04, 0.0], dtype)
    mask = torch.tensor([[True, True, True, True, False], [True, True, True, True, True]])
    result = mpjpe(pred, gt, mask=mask)
    assert result[0].item() == pytest.approx(50.0 / 4, rel=1e-5)
    assert result[1].item() == pytest.approx((50.0 + 1000.0) / 5, rel=1e-5)
    # A root given as points: aligning by a point 1 m away from both roots changes nothing here...
    roots = (gt[:, 0] + 1.0, gt[:, 0] + 1.0)
    torch.testing.assert_close(mpjpe(pred, gt, root=roots), mpjpe(pred, gt, root=None))
    # ...and aligning by joint 2 moves the 3-4-5 error onto the other joints.
    assert mpjpe(pred, gt, root=2, mask=mask)[0].item() == pytest.approx(3 * 50.0 / 4, rel=1e-5)
    assert math.isnan(mpjpe(pred, gt, mask=torch.zeros(2, 5, dtype=torch.bool))[0].item())
    with pytest.raises(ValueError, match="root"):
        mpjpe(pred, gt, root="pelvis")


@pytest.mark.parametrize("dtype", DTYPES)
def test_pa_mpjpe_of_a_similar_copy_is_zero(dtype):
    gt = skeleton(dtype)
    rotation = tensor_of(Rotation.from_rotvec([0.4, -1.2, 2.0]).as_matrix(), dtype)
    pred = 1.3 * gt @ rotation.T + tensor_of([0.5, 0.0, -0.2], dtype)
    assert mpjpe(pred, gt).min() > 50.0
    assert pa_mpjpe(pred, gt).abs().max() < ZERO_MM
    # A genuine pose difference survives the alignment.
    pred[:, 1] += tensor_of([0.0, 0.1, 0.0], dtype)
    assert pa_mpjpe(pred, gt).min() > 1.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_n_mpjpe_removes_scale_only(dtype):
    # Root at the origin, two joints: gt (1, 0, 0), (0, 2, 0); pred (2, 0, 0), (0, 1, 0).
    # s = (2 + 2) / (4 + 1) = 0.8, s * pred = (1.6, 0, 0), (0, 0.8, 0): errors 0.6, 1.2, and 0
    # at the root, mean 0.6 m.
    gt = tensor_of([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]], dtype)
    pred = tensor_of([[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], dtype)
    assert n_mpjpe(pred + 5.0, gt - 1.0).item() == pytest.approx(600.0, rel=1e-5)
    # Scaling about the root is undone exactly; plain MPJPE sees it.
    gt = skeleton(dtype)
    scaled = 1.25 * (gt - gt[:, :1]) + gt[:, :1]
    assert mpjpe(scaled, gt).min() > 10.0
    assert n_mpjpe(scaled, gt).abs().max() < ZERO_MM
    # A rotation is not undone: a quarter turn about z has <p, g> = 0, so s = 0.
    gt = tensor_of([[[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], dtype)
    turned = tensor_of([[[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]], dtype)
    assert n_mpjpe(turned, gt).item() == pytest.approx(2000.0 / 3, rel=1e-5)
    assert pa_mpjpe(turned, gt).item() == pytest.approx(0.0, abs=ZERO_MM)


@pytest.mark.parametrize("dtype", DTYPES)
def test_vertex_metrics(dtype):
    rng = np.random.default_rng(1)
    gt = tensor_of(rng.normal(size=(2, 50, 3)) * 0.3 + [0.0, 0.0, 4.0], dtype)
    offset = tensor_of([0.3, -0.4, 1.2], dtype)
    # Translation: removed by the default centroid alignment.
    assert pve(gt + offset, gt).abs().max() < ZERO_MM
    assert pve(gt + offset, gt, root=None).tolist() == pytest.approx([1300.0, 1300.0], rel=1e-5)
    rotation = tensor_of(Rotation.from_rotvec([1.0, 0.5, -0.3]).as_matrix(), dtype)
    similar = 0.8 * gt @ rotation.T + offset
    assert pa_pve(similar, gt).abs().max() < ZERO_MM
    assert pve(similar, gt).min() > 10.0
    centroid = gt.mean(dim=1, keepdim=True)
    assert n_pve(1.1 * (gt - centroid) + centroid + offset, gt).abs().max() < ZERO_MM


@pytest.mark.parametrize("dtype", DTYPES)
def test_body_metrics_align_vertices_by_the_pelvis(dtype):
    joints = skeleton(dtype)
    vertices = tensor_of(np.random.default_rng(2).normal(size=(2, 20, 3)), dtype) + joints[:, :1]
    shift = tensor_of([1.0, 2.0, -0.5], dtype)
    pred_vertices = vertices + shift
    pred_vertices[:, 7] += tensor_of([0.0, 0.03, 0.04], dtype)  # 50 mm on one of 20 vertices
    metrics = body_metrics(joints + shift, joints, pred_vertices, vertices)
    assert sorted(metrics) == ["mpjpe", "n_mpjpe", "n_pve", "pa_mpjpe", "pa_pve", "pve"]
    assert metrics["mpjpe"].abs().max() < ZERO_MM
    assert metrics["pve"].tolist() == pytest.approx([2.5, 2.5], rel=1e-4)
    # Centroid alignment would have spread the one vertex's error over all of them.
    assert not torch.allclose(pve(pred_vertices, vertices), metrics["pve"])
    assert sorted(body_metrics(joints, joints)) == ["mpjpe", "n_mpjpe", "pa_mpjpe"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_keypoint_error_2d_ignores_unconfident_keypoints(dtype):
    gt = tensor_of([[[10.0, 10.0], [50.0, 60.0], [0.0, 0.0]]], dtype)
    pred = gt + tensor_of([[[3.0, 4.0], [-6.0, 8.0], [500.0, 500.0]]], dtype)
    confidence = tensor_of([[0.9, 0.2, 0.0]], dtype)
    assert keypoint_error_2d(pred, gt, confidence).item() == pytest.approx(7.5)
    assert keypoint_error_2d(pred, gt, confidence, min_confidence=0.5).item() == pytest.approx(5.0)
    all_three = (5.0 + 10.0 + 500.0 * math.sqrt(2)) / 3
    assert keypoint_error_2d(pred, gt).item() == pytest.approx(all_three, rel=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_end_point_error_of_displacement_maps(dtype):
    gt = torch.zeros(2, 4, 5, 2, dtype=dtype)
    pred = gt.clone()
    pred[0, 1, 2] = tensor_of([3.0, 4.0], dtype)
    pred[1] = tensor_of([0.6, 0.8], dtype)
    assert end_point_error(pred, gt).tolist() == pytest.approx([5.0 / 20, 1.0], rel=1e-6)
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[:, 1, 1:3] = True
    assert end_point_error(pred, gt, mask).tolist() == pytest.approx([2.5, 1.0], rel=1e-6)
    # Per-vertex displacements (B, V, 2) work the same way.
    assert end_point_error(pred[:, 1], gt[:, 1]).tolist() == pytest.approx([1.0, 1.0], rel=1e-6)
