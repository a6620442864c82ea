"""Pure-PyTorch rasterizer: the reference backend and the CPU path (any device).

Triangles are rasterized in homogeneous form, straight from camera-frame vertices: for the ray
``d = ((u - cx) / fx, (v - cy) / fy, 1)`` through a pixel centre, the weights

    e_i = c_i . d,  with  c_0 = x_1 x x_2,  c_1 = x_2 x x_0,  c_2 = x_0 x x_1,

give the 3D (perspective-correct) barycentrics ``b_i = e_i / sum(e)`` of the point where the ray
meets the triangle's plane, at depth ``z = det(x_0, x_1, x_2) / sum(e)``. The ray hits the
triangle where all ``b_i >= 0`` and ``z > 0``; no projection of the vertices is needed, so a
triangle that reaches behind the camera is handled exactly: only its part with
``near <= z <= far`` is drawn, the same surface that clipping against the near and far planes
keeps. Candidate (triangle, pixel) pairs are enumerated from the screen bounding box of each
triangle's part in front of the near plane, clipped to the image, all at once (chunked over blocks
of triangles to bound memory); a z-buffer (``scatter_reduce`` with ``amin``) and a second pass
that takes the smallest face index among the candidates at the minimum depth pick one face per
pixel deterministically. Barycentrics and depth of the winners are then recomputed with autograd,
so they are differentiable with respect to the vertices (the face ids are not).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fitkit.geometry.camera import Camera
from fitkit.render.fragments import Fragments

MAX_CANDIDATES = 1 << 21
"""Most (triangle, pixel) candidate pairs tested in one vectorized block."""

BOX_MARGIN = 1e-3
"""Pixels by which screen bounding boxes are widened before rounding to pixel centres."""


def _triangle_setup(corners: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-triangle constants of the homogeneous edge weights.

    ``c_1 = (x_2 - x_0) x x_0`` and ``c_2 = x_0 x (x_1 - x_0)`` equal ``x_2 x x_0`` and
    ``x_0 x x_1`` but lose less precision far from the camera; ``c_0 = n - c_1 - c_2`` with the
    normal ``n = (x_1 - x_0) x (x_2 - x_0)``, and ``det = n . x_0``.

    Args:
        corners: ``(..., 3, 3)`` triangle corners ``x_0, x_1, x_2`` in the camera frame.
    Returns:
        ``(..., 3, 3)`` vectors ``c_i`` (rows), ``(...)`` ``det(x_0, x_1, x_2)`` and ``(...)``
        bool, False for triangles that are degenerate (zero area) or seen exactly edge-on.
    """
    x0, x1, x2 = corners.unbind(-2)
    e1, e2 = x1 - x0, x2 - x0
    normal = torch.linalg.cross(e1, e2)
    c1 = torch.linalg.cross(e2, x0)
    c2 = torch.linalg.cross(x0, e1)
    det = (normal * x0).sum(-1)
    tol = 64 * torch.finfo(corners.dtype).eps
    area = normal.norm(dim=-1)
    proper = (area > tol * e1.norm(dim=-1) * e2.norm(dim=-1)) & (
        det.abs() > tol * area * x0.norm(dim=-1)
    )
    return torch.stack([normal - c1 - c2, c1, c2], dim=-2), det, proper


def _watertight_edges(corners: Tensor) -> Tensor:
    """Edge vectors ``x_1 x x_2, x_2 x x_0, x_0 x x_1`` for the coverage test.

    Written as separate products and differences, ``b x a`` is exactly ``-(a x b)`` in IEEE
    arithmetic (``torch.linalg.cross`` may fuse them and lose that), so two triangles that share
    an edge get edge weights of exactly opposite sign along it, whatever their order of corners:
    a pixel centre on a shared edge is covered by at least one of them (no cracks).
    :func:`_triangle_setup` gives the same values, more precisely, for barycentrics and depth,
    but not bitwise antisymmetric.

    Args:
        corners: ``(..., 3, 3)`` triangle corners.
    Returns:
        ``(..., 3, 3)`` vectors (rows) for :func:`_edge_weights`.
    """
    x0, x1, x2 = corners.unbind(-2)
    return torch.stack([_exact_cross(x1, x2), _exact_cross(x2, x0), _exact_cross(x0, x1)], dim=-2)


def _exact_cross(a: Tensor, b: Tensor) -> Tensor:
    """``(..., 3)`` cross product with one rounding per product and per difference (no FMA)."""
    ax, ay, az = a.unbind(-1)
    bx, by, bz = b.unbind(-1)
    return torch.stack([ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx], dim=-1)


def _edge_weights(c: Tensor, rays: Tensor) -> Tensor:
    """Homogeneous edge weights ``e_i = c_i . (rx, ry, 1)`` along pixel rays.

    Args:
        c: ``(..., 3, 3)`` vectors from :func:`_triangle_setup`.
        rays: ``(..., 2)`` ray directions ``(x / z, y / z)`` of the pixel centres.
    Returns:
        ``(..., 3)`` weights: barycentrics up to their sum; the hit depth is ``det / sum``.
    """
    return c[..., 0] * rays[..., None, 0] + c[..., 1] * rays[..., None, 1] + c[..., 2]


def _screen_boxes(
    corners: Tensor, camera: Camera, image_size: tuple[int, int], near: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pixel bounding boxes of the part of each triangle in front of the near plane.

    The part with ``z >= near`` is a polygon whose corners are the triangle's corners in front of
    the plane and the points where its edges cross it; its projection is bounded by theirs.

    Args:
        corners: ``(B, F, 3, 3)`` camera-frame triangle corners.
    Returns:
        ``(B, F)`` long first column, first row, box width and box height (in pixels, clipped to
        the image; width or height 0 when the triangle covers no pixel centre).
    """
    height, width = image_size
    z = corners[..., 2]
    nxt = corners.roll(-1, dims=-2)
    z_next = nxt[..., 2]
    crosses = (z - near) * (z_next - near) < 0
    t = ((near - z) / torch.where(crosses, z_next - z, torch.ones_like(z))).clamp(0, 1)
    points = torch.cat([corners, corners + t[..., None] * (nxt - corners)], dim=-2)
    in_front = torch.cat([z >= near, crosses], dim=-1)
    depth = torch.where(in_front, points[..., 2], torch.ones_like(points[..., 2]))
    uv = points[..., :2] / depth[..., None] * camera.focal_length[:, None, None, :]
    uv = uv + camera.principal_point[:, None, None, :]
    inf = torch.finfo(uv.dtype).max
    lo = torch.where(in_front[..., None], uv, torch.full_like(uv, inf)).amin(-2)
    hi = torch.where(in_front[..., None], uv, torch.full_like(uv, -inf)).amax(-2)
    limit = uv.new_tensor([width - 1, height - 1])
    # A corner on a pixel centre may project a rounding error to either side of it: widen the
    # box by a little (the edge test decides coverage) so that pixel is never dropped.
    lo, hi = lo - BOX_MARGIN, hi + BOX_MARGIN
    lo = lo.ceil().clamp(min=torch.zeros_like(limit), max=limit + 1).long()
    hi = hi.floor().clamp(min=-torch.ones_like(limit), max=limit).long()
    size = (hi - lo + 1).clamp(min=0)
    return lo[..., 0], lo[..., 1], size[..., 0], size[..., 1]


def _candidate_chunks(counts: Tensor, max_candidates: int) -> list[tuple[int, int]]:
    """Split consecutive triangles into blocks of about ``max_candidates`` pixels.

    A triangle goes to the block in which its last candidate falls, so a block holds at most
    ``max_candidates`` plus the size of its first triangle.

    Args:
        counts: ``(N,)`` long candidate pixels per triangle.
    Returns:
        ``(start, stop)`` triangle ranges.
    """
    if len(counts) == 0:
        return []
    block = torch.div(counts.cumsum(0) - 1, max_candidates, rounding_mode="floor")
    cuts = (block[1:] != block[:-1]).nonzero().squeeze(1).add(1).tolist()
    bounds = [0, *cuts, len(counts)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _covering_candidates(
    corners: Tensor,
    rays_u: Tensor,
    rays_v: Tensor,
    camera: Camera,
    image_size: tuple[int, int],
    near: float,
    far: float,
    cull_backfaces: bool,
    max_candidates: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """All (pixel, triangle) pairs where a pixel centre's ray hits a triangle in ``[near, far]``.

    Args:
        corners: ``(B, F, 3, 3)`` camera-frame triangle corners (no gradient needed).
        rays_u: ``(B, W)`` ``(u - cx) / fx`` per column; rays_v: ``(B, H)`` per row.
    Returns:
        ``(K,)`` flat pixel index into ``B * H * W``, ``(K,)`` face index in ``[0, F)`` and
        ``(K,)`` depth of the hit.
    """
    num_faces = corners.shape[1]
    height, width = image_size
    left, top, box_w, box_h = _screen_boxes(corners, camera, image_size, near)
    c, det, drawable = _triangle_setup(corners)
    edges = _watertight_edges(corners).reshape(-1, 3, 3)
    drawable &= box_w * box_h > 0
    if cull_backfaces:
        drawable &= det < 0
    triangles = drawable.flatten().nonzero().squeeze(1)
    counts = (box_w * box_h).flatten()[triangles]
    c, det = c.reshape(-1, 3, 3), det.flatten()
    left, top, box_w = left.flatten(), top.flatten(), box_w.flatten()
    pixels, faces, depths = [], [], []
    for start, stop in _candidate_chunks(counts, max_candidates):
        count = counts[start:stop]
        owner = torch.repeat_interleave(count)
        local = torch.arange(len(owner), device=count.device) - (count.cumsum(0) - count)[owner]
        tri = triangles[start:stop][owner]
        row_width = box_w[tri]
        u = left[tri] + local % row_width
        v = top[tri] + torch.div(local, row_width, rounding_mode="floor")
        b = torch.div(tri, num_faces, rounding_mode="floor")
        rays = torch.stack([rays_u[b, u], rays_v[b, v]], dim=-1)
        cover = _edge_weights(edges[tri], rays)
        cover_total = cover.sum(-1)
        total = _edge_weights(c[tri], rays).sum(-1)
        tri_det = det[tri]
        depth = tri_det / total
        hit = ((cover * cover_total[:, None]) >= 0).all(-1) & (tri_det * total > 0)
        hit &= (depth >= near) & (depth <= far)
        pixels.append(((b * height + v) * width + u)[hit])
        faces.append((tri % num_faces)[hit])
        depths.append(depth[hit])
    if not pixels:
        empty = torch.zeros(0, dtype=torch.long, device=corners.device)
        return empty, empty, corners.new_zeros(0)
    return torch.cat(pixels), torch.cat(faces), torch.cat(depths)


def rasterize_torch(
    vertices: Tensor,
    faces: Tensor,
    camera: Camera,
    image_size: tuple[int, int],
    near: float,
    far: float,
    cull_backfaces: bool = False,
    max_candidates: int = MAX_CANDIDATES,
) -> Fragments:
    """Rasterize a batch of meshes in pure PyTorch.

    Args:
        vertices: ``(B, V, 3)`` camera-frame vertices (x right, y down, z forward, meters).
        faces: ``(F, 3)`` long vertex indices, shared by the batch.
        camera: ``B`` cameras.
        image_size: ``(H, W)``.
        near, far: the visible depth range (meters); surface outside it is not drawn.
        cull_backfaces: drop triangles whose corners run clockwise seen from the camera (their
            normal ``(x1 - x0) x (x2 - x0)`` points away from it).
        max_candidates: most (triangle, pixel) pairs tested at once (bounds memory).
    Returns:
        Fragments; ``bary`` and ``depth`` carry gradients to ``vertices``.
    """
    batch = vertices.shape[0]
    height, width = image_size
    num_pixels = batch * height * width
    device, dtype = vertices.device, vertices.dtype
    camera = camera.to(device=device, dtype=dtype)
    rays_u = torch.arange(width, device=device, dtype=dtype) - camera.principal_point[:, :1]
    rays_u = rays_u / camera.focal_length[:, :1]
    rays_v = torch.arange(height, device=device, dtype=dtype) - camera.principal_point[:, 1:]
    rays_v = rays_v / camera.focal_length[:, 1:]

    with torch.no_grad():
        pixel, face, depth = _covering_candidates(
            vertices.detach()[:, faces],
            rays_u,
            rays_v,
            camera,
            image_size,
            near,
            far,
            cull_backfaces,
            max_candidates,
        )
        zbuffer = depth.new_full((num_pixels,), torch.inf)
        zbuffer.scatter_reduce_(0, pixel, depth, reduce="amin")
        nearest = depth == zbuffer[pixel]
        face_buffer = torch.full((num_pixels,), faces.shape[0], device=device, dtype=torch.long)
        face_buffer.scatter_reduce_(0, pixel[nearest], face[nearest], reduce="amin")
        covered = (face_buffer < faces.shape[0]).nonzero().squeeze(1)

    visible = face_buffer[covered]
    b = torch.div(covered, height * width, rounding_mode="floor")
    rest = covered % (height * width)
    v = torch.div(rest, width, rounding_mode="floor")
    rays = torch.stack([rays_u[b, rest % width], rays_v[b, v]], dim=-1)
    c, det, _ = _triangle_setup(vertices[b[:, None], faces[visible]])
    weights = _edge_weights(c, rays)
    total = weights.sum(-1)
    face_id = torch.full((num_pixels,), -1, device=device, dtype=torch.long)
    face_id[covered] = visible
    bary = vertices.new_zeros(num_pixels, 3).index_put((covered,), weights / total[:, None])
    depth_map = vertices.new_zeros(num_pixels).index_put((covered,), det / total)
    return Fragments(
        face_id=face_id.view(batch, height, width),
        bary=bary.view(batch, height, width, 3),
        depth=depth_map.view(batch, height, width),
    )
