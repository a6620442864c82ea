"""Geometry: cameras, rotations (through ``roma``), full-frame cameras, Procrustes."""

from fitkit.geometry.camera import Camera, default_focal_length
from fitkit.geometry.fullframe import (
    crop_camera,
    crop_to_pixels,
    full_frame_adjusted_projection,
    full_frame_to_weak_perspective,
    pixels_to_crop,
    weak_perspective_to_full_frame,
)
from fitkit.geometry.procrustes import ProcrustesAlignment, procrustes_align
from fitkit.geometry.rotations import (
    average_rotations,
    axis_angle_to_matrix,
    axis_angle_to_rot6d,
    matrix_to_axis_angle,
    matrix_to_rot6d,
    rot6d_to_axis_angle,
    rot6d_to_matrix,
)

__all__ = [
    "Camera",
    "ProcrustesAlignment",
    "average_rotations",
    "axis_angle_to_matrix",
    "axis_angle_to_rot6d",
    "crop_camera",
    "crop_to_pixels",
    "default_focal_length",
    "full_frame_adjusted_projection",
    "full_frame_to_weak_perspective",
    "matrix_to_axis_angle",
    "matrix_to_rot6d",
    "pixels_to_crop",
    "procrustes_align",
    "rot6d_to_axis_angle",
    "rot6d_to_matrix",
    "weak_perspective_to_full_frame",
]
