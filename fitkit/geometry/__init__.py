"""Geometry: cameras (with extrinsics), rotations, crops, full-frame cameras, Procrustes."""

from fitkit.geometry.camera import (
    Camera,
    default_focal_length,
    default_intrinsics,
    points_to_views,
)
from fitkit.geometry.crop import (
    crop_boxes,
    crop_camera,
    crop_images,
    crop_to_pixels,
    pixels_to_crop,
)
from fitkit.geometry.frames import (
    average_world_params,
    camera_to_world_params,
    mean_rotations,
    world_to_camera_params,
)
from fitkit.geometry.fullframe import (
    full_frame_adjusted_projection,
    full_frame_to_weak_perspective,
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
    "average_world_params",
    "axis_angle_to_matrix",
    "axis_angle_to_rot6d",
    "camera_to_world_params",
    "crop_boxes",
    "crop_camera",
    "crop_images",
    "crop_to_pixels",
    "default_focal_length",
    "default_intrinsics",
    "full_frame_adjusted_projection",
    "full_frame_to_weak_perspective",
    "matrix_to_axis_angle",
    "matrix_to_rot6d",
    "mean_rotations",
    "pixels_to_crop",
    "points_to_views",
    "procrustes_align",
    "rot6d_to_axis_angle",
    "rot6d_to_matrix",
    "weak_perspective_to_full_frame",
    "world_to_camera_params",
]
