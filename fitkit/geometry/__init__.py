"""Geometry: cameras, rotations (through ``roma``), full-frame cameras, Procrustes."""

from fitkit.geometry.camera import Camera, default_focal_length

__all__ = ["Camera", "default_focal_length"]
