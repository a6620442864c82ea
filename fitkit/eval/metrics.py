"""Accuracy metrics for 3D bodies (millimetres) and 2D correspondences (pixels).

3D inputs are in meters, ``(B, N, 3)`` predicted and ground-truth points in corresponding order;
every metric returns one value per sample, ``(B,)``, in millimetres. Three alignments:

- plain (MPJPE, PVE): translation removed by a *root*. The ``root`` argument is
  an ``int`` (index of the root point in both sets; joints default to 0, the pelvis in SMPL
  order), ``"mean"`` (the centroids; the default for vertices, which have no root of their own),
  a pair ``(pred_root, gt_root)`` of ``(B, 3)`` points (e.g. the pelvis joints, to align
  vertices like their joints, as :func:`body_metrics` does), or ``None`` (absolute positions in
  the camera frame);
- N- (N-MPJPE, N-PVE; Rhodin et al. 2018, the variant of seed 003): after the root alignment,
  the prediction is scaled about the root by the least-squares factor
  ``s = sum <p, g> / sum |p|^2`` (no rotation);
- PA- (PA-MPJPE, PA-PVE): the prediction is aligned by the least-squares similarity transform
  (scale, rotation, translation; Procrustes), which makes the root irrelevant.

An optional ``mask`` ``(B, N)`` (boolean or non-negative weights) selects the points that are
averaged and that the alignments see. A sample whose mask is all zero gets NaN.

No metric reports a perfect 0 for inputs it cannot measure: a sample whose ground-truth points
(those in the mask) all coincide, within :data:`DEGENERATE_SPREAD` (a single point, or the joints
of an all-zero joint regressor), gets NaN from every 3D metric, since any prediction would
otherwise score 0 after alignment; so does a PA- or N- metric of a prediction collapsed to one
point (no scale to fit). Points of different shapes, or a mask with negative or non-finite
weights, raise ``ValueError``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from fitkit.geometry.procrustes import procrustes_align

Root = int | Literal["mean"] | tuple[Tensor, Tensor] | None

METERS_TO_MM = 1000.0

DEGENERATE_SPREAD = 1e-6
"""Meters: ground-truth points that all lie within this distance of their centroid are
degenerate (module docstring)."""


def mpjpe(pred: Tensor, gt: Tensor, root: Root = 0, mask: Tensor | None = None) -> Tensor:
    """Mean per-joint position error after root alignment.

    Args:
        pred, gt: ``(B, J, 3)`` joints in meters.
        root: root alignment (see the module docstring); default joint 0, the pelvis.
        mask: ``(B, J)`` joints to evaluate, or weights; all if None.
    Returns:
        ``(B,)`` millimetres.
    Raises:
        ValueError: shapes that disagree, a bad mask.
    """
    _check_points(pred, gt, mask, 3)
    aligned, target = _root_align(pred, gt, root, mask)
    return _unless_degenerate(METERS_TO_MM * _mean_distance(aligned - target, mask), gt, mask)


def n_mpjpe(pred: Tensor, gt: Tensor, root: Root = 0, mask: Tensor | None = None) -> Tensor:
    """Scale-normalised MPJPE: root alignment, then the least-squares scale about the root.

    Args:
        pred, gt: ``(B, J, 3)`` joints in meters.
        root: root alignment (see the module docstring); default joint 0, the pelvis.
        mask: ``(B, J)`` joints to evaluate, or weights; all if None.
    Returns:
        ``(B,)`` millimetres.
    """
    return _scaled_error(pred, gt, root, mask)


def pa_mpjpe(pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> Tensor:
    """MPJPE after Procrustes alignment (similarity transform) of the prediction.

    Args:
        pred, gt: ``(B, J, 3)`` joints in meters.
        mask: ``(B, J)`` joints to align and evaluate, or weights; all if None.
    Returns:
        ``(B,)`` millimetres.
    """
    return _procrustes_error(pred, gt, mask)


def pve(pred: Tensor, gt: Tensor, root: Root = "mean", mask: Tensor | None = None) -> Tensor:
    """Mean per-vertex position error after root alignment.

    Args:
        pred, gt: ``(B, V, 3)`` vertices in meters.
        root: root alignment (see the module docstring); default the centroids. Pass the pelvis
            joints ``(pred_joints[:, 0], gt_joints[:, 0])`` to align like MPJPE.
        mask: ``(B, V)`` vertices to evaluate, or weights; all if None.
    Returns:
        ``(B,)`` millimetres.
    """
    return mpjpe(pred, gt, root, mask)


def n_pve(pred: Tensor, gt: Tensor, root: Root = "mean", mask: Tensor | None = None) -> Tensor:
    """Scale-normalised PVE: root alignment, then the least-squares scale about the root.

    Args:
        pred, gt: ``(B, V, 3)`` vertices in meters.
        root: root alignment (see the module docstring); default the centroids.
        mask: ``(B, V)`` vertices to evaluate, or weights; all if None.
    Returns:
        ``(B,)`` millimetres.
    """
    return _scaled_error(pred, gt, root, mask)


def pa_pve(pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> Tensor:
    """PVE after Procrustes alignment (similarity transform) of the predicted vertices.

    Args:
        pred, gt: ``(B, V, 3)`` vertices in meters.
        mask: ``(B, V)`` vertices to align and evaluate, or weights; all if None.
    Returns:
        ``(B,)`` millimetres.
    """
    return _procrustes_error(pred, gt, mask)


def body_metrics(
    pred_joints: Tensor,
    gt_joints: Tensor,
    pred_vertices: Tensor | None = None,
    gt_vertices: Tensor | None = None,
    root: Root = 0,
    joint_mask: Tensor | None = None,
) -> dict[str, Tensor]:
    """All six body metrics, vertices aligned by the same root as the joints.

    Args:
        pred_joints, gt_joints: ``(B, J, 3)`` joints in meters.
        pred_vertices, gt_vertices: ``(B, V, 3)`` vertices in meters, or None to skip the PVEs.
        root: the joints' root alignment (see the module docstring); with a joint index, the
            vertices are aligned by that joint of each set.
        joint_mask: ``(B, J)`` joints to evaluate, or weights; all if None.
    Returns:
        ``{"mpjpe", "pa_mpjpe", "n_mpjpe"}`` and, with vertices, ``{"pve", "pa_pve", "n_pve"}``,
        each ``(B,)`` millimetres.
    """
    metrics = {
        "mpjpe": mpjpe(pred_joints, gt_joints, root, joint_mask),
        "pa_mpjpe": pa_mpjpe(pred_joints, gt_joints, joint_mask),
        "n_mpjpe": n_mpjpe(pred_joints, gt_joints, root, joint_mask),
    }
    if pred_vertices is not None and gt_vertices is not None:
        vertex_root = (pred_joints[:, root], gt_joints[:, root]) if isinstance(root, int) else root
        metrics["pve"] = pve(pred_vertices, gt_vertices, vertex_root)
        metrics["pa_pve"] = pa_pve(pred_vertices, gt_vertices)
        metrics["n_pve"] = n_pve(pred_vertices, gt_vertices, vertex_root)
    return metrics


def keypoint_error_2d(
    pred: Tensor, gt: Tensor, confidence: Tensor | None = None, min_confidence: float = 0.0
) -> Tensor:
    """Mean 2D keypoint distance over the keypoints whose confidence exceeds ``min_confidence``.

    Args:
        pred: ``(B, K, 2)`` predicted keypoints in pixels.
        gt: ``(B, K, 2)`` target keypoints (e.g. OpenPose) in pixels.
        confidence: ``(B, K)`` target confidences; all keypoints count if None.
        min_confidence: keypoints with ``confidence <= min_confidence`` are ignored (OpenPose
            writes 0 for undetected ones).
    Returns:
        ``(B,)`` pixels.
    """
    mask = None if confidence is None else confidence > min_confidence
    _check_points(pred, gt, mask, 2)
    return _mean_distance(pred - gt, mask)


def end_point_error(pred: Tensor, gt: Tensor, mask: Tensor | None = None) -> Tensor:
    """End-point error (EPE) of 2D displacement fields: the mean length of ``pred - gt``.

    Args:
        pred: ``(B, ..., 2)`` predicted displacements, channels last (a map ``(B, H, W, 2)`` or
            per-vertex ``(B, V, 2)``; move a ``(B, 2, H, W)`` map's channels with ``movedim``).
        gt: ``(B, ..., 2)`` target displacements.
        mask: ``(B, ...)`` where the target is defined (e.g. the person's pixels), or weights;
            everywhere if None.
    Returns:
        ``(B,)`` in the displacements' unit (pixels).
    Raises:
        ValueError: shapes that disagree, a bad mask.
    """
    _check_points(pred, gt, mask, 2)
    return _mean_distance(pred - gt, mask)


def _check_points(pred: Tensor, gt: Tensor, mask: Tensor | None, dims: int) -> None:
    """Raise ``ValueError`` unless ``pred`` and ``gt`` are ``(B, ..., dims)`` of one shape and
    ``mask`` is ``None`` or ``(B, ...)`` with finite weights ``>= 0``."""
    if pred.shape != gt.shape or pred.ndim < 3 or pred.shape[-1] != dims:
        raise ValueError(f"pred and gt must both have shape (B, N, {dims}), got "
                         f"{tuple(pred.shape)} and {tuple(gt.shape)}")
    if mask is None:
        return
    if mask.shape != pred.shape[:-1]:
        raise ValueError(f"mask must have shape {tuple(pred.shape[:-1])}, got "
                         f"{tuple(mask.shape)}")
    if mask.dtype != torch.bool and not (mask.isfinite() & (mask >= 0)).all():
        raise ValueError("mask weights must be finite and >= 0")


def _unless_degenerate(error: Tensor, gt: Tensor, mask: Tensor | None) -> Tensor:
    """``error`` ``(B,)``, NaN for samples whose ground-truth points ``(B, N, 3)`` (those in
    the mask) all lie within :data:`DEGENERATE_SPREAD` of their centroid."""
    spread = (gt - _centroid(gt, mask)).norm(dim=-1)
    if mask is not None:
        spread = spread.masked_fill(~(mask > 0), 0.0)
    degenerate = spread.amax(dim=1) <= DEGENERATE_SPREAD
    return error.masked_fill(degenerate, float("nan"))


def _mean_distance(difference: Tensor, mask: Tensor | None) -> Tensor:
    """Per-sample (masked) mean Euclidean norm of ``(B, ..., D)`` differences -> ``(B,)``."""
    distance = difference.norm(dim=-1).flatten(1)
    if mask is None:
        return distance.mean(dim=1)
    weights = mask.to(distance.dtype).flatten(1)
    return (distance * weights).sum(dim=1) / weights.sum(dim=1)


def _root_align(pred: Tensor, gt: Tensor, root: Root, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Subtract each set's root point (see the module docstring) from ``(B, N, 3)`` points."""
    if root is None:
        return pred, gt
    if isinstance(root, int):
        return pred - pred[:, root : root + 1], gt - gt[:, root : root + 1]
    if isinstance(root, str):
        if root != "mean":
            raise ValueError(f"root must be an index, 'mean', a pair or None, not {root!r}")
        return pred - _centroid(pred, mask), gt - _centroid(gt, mask)
    pred_root, gt_root = root
    return pred - pred_root[:, None], gt - gt_root[:, None]


def _centroid(points: Tensor, mask: Tensor | None) -> Tensor:
    """(Weighted) centroid ``(B, 1, 3)`` of ``(B, N, 3)`` points."""
    if mask is None:
        return points.mean(dim=1, keepdim=True)
    weights = mask.to(points.dtype)[..., None]
    return (points * weights).sum(dim=1, keepdim=True) / weights.sum(dim=1, keepdim=True)


def _scaled_error(pred: Tensor, gt: Tensor, root: Root, mask: Tensor | None) -> Tensor:
    """Root-aligned error after the least-squares scale of ``pred`` about the root, mm ``(B,)``."""
    _check_points(pred, gt, mask, 3)
    aligned, target = _root_align(pred, gt, root, mask)
    weights = 1.0 if mask is None else mask.to(pred.dtype)[..., None]
    scale = ((weights * aligned * target).sum(dim=(1, 2))
             / (weights * aligned * aligned).sum(dim=(1, 2)))
    error = METERS_TO_MM * _mean_distance(scale[:, None, None] * aligned - target, mask)
    return _unless_degenerate(error, gt, mask)


def _procrustes_error(pred: Tensor, gt: Tensor, mask: Tensor | None) -> Tensor:
    """Error after the similarity alignment of ``pred`` onto ``gt``, mm ``(B,)``."""
    _check_points(pred, gt, mask, 3)
    aligned = procrustes_align(pred, gt, weights=mask).aligned
    return _unless_degenerate(METERS_TO_MM * _mean_distance(aligned - gt, mask), gt, mask)
