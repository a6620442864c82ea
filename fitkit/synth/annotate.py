"""Annotations of rendered samples: OpenPose keypoints (exact or detector-like) and DensePose IUV.

Detector-like keypoints (``keypoint_noise="detector"``) start from the exact projections and
then, per keypoint: jitter with a Gaussian of sigma ``sigma`` times the person's size in pixels
(times ``occluded_scale`` when occluded; an outlier with probability ``outlier`` uses
``outlier_sigma``); a confidence drawn uniformly from ``confidence_visible`` or
``confidence_occluded``; dropped, as OpenPose does (``0, 0, 0``), when out of frame, when occluded
with probability ``drop_occluded`` and when visible with probability ``drop_visible``; finally a
group of left/right pairs (elbows and wrists; knees, ankles and feet; eyes and ears) is swapped
with probability ``swap``.
A keypoint counts as occluded when fewer than ``min_visible`` of its ``neighbours`` nearest
surface vertices (in the rest pose) are visible in the render
(:func:`fitkit.render.vertex_visibility`: a corner of a triangle seen at some pixel centre).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fitkit.synth.textures import face_parts

KEYPOINT_MODES: tuple[str, ...] = ("detector", "none")
"""Keypoint noise modes: detector-like, or exact projections."""

_SWAP_GROUPS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((3, 6), (4, 7)),                                      # elbows, wrists
    ((10, 13), (11, 14), (19, 22), (20, 23), (21, 24)),    # knees, ankles, feet
    ((15, 16), (17, 18)),                                  # eyes, ears
)
"""Groups of BODY_25 left/right pairs that a detector confuses together."""


@dataclass
class KeypointNoise:
    """Detector-like keypoint noise (see the module docstring).

    Attributes:
        sigma: jitter sigma as a fraction of the person's size (larger bounding-box side, px).
        occluded_scale: jitter multiplier for occluded keypoints.
        outlier: probability of an outlier; outlier_sigma: its jitter sigma (fraction of size).
        confidence_visible, confidence_occluded: uniform confidence ranges.
        drop_occluded, drop_visible: probabilities of dropping an occluded / a visible keypoint.
        swap: probability of swapping each left/right group.
        neighbours: surface vertices per keypoint tested for visibility.
        min_visible: visible neighbours needed for the keypoint to count as visible.
    """

    sigma: float = 0.01
    occluded_scale: float = 3.0
    outlier: float = 0.02
    outlier_sigma: float = 0.08
    confidence_visible: tuple[float, float] = (0.55, 0.95)
    confidence_occluded: tuple[float, float] = (0.05, 0.45)
    drop_occluded: float = 0.5
    drop_visible: float = 0.02
    swap: float = 0.03
    neighbours: int = 12
    min_visible: int = 2


def keypoint_neighbours(vertices: Tensor, keypoints: Tensor, k: int) -> Tensor:
    """The ``k`` surface vertices nearest to each keypoint (computed once, in the rest pose).

    Args:
        vertices: ``(V, 3)``; keypoints: ``(K, 3)``.
    Returns:
        ``(K, k)`` long vertex indices.
    """
    return torch.cdist(keypoints, vertices).topk(k, dim=1, largest=False).indices


def in_frame(pixels: Tensor, width: int, height: int) -> Tensor:
    """``(..., 2)`` pixel positions -> ``(...)`` bool: inside ``[0, W-1] x [0, H-1]``."""
    u, v = pixels.unbind(-1)
    return (u >= 0) & (u <= width - 1) & (v >= 0) & (v <= height - 1)


def exact_keypoints(pixels: Tensor, width: int, height: int) -> Tensor:
    """Exact OpenPose keypoints: the projections with confidence 1, ``(0, 0, 0)`` out of frame.

    Args:
        pixels: ``(B, K, 2)`` projections.
    Returns:
        ``(B, K, 3)`` ``(u, v, confidence)``.
    """
    seen = in_frame(pixels, width, height)[..., None]
    return torch.where(seen, torch.cat([pixels, torch.ones_like(pixels[..., :1])], -1), 0.0)


def draw_keypoint_noise(generator: torch.Generator, num_keypoints: int = 25) -> dict[str, Tensor]:
    """One sample's random draws for :func:`detector_keypoints`, in a fixed order.

    Returns:
        ``jitter`` (K, 2) and ``outlier_jitter`` (K, 2) normals; ``outlier``, ``confidence``,
        ``drop`` (K,) and ``swap`` (3,) uniforms.
    """
    return {
        "jitter": torch.randn(num_keypoints, 2, generator=generator),
        "outlier_jitter": torch.randn(num_keypoints, 2, generator=generator),
        "outlier": torch.rand(num_keypoints, generator=generator),
        "confidence": torch.rand(num_keypoints, generator=generator),
        "drop": torch.rand(num_keypoints, generator=generator),
        "swap": torch.rand(len(_SWAP_GROUPS), generator=generator),
    }


def detector_keypoints(
    pixels: Tensor, visible: Tensor, person_size: Tensor, width: int, height: int,
    noise: dict[str, Tensor], config: KeypointNoise,
) -> Tensor:
    """Detector-like OpenPose keypoints from exact projections.

    Args:
        pixels: ``(B, 25, 2)`` exact projections (BODY_25 order).
        visible: ``(B, 25)`` bool, keypoint not occluded.
        person_size: ``(B,)`` larger side of the person's bounding box, pixels.
        width, height: image size.
        noise: batched :func:`draw_keypoint_noise` draws (leading B).
        config: noise settings.
    Returns:
        ``(B, 25, 3)`` ``(u, v, confidence)``, dropped keypoints ``(0, 0, 0)``.
    """
    scale = torch.where(visible, 1.0, config.occluded_scale) * config.sigma
    outlier = noise["outlier"] < config.outlier
    jitter = torch.where(outlier[..., None], config.outlier_sigma * noise["outlier_jitter"],
                         scale[..., None] * noise["jitter"])
    noisy = pixels + jitter * person_size[:, None, None]
    low = torch.where(visible, config.confidence_visible[0], config.confidence_occluded[0])
    high = torch.where(visible, config.confidence_visible[1], config.confidence_occluded[1])
    confidence = low + (high - low) * noise["confidence"]
    drop = torch.where(visible, config.drop_visible, config.drop_occluded)
    kept = (noise["drop"] >= drop) & in_frame(pixels, width, height)
    kept &= in_frame(noisy, width, height)
    points = torch.where(kept[..., None], torch.cat([noisy, confidence[..., None]], -1), 0.0)
    for group, draw in zip(_SWAP_GROUPS, noise["swap"].unbind(-1), strict=True):
        left, right = torch.tensor(group).unbind(-1)
        swapped = points.clone()
        swapped[:, left], swapped[:, right] = points[:, right], points[:, left]
        points = torch.where((draw < config.swap)[:, None, None], swapped, points)
    return points


def densepose_iuv(face_id: Tensor, bary: Tensor, faces: Tensor, dp_I: Tensor, dp_U: Tensor,
                  dp_V: Tensor) -> Tensor:
    """DensePose IUV of a render.

    The part I of a pixel is its visible triangle's part (:func:`~fitkit.synth.textures.face_parts`:
    the part of at least two of its vertices, else the first vertex's); U and V interpolate, with
    the pixel's barycentric weights renormalised over the triangle's vertices of part I, the
    per-vertex coordinates.

    Args:
        face_id: ``(B, H, W)`` long, -1 on the background; bary: ``(B, H, W, 3)``.
        faces: ``(F, 3)``; dp_I: ``(V,)`` part 1-24; dp_U, dp_V: ``(V,)`` in [0, 1].
    Returns:
        ``(B, H, W, 3)`` uint8 channels ``(I, U * 255, V * 255)``, zero on the background.
    """
    covered = face_id >= 0
    corners = faces[face_id.clamp(min=0)]  # (B, H, W, 3)
    part = face_parts(corners, dp_I.long())
    weights = bary * (dp_I.long()[corners] == part[..., None])
    weights = weights / weights.sum(-1, keepdim=True).clamp(min=1e-12)
    u = (weights * dp_U[corners]).sum(-1)
    v = (weights * dp_V[corners]).sum(-1)
    iuv = torch.stack([part.to(u.dtype), u * 255.0, v * 255.0], -1).round().clamp(0, 255)
    return torch.where(covered[..., None], iuv, 0.0).to(torch.uint8)
