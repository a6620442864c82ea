"""Evaluation: body metrics in millimetres (MPJPE, PA-/N-MPJPE, PVE, PA-/N-PVE) and 2D errors in
pixels (keypoints, end-point error of displacement fields)."""

from fitkit.eval.metrics import (
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

__all__ = [
    "body_metrics",
    "end_point_error",
    "keypoint_error_2d",
    "mpjpe",
    "n_mpjpe",
    "n_pve",
    "pa_mpjpe",
    "pa_pve",
    "pve",
]
