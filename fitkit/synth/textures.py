"""Procedural clothing textures on the body's UV map.

Every texel of the UV map gets the DensePose part of the triangle that covers it (the triangles
are filled in UV space through their per-corner UVs, :func:`uv_face_map`); parts are grouped into
garment regions (skin, shirt, trousers, shoes, and hair on the top and back of the head,
:func:`garment_regions`) and each region of each subject gets a colour and a pattern (solid,
stripes, checks, blotches) plus fine noise (:func:`clothing_texture`).

Texture images follow the convention of :func:`fitkit.render.texture_map`: rows top-down, UV
``(0, 0)`` at the bottom-left corner of the image and ``(1, 1)`` at its top-right corner, so the
centre of texel ``(row, col)`` of an ``S x S`` texture sits at ``u = (col + 0.5) / S``,
``v = 1 - (row + 0.5) / S``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from fitkit.render.shade import hsv_to_rgb

SKIN, SHIRT, SLEEVE, TROUSERS, TROUSER_LEG, SHOES, HAIR = range(7)
"""Garment regions. ``SLEEVE`` (lower arms) and ``TROUSER_LEG`` (lower legs) become skin for
short sleeves and shorts."""

_PART_REGION: dict[int, int] = {
    1: SHIRT, 2: SHIRT,                                   # torso back, front
    3: SKIN, 4: SKIN,                                     # right hand, left hand
    5: SHOES, 6: SHOES,                                   # left foot, right foot
    7: TROUSERS, 8: TROUSERS, 9: TROUSERS, 10: TROUSERS,  # upper legs
    11: TROUSER_LEG, 12: TROUSER_LEG, 13: TROUSER_LEG, 14: TROUSER_LEG,  # lower legs
    15: SHIRT, 16: SHIRT, 17: SHIRT, 18: SHIRT,           # upper arms
    19: SLEEVE, 20: SLEEVE, 21: SLEEVE, 22: SLEEVE,       # lower arms
    23: SKIN, 24: SKIN,                                   # head
}
"""DensePose part index (1-24, DensePose's numbering) -> garment region."""


def uv_face_map(vt: Tensor, ft: Tensor, size: int, chunk: int = 4_000_000) -> Tensor:
    """Which triangle covers each texel of an ``size x size`` UV map.

    Each triangle is filled in UV space through its per-corner UVs; a texel whose centre lies in
    several triangles (overlapping charts) keeps the highest face index.

    Args:
        vt: ``(T, 2)`` UV coordinates in ``[0, 1]``, v up.
        ft: ``(F, 3)`` per-corner indices into ``vt``.
        size: texture side S in texels.
        chunk: candidate texels tested at once (memory bound).
    Returns:
        ``(S, S)`` long face index per texel, -1 where no triangle covers it.
    """
    corners = vt[ft].double()  # (F, 3, 2)
    xy = torch.stack([corners[..., 0], 1.0 - corners[..., 1]], dim=-1) * size - 0.5
    lo = xy.amin(dim=1).ceil().clamp(0, size - 1).long()  # (F, 2)
    hi = xy.amax(dim=1).floor().clamp(0, size - 1).long()
    extent = (hi - lo + 1).clamp(min=0).amax(dim=1)  # (F,)
    face_map = torch.full((size * size,), -1, dtype=torch.long)
    # Faces are grouped by the power of two above their bounding box side: a group shares one
    # k x k grid of candidate texels.
    bucket = torch.ceil(torch.log2(extent.clamp(min=1).double())).long()
    for b in torch.unique(bucket[extent > 0]).tolist():
        k = 2**b
        group = torch.nonzero((bucket == b) & (extent > 0)).squeeze(1)
        offset = torch.stack(torch.meshgrid(torch.arange(k), torch.arange(k), indexing="xy"), -1)
        for faces in torch.split(group, max(1, chunk // (k * k))):
            texel = lo[faces, None, :] + offset.reshape(1, -1, 2)  # (n, k*k, 2) as (col, row)
            inside = (texel <= hi[faces, None, :]).all(-1)
            inside &= (_barycentric_2d(texel.double(), xy[faces]) >= -1e-9).all(-1)
            face_index, candidate = inside.nonzero(as_tuple=True)
            texel = texel[face_index, candidate]
            linear = texel[:, 1] * size + texel[:, 0]
            face_map.scatter_reduce_(0, linear, faces[face_index], reduce="amax")
    return face_map.view(size, size)


def _barycentric_2d(points: Tensor, triangles: Tensor) -> Tensor:
    """Barycentric coordinates of ``(n, P, 2)`` points in ``(n, 3, 2)`` triangles -> ``(n, P, 3)``.

    Degenerate triangles give NaN weights (never inside)."""
    a, b, c = triangles[:, None, 0], triangles[:, None, 1], triangles[:, None, 2]
    v0, v1, q = b - a, c - a, points - a
    den = v0[..., 0] * v1[..., 1] - v1[..., 0] * v0[..., 1]
    den = torch.where(den.abs() > 1e-12, den, torch.nan)
    w1 = (q[..., 0] * v1[..., 1] - v1[..., 0] * q[..., 1]) / den
    w2 = (v0[..., 0] * q[..., 1] - q[..., 0] * v0[..., 1]) / den
    return torch.stack([1.0 - w1 - w2, w1, w2], dim=-1)


def face_parts(faces: Tensor, vertex_part: Tensor) -> Tensor:
    """The part of each triangle: the part shared by at least two of its vertices, else the
    first vertex's.

    Args:
        faces: ``(..., 3)`` vertex indices.
        vertex_part: ``(V,)`` integer part per vertex.
    Returns:
        ``(...)`` part per triangle (same dtype as ``vertex_part``).
    """
    p = vertex_part[faces]
    p0, p1, p2 = p[..., 0], p[..., 1], p[..., 2]
    return torch.where((p1 == p2) & (p0 != p1), p1, p0)


def hair_faces(rest_vertices: Tensor, faces: Tensor, dp_I: Tensor, eyes: Tensor,
               ears: Tensor) -> Tensor:
    """Head triangles that hair covers: above the eyes (3 cm up), or behind the ears and no
    lower than 6 cm under them, in the rest pose (body frame: y up, facing +z).

    Args:
        rest_vertices: ``(V, 3)``; faces: ``(F, 3)``; dp_I: ``(V,)`` DensePose part per vertex.
        eyes, ears: ``(2, 3)`` rest positions of the eyes and ears.
    Returns:
        ``(F,)`` bool.
    """
    centre = rest_vertices[faces].mean(dim=1)  # (F, 3)
    head = (face_parts(faces, dp_I.long()) >= 23)
    above_eyes = centre[:, 1] > eyes[:, 1].mean() + 0.03
    behind_ears = (centre[:, 2] < ears[:, 2].mean()) & (centre[:, 1] > ears[:, 1].mean() - 0.06)
    return head & (above_eyes | behind_ears)


def garment_regions(
    vt: Tensor, ft: Tensor, faces: Tensor, dp_I: Tensor, hair: Tensor, size: int,
    dilation: int = 4,
) -> Tensor:
    """Garment region of every texel of the body's UV map.

    Args:
        vt: ``(T, 2)`` UVs; ft: ``(F, 3)`` per-corner UV indices; faces: ``(F, 3)`` vertex indices.
        dp_I: ``(V,)`` DensePose part (1-24) per vertex.
        hair: ``(F,)`` bool, the triangles of the ``HAIR`` region (:func:`hair_faces`).
        size: texture side S.
        dilation: texels by which the regions grow into the empty gutters between UV charts, so
            that bilinear lookups at chart borders read a region's own colours.
    Returns:
        ``(S, S)`` long region per texel (``SKIN`` ... ``HAIR``; ``SKIN`` off the charts).
    """
    lookup = torch.full((25,), SKIN, dtype=torch.long)
    for part, region in _PART_REGION.items():
        lookup[part] = region
    face_map = uv_face_map(vt, ft, size)
    region = torch.where(hair, HAIR, lookup[face_parts(faces, dp_I.long()).clamp(0, 24)])
    labels = torch.where(face_map >= 0, region[face_map.clamp(min=0)] + 1, 0)
    labels = labels[None, None].float()
    for _ in range(dilation):
        grown = F.max_pool2d(labels, 3, stride=1, padding=1)
        labels = torch.where(labels > 0, labels, grown)
    return (labels[0, 0].long() - 1).clamp(min=SKIN)


_SKIN_TONES = torch.tensor(
    [[0.98, 0.86, 0.76], [0.93, 0.76, 0.62], [0.80, 0.60, 0.45], [0.63, 0.44, 0.30],
     [0.45, 0.30, 0.20], [0.30, 0.20, 0.13]]
)
_TROUSER_COLOURS = torch.tensor(
    [[0.18, 0.25, 0.42], [0.08, 0.08, 0.09], [0.70, 0.62, 0.45], [0.45, 0.45, 0.47],
     [0.30, 0.22, 0.15], [0.25, 0.35, 0.25]]
)
_SHOE_COLOURS = torch.tensor(
    [[0.05, 0.05, 0.05], [0.92, 0.92, 0.90], [0.35, 0.22, 0.12], [0.55, 0.10, 0.10]]
)
_HAIR_COLOURS = torch.tensor(
    [[0.04, 0.03, 0.03], [0.15, 0.09, 0.05], [0.33, 0.20, 0.10], [0.70, 0.55, 0.30],
     [0.50, 0.18, 0.07], [0.60, 0.60, 0.60]]
)


def _pick(palette: Tensor, generator: torch.Generator, jitter: float) -> Tensor:
    """A palette colour with per-channel jitter -> (3,)."""
    index = int(torch.randint(palette.shape[0], (1,), generator=generator))
    noise = (torch.rand(3, generator=generator) - 0.5) * 2.0 * jitter
    return (palette[index] + noise).clamp(0.0, 1.0)


def _random_colour(generator: torch.Generator) -> Tensor:
    """A clothing colour: any hue, mostly mid saturation and value -> (3,)."""
    h, s, v = torch.rand(3, generator=generator)
    return hsv_to_rgb(torch.stack([h, 0.15 + 0.7 * s, 0.2 + 0.75 * v]))


def _pattern(size: int, generator: torch.Generator) -> Tensor:
    """A random two-colour mixing pattern in [0, 1] over the texture -> (S, S).

    Kinds (equally likely): solid, stripes (random period and angle), checks, soft blotches."""
    kind = int(torch.randint(4, (1,), generator=generator))
    period = 0.02 + 0.08 * float(torch.rand((), generator=generator))
    angle = math.pi * float(torch.rand((), generator=generator))
    blotch = torch.rand(1, 1, 12, 12, generator=generator)
    if kind == 0:
        return torch.zeros(size, size)
    if kind == 3:
        smooth = F.interpolate(blotch, size=(size, size), mode="bicubic", align_corners=True)
        return (smooth[0, 0] > 0.55).float()
    coords = torch.linspace(0.0, 1.0, size)
    y, x = coords[:, None], coords[None, :]
    if kind == 1:
        along = x * math.cos(angle) + y * math.sin(angle)
        return (torch.sin(2.0 * math.pi * along / period) > 0).float()
    return ((torch.floor(x / period) + torch.floor(y / period)) % 2).float()


def clothing_texture(regions: Tensor, generator: torch.Generator) -> Tensor:
    """A random outfit painted on the garment regions of the UV map.

    Draws, in this order: skin tone, sleeve length (long with probability 1/2), trouser length
    (shorts with probability 1/4), baldness (probability 1/8), then per region (shirt, trousers,
    shoes, hair) two colours and a pattern, then fine noise and a low-frequency brightness
    variation (folds, dirt).

    Args:
        regions: ``(S, S)`` long garment region per texel (:func:`garment_regions`).
        generator: CPU generator, the only source of randomness.
    Returns:
        ``(3, S, S)`` float RGB in [0, 1].
    """
    size = regions.shape[-1]
    skin = _pick(_SKIN_TONES, generator, 0.04)
    long_sleeves = bool(torch.rand((), generator=generator) < 0.5)
    shorts = bool(torch.rand((), generator=generator) < 0.25)
    bald = bool(torch.rand((), generator=generator) < 0.125)
    palettes = {
        SHIRT: (_random_colour(generator), _random_colour(generator), _pattern(size, generator)),
        TROUSERS: (_pick(_TROUSER_COLOURS, generator, 0.06), _random_colour(generator),
                   _pattern(size, generator) * (torch.rand((), generator=generator) < 0.3)),
        SHOES: (_pick(_SHOE_COLOURS, generator, 0.05), _pick(_SHOE_COLOURS, generator, 0.05),
                torch.zeros(size, size)),
        HAIR: (_pick(_HAIR_COLOURS, generator, 0.03), _pick(_HAIR_COLOURS, generator, 0.03),
               torch.zeros(size, size)),
    }
    fine = (torch.rand(3, size, size, generator=generator) - 0.5) * 0.06
    coarse = F.interpolate(torch.rand(1, 1, 8, 8, generator=generator), size=(size, size),
                           mode="bilinear", align_corners=True)[0]
    region = regions.clone()
    region[region == SLEEVE] = SHIRT if long_sleeves else SKIN
    region[region == TROUSER_LEG] = SKIN if shorts else TROUSERS
    region[region == HAIR] = SKIN if bald else HAIR
    texture = skin[:, None, None].expand(3, size, size).clone()
    for label, (first, second, mix) in palettes.items():
        colour = first[:, None, None] * (1.0 - mix) + second[:, None, None] * mix
        texture = torch.where(region == label, colour, texture)
    texture = texture * (0.85 + 0.3 * coarse) + fine
    return texture.clamp(0.0, 1.0)
