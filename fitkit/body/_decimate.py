"""Half-edge-collapse decimation that keeps a subset of the original vertices.

Collapsing the half-edge u -> v deletes u and reconnects its triangles to v; v keeps its
position. The surviving vertices are therefore a subset of the input, and every per-vertex
attribute (shape blend shapes, skinning weights, ...) carries over by indexing. Priority is the
quadric error of v against the planes around u and v plus a small edge-length term (for even
density). A collapse is refused when u lies on a UV seam or a mesh boundary, when it breaks the
link condition (the result would not be a manifold), when it flips a triangle in 3D or in UV
space, or when it makes a sliver.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

LENGTH_WEIGHT = 0.05
"""Weight of the squared edge length (m^2) next to the quadric error (m^2) in the priority."""

MIN_NORMAL_DOT = 0.5
"""A moved triangle's unit normal must keep at least this cosine with its old normal."""

MIN_QUALITY = 0.2
"""Smallest triangle quality ``4 sqrt(3) area / sum of squared edges`` (1 = equilateral) a
collapse may create (unless the triangle it replaces was already worse)."""


@dataclass
class Decimated:
    """The result of :func:`decimate`.

    Attributes:
        kept: ``(K,)`` sorted indices of the surviving input vertices.
        faces: ``(G, 3)`` triangles, indexing the K surviving vertices.
        face_uv: ``(G, 3)`` per-corner UV indices, indexing ``uv``.
        uv: ``(T', 2)`` the UV coordinates still used.
        uv_source: ``(T',)`` index of each row of ``uv`` in the input UV array.
    """

    kept: np.ndarray
    faces: np.ndarray
    face_uv: np.ndarray
    uv: np.ndarray
    uv_source: np.ndarray


def locked_vertices(faces: np.ndarray, face_uv: np.ndarray, num_vertices: int) -> np.ndarray:
    """``(N,)`` bool: vertices on a mesh boundary or on a UV seam (more than one UV index)."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), 1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    locked = np.zeros(num_vertices, dtype=bool)
    locked[unique[counts != 2].ravel()] = True
    pairs = np.unique(np.stack([faces.ravel(), face_uv.ravel()], 1), axis=0)
    locked[pairs[:, 0]] |= np.bincount(pairs[:, 0], minlength=num_vertices)[pairs[:, 0]] > 1
    return locked


def _plane_quadrics(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """``(N, 4, 4)`` area-weighted sums of the plane quadrics of each vertex's triangles."""
    corners = vertices[faces]
    normal = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    double_area = np.linalg.norm(normal, axis=1)
    unit = normal / np.maximum(double_area, 1e-20)[:, None]
    plane = np.concatenate([unit, -np.sum(unit * corners[:, 0], axis=1, keepdims=True)], 1)
    per_face = 0.5 * double_area[:, None, None] * plane[:, :, None] * plane[:, None, :]
    quadrics = np.zeros((len(vertices), 4, 4))
    for corner in range(3):
        np.add.at(quadrics, faces[:, corner], per_face)
    return quadrics


def _quality(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, float]:
    """Normal (unnormalised) and quality of one triangle."""
    normal = np.cross(b - a, c - a)
    squares = np.sum((b - a) ** 2) + np.sum((c - b) ** 2) + np.sum((a - c) ** 2)
    return normal, float(2.0 * np.sqrt(3.0) * np.linalg.norm(normal) / max(squares, 1e-30))


def _uv_area(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
    return float((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))


class _Mesh:
    """Mutable triangle soup with vertex -> triangle incidence, for the collapses."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray, face_uv: np.ndarray,
                 uv: np.ndarray) -> None:
        self.points = vertices
        self.faces = faces.copy()
        self.face_uv = face_uv.copy()
        self.uv = uv
        self.alive = np.ones(len(faces), dtype=bool)
        self.incident: list[set[int]] = [set() for _ in range(len(vertices))]
        for face, corners in enumerate(faces):
            for vertex in corners:
                self.incident[vertex].add(face)

    def neighbours(self, vertex: int) -> set[int]:
        found = {int(v) for face in self.incident[vertex] for v in self.faces[face]}
        found.discard(vertex)
        return found

    def can_collapse(self, u: int, v: int) -> bool:
        """Whether u -> v keeps the mesh manifold, unflipped (3D and UV) and sliver-free."""
        shared = [face for face in self.incident[u] if face in self.incident[v]]
        if len(shared) != 2:
            return False
        opposite = {int(x) for face in shared for x in self.faces[face] if x not in (u, v)}
        if self.neighbours(u) & self.neighbours(v) != opposite:
            return False
        v_uv = self._uv_of(v, shared[0])
        for face in self.incident[u]:
            if face in shared:
                continue
            corners = self.faces[face]
            old = self.points[corners]
            new = old.copy()
            slot = int(np.flatnonzero(corners == u)[0])
            new[slot] = self.points[v]
            old_normal, old_quality = _quality(*old)
            new_normal, new_quality = _quality(*new)
            scale = np.linalg.norm(old_normal) * np.linalg.norm(new_normal)
            if scale <= 0.0 or np.dot(old_normal, new_normal) < MIN_NORMAL_DOT * scale:
                return False
            if new_quality < min(MIN_QUALITY, old_quality):
                return False
            old_uv = self.uv[self.face_uv[face]]
            new_uv = old_uv.copy()
            new_uv[slot] = self.uv[v_uv]
            if _uv_area(*old_uv) * _uv_area(*new_uv) <= 0.0:
                return False
        return True

    def _uv_of(self, vertex: int, face: int) -> int:
        return int(self.face_uv[face][self.faces[face] == vertex][0])

    def collapse(self, u: int, v: int) -> None:
        """Delete u: drop the two triangles on edge uv, reconnect u's others to v."""
        shared = [face for face in self.incident[u] if face in self.incident[v]]
        v_uv = self._uv_of(v, shared[0])
        for face in shared:
            self.alive[face] = False
            for vertex in self.faces[face]:
                self.incident[vertex].discard(face)
        for face in self.incident[u]:
            slot = self.faces[face] == u
            self.faces[face][slot] = v
            self.face_uv[face][slot] = v_uv
            self.incident[v].add(face)
        self.incident[u] = set()


def decimate(vertices: np.ndarray, faces: np.ndarray, face_uv: np.ndarray, uv: np.ndarray,
             target: int) -> Decimated:
    """Decimate a triangle mesh down to about ``target`` vertices by half-edge collapses.

    Args:
        vertices: ``(N, 3)`` positions (used for priorities and checks only).
        faces: ``(F, 3)`` consistently oriented triangles of a manifold mesh.
        face_uv: ``(F, 3)`` per-corner UV indices.
        uv: ``(T, 2)`` UV coordinates.
        target: the number of vertices to stop at (fewer collapses happen when no legal one
            is left).
    Returns:
        The surviving vertex subset with faces and UVs re-indexed (:class:`Decimated`).
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    num = len(vertices)
    locked = locked_vertices(faces, face_uv, num)
    quadrics = _plane_quadrics(vertices, faces)
    mesh = _Mesh(vertices, faces, face_uv, np.asarray(uv, dtype=np.float64))
    homogeneous = np.concatenate([vertices, np.ones((num, 1))], axis=1)
    version = np.zeros(num, dtype=np.int64)
    removed = np.zeros(num, dtype=bool)

    def cost(u: int, v: int) -> float:
        point = homogeneous[v]
        error = point @ (quadrics[u] + quadrics[v]) @ point
        return float(error + LENGTH_WEIGHT * np.sum((vertices[u] - vertices[v]) ** 2))

    heap: list[tuple[float, int, int, int, int]] = []

    def push_around(vertex: int) -> None:
        for u in mesh.neighbours(vertex) | {vertex}:
            if locked[u]:
                continue
            for v in mesh.neighbours(u):
                heapq.heappush(heap, (cost(u, v), u, v, version[u], version[v]))

    for u in np.flatnonzero(~locked):
        for v in mesh.neighbours(int(u)):
            heapq.heappush(heap, (cost(int(u), v), int(u), v, 0, 0))
    remaining = num
    while heap and remaining > target:
        _, u, v, stamp_u, stamp_v = heapq.heappop(heap)
        if removed[u] or removed[v] or stamp_u != version[u] or stamp_v != version[v]:
            continue
        if not mesh.can_collapse(u, v):
            continue
        mesh.collapse(u, v)
        quadrics[v] += quadrics[u]
        removed[u] = True
        remaining -= 1
        version[v] += 1
        for w in mesh.neighbours(v):
            version[w] += 1
        push_around(v)

    kept = np.flatnonzero(~removed)
    new_index = np.full(num, -1, dtype=np.int64)
    new_index[kept] = np.arange(len(kept))
    new_faces = new_index[mesh.faces[mesh.alive]]
    uv_source, new_face_uv = np.unique(mesh.face_uv[mesh.alive], return_inverse=True)
    return Decimated(
        kept=kept,
        faces=new_faces,
        face_uv=new_face_uv.reshape(-1, 3),
        uv=np.asarray(uv)[uv_source],
        uv_source=uv_source,
    )
