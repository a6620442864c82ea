"""SMPL's linear blend skinning, evaluated only where it is needed.

The same function as ``smplx.lbs`` (shape blend shapes, joints from the shaped rest mesh, pose
blend shapes, the kinematic chain, linear blend skinning), rearranged so that a fitter pays only
for what its data terms read:

- **joints** come from the shaped rest pose through ``J_regressor``, which is linear in ``betas``:
  ``J = J_regressor v_template + (J_regressor shapedirs) betas`` with both products precomputed,
  so the joints need no vertex at all;
- **vertices** are shaped, pose-corrected and skinned only for the requested ids (``vertex_ids``):
  the keypoints term reads 24 joints and 11 vertices of ~7,000;
- the **kinematic chain** composes every joint's transform with an ancestor's, doubling the
  span each step (4 steps for SMPL's 24 joints, 8 levels deep), a few operations on all joints
  at once; its gather indices are computed on the host once, so on a GPU it never reads a device
  tensor to index (smplx indexes with its ``parents`` buffer, one host sync per joint).

Results equal smplx's to float rounding (``tests/test_skinning.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fitkit.geometry.rotations import axis_angle_to_matrix


class Skinning(nn.Module):
    """The skinning arrays of one body model and the sparse forward pass over them.

    Args:
        v_template: ``(V, 3)`` rest vertices.
        shapedirs: ``(V, 3, S)`` shape blend shapes.
        posedirs: ``(P, V * 3)`` pose blend shapes (P = 9 (J - 1), smplx's layout).
        J_regressor: ``(J, V)`` joint regressor.
        weights: ``(V, J)`` skinning weights.
        parents: the parent of each joint (root -1).
    """

    def __init__(self, v_template: Tensor, shapedirs: Tensor, posedirs: Tensor,
                 J_regressor: Tensor, weights: Tensor, parents: tuple[int, ...]) -> None:
        super().__init__()
        count = v_template.shape[0]
        self.register_buffer("v_template", v_template)
        self.register_buffer("shapedirs", shapedirs)
        self.register_buffer("posedirs", posedirs.reshape(-1, count, 3))  # (P, V, 3)
        self._cache: dict[str, tuple[Tensor, int, Any]] = {}
        self.register_buffer("weights", weights)
        regressor = J_regressor.double()
        self.register_buffer("joint_template", (regressor @ v_template.double()).to(
            v_template.dtype))
        self.register_buffer("joint_shapedirs", torch.einsum(
            "jv,vcs->jcs", regressor, shapedirs.double()).to(v_template.dtype))
        self.parents = tuple(parents)
        count_joints = len(self.parents)
        # the parent of every joint, the root's pointing at an identity transform appended
        # after the last joint
        self.register_buffer("parent_index", torch.tensor(
            [parent if parent >= 0 else count_joints for parent in self.parents]),
            persistent=False)
        self.register_buffer("jumps", torch.tensor(ancestor_jumps(self.parents)),
                             persistent=False)

    @property
    def pose_blend(self) -> bool:
        """Whether the pose blend shapes move any vertex: zero ones (the open body's) are
        skipped, exactly. Computed once per ``posedirs`` buffer (again after ``.to()`` or an
        in-place change), so the forward pass reads no device tensor."""
        return self._derived("posedirs", lambda posedirs: bool(posedirs.any()))

    @property
    def shapedirs_by_component(self) -> Tensor:
        """``(S, 3, V)``: the shape blend shapes, coordinate-major (derived from
        ``shapedirs``, kept while it is unchanged)."""
        return self._derived("shapedirs", lambda dirs: dirs.permute(2, 1, 0).contiguous())

    @property
    def posedirs_by_component(self) -> Tensor:
        """``(P, 3, V)``: the pose blend shapes, coordinate-major (derived from ``posedirs``,
        kept while it is unchanged)."""
        return self._derived("posedirs_by_component",
                             lambda dirs: dirs.transpose(1, 2).contiguous(), "posedirs")

    def _derived(self, key: str, make: Callable[[Tensor], Any], source: str | None = None) -> Any:
        """``make(buffer)`` of the buffer ``source`` (default ``key``), cached under ``key``
        until the buffer is replaced (``.to()``, assignment) or changed in place."""
        tensor = getattr(self, source or key)
        cached = self._cache.get(key)
        if cached is None or cached[0] is not tensor or cached[1] != tensor._version:
            cached = (tensor, tensor._version, make(tensor))
            self._cache[key] = cached
        return cached[2]

    @property
    def num_vertices(self) -> int:
        """V."""
        return self.v_template.shape[0]

    def forward(self, global_orient: Tensor, body_pose: Tensor, betas: Tensor, transl: Tensor,
                vertex_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Posed joints and the posed vertices ``vertex_ids``.

        Args:
            global_orient: ``(B, 3)``; body_pose: ``(B, 3 (J - 1))`` axis-angle;
            betas: ``(B, S)``; transl: ``(B, 3)``.
            vertex_ids: ``(K,)`` long vertex ids, or ``None`` for all V.
        Returns:
            ``joints`` ``(B, J, 3)`` and ``vertices`` ``(B, K, 3)`` (``K = V`` for all).
        """
        batch = betas.shape[0]
        rotations = axis_angle_to_matrix(
            torch.cat([global_orient, body_pose], dim=-1).reshape(batch, -1, 3))  # (B, J, 3, 3)
        rest_joints = self.joint_template + torch.einsum("jcs,bs->bjc", self.joint_shapedirs,
                                                         betas)
        world_rotation, world_joint = self.chain(rotations, rest_joints)
        joints = world_joint + transl[:, None]
        if vertex_ids is not None and vertex_ids.numel() == 0:
            return joints, joints.new_zeros(batch, 0, 3)
        # Vertices are computed component-major, each coordinate a (B, K) tensor: autograd's
        # backward of slicing a (B, K, 3) or (B, K, 12) tensor fills a zero tensor of the whole
        # size per slice, which cost 70 % of a full-mesh forward + backward (3.5x slower).
        count = self.num_vertices if vertex_ids is None else len(vertex_ids)
        shape_dirs = self.shapedirs_by_component  # (S, 3, V)
        template = self.v_template.T  # (3, V)
        if vertex_ids is not None:
            shape_dirs, template = shape_dirs[..., vertex_ids], template[:, vertex_ids]
        shaped = (betas @ shape_dirs.reshape(shape_dirs.shape[0], -1)).view(
            batch, 3, count) + template  # (B, 3, K)
        if self.pose_blend:
            eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
            pose_feature = (rotations[:, 1:] - eye).reshape(batch, -1)  # (B, P)
            pose_dirs = self.posedirs_by_component  # (P, 3, V)
            if vertex_ids is not None:
                pose_dirs = pose_dirs[..., vertex_ids]
            shaped = shaped + (pose_feature @ pose_dirs.reshape(pose_dirs.shape[0], -1)).view(
                batch, 3, count)
        # each joint's transform maps its rest position to its posed one
        offset = world_joint - _apply(world_rotation, rest_joints)  # (B, J, 3)
        transforms = torch.cat([world_rotation.flatten(-2), offset], dim=-1)  # (B, J, 12)
        weights = self.weights if vertex_ids is None else self.weights[vertex_ids]  # (K, J)
        blended = (transforms.permute(2, 0, 1).reshape(12 * batch, -1) @ weights.T).view(
            12, batch, count).unbind(0)  # 12 x (B, K): one product for rotations and offsets
        point = shaped.unbind(1)
        vertices = torch.stack([
            blended[3 * axis] * point[0] + blended[3 * axis + 1] * point[1]
            + blended[3 * axis + 2] * point[2] + blended[9 + axis] + transl[:, axis, None]
            for axis in range(3)], dim=-1)
        return joints, vertices

    def chain(self, rotations: Tensor, rest_joints: Tensor) -> tuple[Tensor, Tensor]:
        """The kinematic chain: world rotations ``(B, J, 3, 3)`` and posed joints ``(B, J, 3)``
        (no translation) from local rotations ``(B, J, 3, 3)`` and rest joints ``(B, J, 3)``
        (also used by the LM solver's closed-form Jacobian, :mod:`fitkit.fitting.lm`).

        By ancestor doubling: every joint holds the rigid transform from its frame to that of an
        ancestor (first its parent: local rotation and bone), and each step composes it with the
        transform its ancestor holds, doubling the path it spans, so the whole tree takes
        ``ceil(log2(depth + 1))`` steps (4 for SMPL's 24 joints, whose tree is 8 deep) of one
        index and one batched product each, for every joint at once, instead of one step per
        level of the tree.
        """
        batch, count = rest_joints.shape[:2]
        padded = torch.cat([rest_joints, rest_joints.new_zeros(batch, 1, 3)], dim=1)
        bone = rest_joints - padded[:, self.parent_index]  # the root keeps its rest position
        transform = torch.cat([rotations, bone[..., None]], dim=-1)  # (B, J, 3, 4)
        identity = torch.eye(3, 4, dtype=transform.dtype, device=transform.device)
        transform = torch.cat([transform, identity.expand(batch, 1, 3, 4)], dim=1)
        for jump in self.jumps:
            transform = _compose(transform[:, jump], transform)
        return transform[:, :count, :, :3], transform[:, :count, :, 3]


def ancestor_jumps(parents: tuple[int, ...]) -> list[list[int]]:
    """The gather indices of :meth:`Skinning.chain`'s ancestor doubling: per step, for each
    joint (and the identity appended at index J), the ancestor whose transform it composes with
    (J: none left). Step k reaches ``2^k`` generations up."""
    count = len(parents)
    ancestor = [parent if parent >= 0 else count for parent in parents] + [count]
    steps = []
    while any(joint != count for joint in ancestor):
        steps.append(list(ancestor))
        ancestor = [ancestor[joint] for joint in ancestor]
    return steps


def _compose(first: Tensor, second: Tensor) -> Tensor:
    """The rigid transforms ``first o second`` of ``(..., 3, 4)`` ``[R | t]`` pairs."""
    return first[..., :3] @ second + torch.nn.functional.pad(first[..., 3:], (3, 0))


def _apply(rotation: Tensor, points: Tensor) -> Tensor:
    """``rotation @ point`` for ``(..., 3, 3)`` and ``(..., 3)``, as three column products: on
    the CPU many tiny matrix products run several times faster so than as batched matmuls, and
    no ``(..., 3, 3)`` intermediate is made."""
    return (rotation[..., :, 0] * points[..., 0, None] + rotation[..., :, 1] * points[..., 1, None]
            + rotation[..., :, 2] * points[..., 2, None])


def skinning_from_arrays(v_template: np.ndarray, shapedirs: np.ndarray, posedirs: np.ndarray,
                         J_regressor: np.ndarray, weights: np.ndarray, parents: tuple[int, ...],
                         dtype: torch.dtype) -> Skinning:
    """A :class:`Skinning` from a body file's arrays (``posedirs`` ``(V, 3, P)`` as stored)."""
    count = v_template.shape[0]
    flat = np.ascontiguousarray(posedirs.reshape(count * 3, -1).T)  # (P, V * 3), smplx's layout
    return Skinning(*(torch.as_tensor(np.asarray(array), dtype=dtype) for array in (
        v_template, shapedirs, flat, J_regressor, weights)), parents)
