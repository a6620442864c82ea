"""A batched, per-sample Levenberg-Marquardt stage optimizer for SMPLify (``optimizer="lm"``).

A stage's energy (:mod:`fitkit.fitting.config`) is, per sample b, a sum of squares
``E_b(theta_b) = ||r_b(theta_b)||^2`` of the residuals each term and prior offers next to its
energy:

- 2D terms (keypoints, DensePose, flow): :meth:`fitkit.terms.ReprojectionTerm.residuals`, the
  signed square root of Geman-McClure per pixel coordinate (the robust cost itself, so the LM
  energy *is* the energy Adam and L-BFGS minimize and the energies of all three compare);
- the GMM: :meth:`fitkit.priors.GMMPrior.residuals`, the least-energy component's
  Cholesky-whitened residual plus its constant;
- shape and bending: :func:`~fitkit.priors.shape.shape_residuals`,
  :func:`~fitkit.priors.bending.bending_residuals`; the depth prior ``t_z - t0_z``;

each times its stage weight (weights enter the energy squared). For the Jacobian the robust
data terms give their iteratively reweighted form (``sqrt(u) r``, ``u`` Geman-McClure's weight
at the current residual, not differentiated): the same gradient, and a Gauss-Newton matrix in
which far targets keep their curvature (the square-rooted form's Jacobian vanishes for them,
and its steps overshoot: on SPIN's keypoints about half of them were refused); whether a step
is taken is decided on the exact energy. ``theta_b`` is the stage's free parameters of sample b
flattened (82 for SPIN's body stage: 3 + 69 + 10).

Every iteration computes the Jacobians ``J_b``, solves the damped normal equations
``(J^T J + lambda_b D_b) delta = -J^T r`` (``D_b`` Marquardt's diagonal of ``J^T J``, floored)
for all samples with one batched Cholesky, and evaluates the energies of the trial parameters.
The Jacobians come, for 2D reprojection terms with the GMM or no prior (the common case), from
:func:`structured_jacobian`: closed forms through the kinematic chain (:func:`body_jacobian`),
the projection and the priors, no automatic differentiation; for any other term or prior with
residuals, from :func:`jacobian`: forward mode (:func:`torch.func.jvp` under
:func:`torch.func.vmap`, one tangent per parameter; no term couples samples, so one batched
evaluation gives every sample's Jacobian). On the 2-core CPU (one thread) at B = 64, SPIN's
body stage (82 parameters, keypoints + GMM): ~40 ms per Jacobian structured, ~630 ms by
forward mode (``torch.func``'s batching of per-sample matrix products copies them; reverse
mode with batched gradients took ~1.1 s). Per sample, a step that lowers the energy is taken and
``lambda_b`` shrinks; any other (higher, NaN, a failed factorization) is refused, ``theta_b``
kept and ``lambda_b`` raised, without holding back any other sample. A sample whose accepted
step lowers its energy by less than :data:`TOLERANCE` (relative), or whose ``lambda_b`` exceeds
:data:`MAX_DAMPING`, has converged and is not updated again. A sample whose residuals or
Jacobian turn NaN/Inf at its current parameters is frozen at its best iterate and flagged
``nan``, as in the Adam loop. So the energy never rises, each sample's result is that of fitting
it alone, and an iteration of LM is one Jacobian, one solve and one energy evaluation: tens of
iterations, not hundreds (on the CPU the loop stops early once every sample has converged).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeVar

import torch
from torch import Tensor

from fitkit.body import BodyModel, BodyOutput
from fitkit.body.model import PARAM_SIZES
from fitkit.fitting.config import StageConfig
from fitkit.geometry import Camera
from fitkit.geometry.rotations import axis_angle_to_matrix
from fitkit.priors import LatentPosePrior, PosePrior
from fitkit.priors.bending import BENDING_INDICES, BENDING_SIGNS, bending_residuals
from fitkit.priors.shape import shape_residuals
from fitkit.terms import DataTerm, KeypointsTerm, ReprojectionTerm
from fitkit.terms.flow import VertexTargetsTerm

INITIAL_DAMPING = 1e-3
"""``lambda_b`` at the start of a stage."""

DAMPING_DOWN, DAMPING_UP = 1.0 / 3.0, 4.0
"""Factors on ``lambda_b`` after an accepted and a refused step."""

MIN_DAMPING, MAX_DAMPING = 1e-9, 1e8
"""Range of ``lambda_b``; above the maximum a sample counts as converged."""

TOLERANCE = 1e-7
"""Relative energy decrease below which an accepted step ends a sample's iterations."""

EARLY_EXIT_ON_CPU = True
"""On the CPU, stop a stage's iterations once every sample has converged or is frozen (one host
read per iteration, free there). On a GPU the loop never reads a tensor on the host and runs
all its iterations."""

DIAGONAL_FLOOR = 1e-9
"""Marquardt's diagonal is floored at this share of its largest entry (parameters the residuals
do not see still get damped)."""

Residuals = Callable[[Mapping[str, Tensor], bool], dict[str, Tensor]]
"""The stage's residuals of given free parameters ``{name: (B, n)}``, exact or (``True``)
reweighted (:func:`stage_residuals`): ``{term: (B, R_t)}``."""


def check_residual_forms(stage: StageConfig, terms: Mapping[str, DataTerm],
                         prior: PosePrior | None, term_weights: Mapping[str, float]) -> None:
    """Raise ``ValueError`` naming every weighted data term and prior of ``stage`` that has no
    residual form (a ``residuals`` method), so ``optimizer="lm"`` cannot minimize it."""
    missing = [f"data term {name!r} ({type(term).__name__})" for name, term in terms.items()
               if stage.data_weight * term_weights.get(name, 1.0)
               and not callable(getattr(term, "residuals", None))]
    if stage.pose_prior_weight and prior is not None:
        latent = isinstance(prior, LatentPosePrior) and "body_pose" in stage.optimize
        if latent or not callable(getattr(prior, "residuals", None)):
            missing.append(f"pose prior {type(prior).__name__}")
    if missing:
        raise ValueError(
            f"stage {stage.name!r}: optimizer='lm' needs residual forms, and these have none: "
            f"{', '.join(missing)}; use optimizer='adam' or 'lbfgs' for them")


def stage_residuals(
    stage: StageConfig,
    values: Mapping[str, Tensor],
    body_pose: Tensor,
    output: BodyOutput,
    terms: Mapping[str, DataTerm],
    camera: Camera,
    prior: PosePrior | None,
    term_weights: Mapping[str, float],
    anchor_z: Tensor,
    irls: bool = False,
) -> dict[str, Tensor]:
    """The stage's weighted residuals by term name, whose squares sum, per term, to the
    weighted energies of :meth:`fitkit.fitting.SMPLify._energy` (same names); with ``irls``,
    the robust data terms' reweighted form instead (the same gradient, for the Jacobian;
    :meth:`fitkit.terms.ReprojectionTerm.residuals`).

    Args:
        stage: the stage (weights, applied to the residuals unsquared).
        values: the body parameters (``betas`` ``(B, 10)``, ``transl`` ``(B, 3)``, ...).
        body_pose: ``(B, 69)`` the pose the body was evaluated at.
        output: the body evaluated at ``values`` and ``body_pose``.
        terms: the stage's data terms; camera: their cameras (batch B).
        prior: the pose prior (with a ``residuals`` method) or ``None``.
        term_weights: extra weight per data-term name (``FitConfig.term_weights``).
        anchor_z: ``(B,)`` the depth prior's anchor.
        irls: passed to the data terms' ``residuals``.
    Returns:
        ``{name: (B, R_t)}``.
    """
    residuals: dict[str, Tensor] = {}
    for name, term in terms.items():
        weight = stage.data_weight * term_weights.get(name, 1.0)
        if weight:
            residuals[name] = weight * term.residuals(output, camera, irls=irls)
    if stage.pose_prior_weight and prior is not None:
        residuals["pose_prior"] = stage.pose_prior_weight * prior.residuals(body_pose)
    if stage.shape_prior_weight:
        residuals["shape_prior"] = stage.shape_prior_weight * shape_residuals(values["betas"])
    if stage.bending_weight:
        residuals["bending"] = stage.bending_weight * bending_residuals(body_pose)
    if stage.depth_weight:
        residuals["depth"] = stage.depth_weight * (values["transl"][:, 2:] - anchor_z[:, None])
    return residuals


def jacobian(function: Callable[[Tensor], Tensor], theta: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample Jacobians of a function that maps each row of ``theta`` on its own.

    Forward mode: one tangent per parameter, the same for every sample (``function`` must not
    couple rows, so row b of the pushed tangent is sample b's column).

    Args:
        function: ``(B, P)`` -> ``(B, R)``, row b depending on row b only.
        theta: ``(B, P)``.
    Returns:
        ``(B, R, P)`` Jacobians and the ``(B, R)`` residuals at ``theta``.
    """
    count = theta.shape[1]
    tangents = torch.eye(count, dtype=theta.dtype, device=theta.device)[:, None].expand(
        count, theta.shape[0], count)

    def push(tangent: Tensor) -> tuple[Tensor, Tensor]:
        return torch.func.jvp(function, (theta,), (tangent,))

    values, columns = torch.func.vmap(push, out_dims=(None, 0))(tangents)
    return columns.permute(1, 2, 0), values


def skew(vectors: Tensor) -> Tensor:
    """Cross-product matrices ``[v]_x``: ``(..., 3)`` -> ``(..., 3, 3)``."""
    x, y, z = vectors.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).unflatten(-1, (3, 3))


def right_jacobian(axis_angle: Tensor) -> Tensor:
    """SO(3)'s right Jacobian ``J_r``: ``exp(theta + d) = exp(theta) exp(J_r(theta) d)`` to
    first order. ``(..., 3)`` -> ``(..., 3, 3)``."""
    angle = axis_angle.norm(dim=-1)[..., None, None]
    small = angle < 1e-4
    safe = torch.where(small, 1.0, angle)
    first = torch.where(small, 0.5 - angle.square() / 24.0, (1.0 - safe.cos()) / safe.square())
    second = torch.where(small, 1.0 / 6.0 - angle.square() / 120.0,
                         (safe - safe.sin()) / safe**3)
    cross = skew(axis_angle)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    return eye - first * cross + second * (cross @ cross)


def body_jacobian(body: BodyModel, params: Mapping[str, Tensor], vertex_ids: Tensor,
                  free: Sequence[str] = tuple(PARAM_SIZES)) -> tuple[Tensor, Tensor, Tensor,
                                                                     Tensor]:
    """The posed joints and vertices ``vertex_ids`` and their analytic Jacobians with respect
    to the body parameters ``free``, through the kinematic chain (no automatic
    differentiation).

    A rotation ``theta_j`` (axis-angle) turns the world frame of joint ``j`` and of everything
    below it by ``Omega = G_j J_r(theta_j) e_c`` per component ``c`` (``G_j`` the world
    rotation, :func:`right_jacobian`): a joint ``x_k`` below ``j`` moves by
    ``Omega x (x_k - x_j)``, a vertex by the same for its skinning weights below ``j``, plus its
    pose blend shapes' change, blended by its skinning. ``betas`` move the rest joints and the
    shaped vertices; ``transl`` moves everything. Only what ``free`` needs is computed (the
    camera stage's ``global_orient`` and ``transl`` cost a fraction of the body stage's).

    Args:
        body: the body model (SMPL layout, its :mod:`fitkit.body.skinning` arrays).
        params: ``global_orient`` (B, 3), ``body_pose`` (B, 69), ``betas`` (B, 10), ``transl``
            (B, 3).
        vertex_ids: ``(K,)`` long vertex ids.
        free: the parameters whose columns are wanted, in the columns' order.
    Returns:
        The joints ``(B, 24, 3)`` and vertices ``(B, K, 3)`` (as the body's forward pass gives
        them, to float rounding), then their Jacobians ``(B, 24, 3, P)`` and ``(B, K, 3, P)``,
        P the sizes of ``free`` summed.
    """
    skin = body.skinning
    betas = params["betas"].to(body.dtype)
    batch, joints, count = betas.shape[0], len(skin.parents), len(vertex_ids)
    axis_angle = torch.cat([params["global_orient"], params["body_pose"]], dim=-1).to(
        body.dtype).reshape(batch, joints, 3)
    rotation = axis_angle_to_matrix(axis_angle)  # (B, J, 3, 3)
    rest = skin.joint_template + torch.einsum("jcs,bs->bjc", skin.joint_shapedirs, betas)
    world, position = skin.chain(rotation, rest)  # (B, J, 3, 3), (B, J, 3)
    below = _descendants(skin.parents, rotation.device, rotation.dtype)  # (J, J): j over k
    weights = skin.weights[vertex_ids]  # (K, J)
    shaped = skin.v_template[vertex_ids] + torch.einsum(
        "kcs,bs->bkc", skin.shapedirs[vertex_ids], betas)
    pose_dirs = skin.posedirs[:, vertex_ids].reshape(joints - 1, 9, count, 3)
    eye = torch.eye(3, dtype=world.dtype, device=world.device)
    posed = shaped + torch.einsum("jnkx,bjn->bkx", pose_dirs, (rotation[:, 1:] - eye).flatten(2))
    transform_offset = position - (world @ rest[..., None])[..., 0]  # (B, J, 3)
    per_joint = (world[:, None] @ posed[:, :, None, :, None])[..., 0] + transform_offset[:, None]
    # (B, K, J, 3): each joint's transform of each vertex
    blended = torch.einsum("kj,bjxy->bkxy", weights, world)  # (B, K, 3, 3)
    transl = params["transl"].to(body.dtype)[:, None]
    joint_blocks: dict[str, Tensor] = {}
    vertex_blocks: dict[str, Tensor] = {}

    turned = 24 if "body_pose" in free else 1 if "global_orient" in free else 0
    if turned:  # the rotations of the first `turned` joints
        local = right_jacobian(axis_angle[:, :turned])  # (B, T, 3, c)
        omega = (world[:, :turned] @ local).mT  # (B, T, c, 3): the world axis of each column
        offset = position[:, None, :, :] - position[:, :turned, None, :]  # (B, j, k, 3)
        moved = _cross(omega[:, :, None, :, :], offset[:, :, :, None, :])  # (B, j, k, c, 3)
        pose = (moved * below[None, :turned, :, None, None]).permute(0, 2, 4, 1, 3).reshape(
            batch, joints, 3, 3 * turned)
        joint_blocks["global_orient"], joint_blocks["body_pose"] = pose[..., :3], pose[..., 3:]
        below_weighted = below[None, :turned] * weights[:, None, :]  # (K, j, k)
        lever = (torch.einsum("vjk,bvkx->bvjx", below_weighted, per_joint)
                 - below_weighted.sum(-1)[None, ..., None] * position[:, None, :turned])
        rigid = _cross(omega[:, None], lever[..., None, :])  # (B, K, j, c, 3)
        if turned > 1:  # pose blend shapes
            d_rotation = rotation[:, 1:, None] @ skew(local[:, 1:].mT)  # (B, J-1, c, 3, 3)
            d_posed = torch.einsum("jnkx,bjcn->bkjcx", pose_dirs, d_rotation.flatten(-2))
            blend = torch.einsum("bkxy,bkjcy->bkjcx", blended, d_posed)  # (B, K, J-1, c, 3)
            rigid = torch.cat([rigid[:, :, :1], rigid[:, :, 1:] + blend], dim=2)
        pose = rigid.permute(0, 1, 4, 2, 3).reshape(batch, count, 3, 3 * turned)
        vertex_blocks["global_orient"], vertex_blocks["body_pose"] = pose[..., :3], pose[..., 3:]
    if "betas" in free:
        # x_k' = S_0 + sum over the bones above k of G_parent (S_child - S_parent)
        shape_dirs = skin.joint_shapedirs  # (J, 3, S)
        parents = [max(parent, 0) for parent in skin.parents]
        bones = shape_dirs - shape_dirs[parents]
        bones[0] = shape_dirs[0]
        parent_world = world[:, parents]
        parent_world[:, 0] = eye
        joint_blocks["betas"] = torch.einsum("ck,bcxs->bkxs", below, parent_world @ bones)
        vertex_blocks["betas"] = (
            blended @ skin.shapedirs[vertex_ids]
            - torch.einsum("kj,bjxs->bkxs", weights, world @ shape_dirs)
            + torch.einsum("kj,bjxs->bkxs", weights, joint_blocks["betas"]))
    joint_blocks["transl"] = eye.expand(batch, joints, 3, 3)
    vertex_blocks["transl"] = eye.expand(batch, count, 3, 3)
    vertices = (weights[:, :, None] * per_joint).sum(dim=2) + transl
    return (position + transl, vertices, torch.cat([joint_blocks[name] for name in free], -1),
            torch.cat([vertex_blocks[name] for name in free], -1))


STRUCTURED_POINTS = (KeypointsTerm.points, VertexTargetsTerm.points)
"""The ``points`` methods :func:`structured_jacobian` knows to be linear selections of the
body's joints and vertices (so the points' Jacobians are the same selections of theirs)."""


def has_structured_jacobian(terms: Mapping[str, DataTerm], prior: PosePrior | None) -> bool:
    """Whether :func:`structured_jacobian` serves these terms and prior: fitkit's own 2D
    reprojection terms (keypoints, DensePose, flow; a subclass that changes how points are
    picked or scored goes through :func:`jacobian` instead) and no prior or one with
    ``residual_jacobian``."""
    def known(term: DataTerm) -> bool:
        kind = type(term)
        return (isinstance(term, ReprojectionTerm) and kind.points in STRUCTURED_POINTS
                and kind.point_residuals is ReprojectionTerm.point_residuals
                and kind.point_residual_jacobian is ReprojectionTerm.point_residual_jacobian)

    return (all(known(term) for term in terms.values())
            and (prior is None or callable(getattr(prior, "residual_jacobian", None))))


def structured_jacobian(
    stage: StageConfig,
    body: BodyModel,
    values: Mapping[str, Tensor],
    free: Mapping[str, int],
    terms: Mapping[str, DataTerm],
    camera: Camera,
    prior: PosePrior | None,
    term_weights: Mapping[str, float],
    anchor_z: Tensor,
    vertex_ids: Tensor,
) -> tuple[Tensor, Tensor]:
    """The Jacobian of :func:`stage_residuals` (``irls=True``) without automatic
    differentiation: :func:`body_jacobian` for the body points, each 2D term's residuals
    against its points (:meth:`~fitkit.terms.ReprojectionTerm.point_residual_jacobian`), the
    priors' Jacobians in closed form. Equal to :func:`jacobian` of the same residuals to float
    rounding.

    Args:
        stage, terms, camera, prior, term_weights, anchor_z: as for
            :func:`stage_residuals` (terms and prior accepted by
            :func:`has_structured_jacobian`).
        body: the body model.
        values: all four body parameters ``(B, n)``.
        free: the free parameters and their sizes, in the order of the Jacobian's columns.
        vertex_ids: ``(K,)`` the vertices the terms read (all they read).
    Returns:
        ``(B, R, P)`` Jacobians and the ``(B, R)`` residuals (``irls=True``) they belong to.
    """
    params = {name: values[name] for name in PARAM_SIZES}
    joints, vertices, d_joints, d_vertices = body_jacobian(body, params, vertex_ids, list(free))
    batch, count = d_joints.shape[0], d_joints.shape[-1]
    position = torch.full((body.num_vertices,), len(vertex_ids), dtype=torch.long,
                          device=vertex_ids.device)
    position[vertex_ids] = torch.arange(len(vertex_ids), device=vertex_ids.device)
    output = BodyOutput(vertices, joints, body.selector, vertex_ids, position)

    blocks = []
    for name, term in terms.items():
        weight = stage.data_weight * term_weights.get(name, 1.0)
        if not weight:
            continue

        def points_of(joints: Tensor, vertices: Tensor, term: DataTerm = term) -> Tensor:
            return term.points(BodyOutput(vertices, joints, output.selector, vertex_ids,
                                          position))

        points = term.points(output)
        d_points = torch.func.vmap(points_of, in_dims=3, out_dims=3)(
            d_joints, d_vertices)  # (B, N, 3, P): the points are linear in joints, vertices
        d_residual = term.point_residual_jacobian(points, camera)  # (B, N, 2, 3)
        blocks.append(weight * (d_residual @ d_points).flatten(1, 2))
    pose_column = {name: index for index, name in enumerate(free)}

    def block(rows: Tensor, name: str) -> Tensor:
        """``rows`` ``(B, R, n)`` placed in the columns of free parameter ``name``."""
        full = rows.new_zeros(batch, rows.shape[1], count)
        if name in pose_column:
            first = sum(free[other] for other in list(free)[:pose_column[name]])
            full[..., first:first + free[name]] = rows
        return full

    body_pose = values["body_pose"]
    if stage.pose_prior_weight and prior is not None:
        blocks.append(block(stage.pose_prior_weight * prior.residual_jacobian(body_pose),
                            "body_pose"))
    if stage.shape_prior_weight:
        betas = values["betas"]
        eye = torch.eye(betas.shape[1], dtype=betas.dtype, device=betas.device)
        blocks.append(block(stage.shape_prior_weight * eye.expand(batch, -1, -1), "betas"))
    if stage.bending_weight:
        signs = torch.tensor(BENDING_SIGNS, dtype=body_pose.dtype, device=body_pose.device)
        rows = body_pose.new_zeros(batch, len(BENDING_INDICES), body_pose.shape[1])
        index = torch.arange(len(BENDING_INDICES))
        rows[:, index, list(BENDING_INDICES)] = signs * bending_residuals(body_pose)
        blocks.append(block(stage.bending_weight * rows, "body_pose"))
    if stage.depth_weight:
        rows = body_pose.new_zeros(batch, 1, 3)
        rows[..., 2] = stage.depth_weight
        blocks.append(block(rows, "transl"))
    residuals = stage_residuals(stage, values, body_pose, output, terms, camera, prior,
                                term_weights, anchor_z, irls=True)
    return torch.cat(blocks, dim=1), torch.cat(list(residuals.values()), dim=-1)


def term_vertex_ids(body: BodyModel, terms: Mapping[str, DataTerm]) -> Tensor:
    """``(K,)`` the vertices the terms read (:meth:`DataTerm.body_vertices`; all of them when
    one term needs all)."""
    needed = [term.body_vertices(body) for term in terms.values()]
    if any(ids is None for ids in needed):
        return torch.arange(body.num_vertices, device=body.device)
    if not needed:
        return torch.zeros(0, dtype=torch.long, device=body.device)
    return torch.unique(torch.cat([ids.to(body.device) for ids in needed]))


def _cross(first: Tensor, second: Tensor) -> Tensor:
    """Cross products of broadcast ``(..., 3)`` vectors, by components (on the CPU several times
    faster than ``torch.linalg.cross`` with broadcasting)."""
    a0, a1, a2 = first.unbind(-1)
    b0, b1, b2 = second.unbind(-1)
    return torch.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], dim=-1)


@functools.lru_cache(maxsize=16)
def _descendants(parents: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    """``(J, J)``: 1 where joint k is joint j or below it (row j, column k)."""
    count = len(parents)
    below = torch.eye(count, dtype=dtype)
    for joint in range(count):  # parents come before their children
        parent = parents[joint]
        if parent >= 0:
            below[:, joint] += below[:, parent]
    return below.to(device)


def damped_step(jac: Tensor, residual: Tensor, damping: Tensor) -> tuple[Tensor, Tensor]:
    """Levenberg-Marquardt steps of a batch: ``(J^T J + lambda D) delta = -J^T r``.

    Args:
        jac: ``(B, R, P)``; residual: ``(B, R)``; damping: ``(B,)`` ``lambda``.
    Returns:
        ``(B, P)`` steps and ``(B,)`` bool, where the factorization succeeded and the step is
        finite.
    """
    normal = jac.mT @ jac  # (B, P, P)
    gradient = (jac.mT @ residual[..., None])  # (B, P, 1)
    diagonal = normal.diagonal(dim1=-2, dim2=-1)
    floor = DIAGONAL_FLOOR * diagonal.amax(dim=-1, keepdim=True).clamp(min=1e-30)
    damped = normal + torch.diag_embed(damping[:, None] * torch.maximum(diagonal, floor))
    factor, info = torch.linalg.cholesky_ex(damped)
    step = -torch.cholesky_solve(gradient, factor)[..., 0]
    ok = (info == 0) & step.isfinite().all(dim=-1)
    return torch.where(ok[:, None], step, 0.0), ok


class Tracker(Protocol):
    """What the optimizer reports to (``fitkit.fitting.smplify._Tracker``): ``active`` (B,)
    bool, and ``update`` with each iteration's energies ``(B,)``, energies by term and free
    variables."""

    active: Tensor

    def update(self, total: Tensor, terms: dict[str, Tensor], free: dict[str, Tensor],
               with_grad: bool) -> None:
        """Record an iteration (best iterate, NaN flags, freezing)."""


TrackerType = TypeVar("TrackerType", bound=Tracker)


@torch.no_grad()
def levenberg_marquardt(
    residuals: Residuals,
    free: dict[str, Tensor],
    make_tracker: Callable[[Tensor, dict[str, Tensor]], TrackerType],
    iterations: int,
    jacobian_at: Callable[[dict[str, Tensor]], tuple[Tensor, Tensor]] | None = None,
) -> TrackerType:
    """Minimize ``sum ||residuals||^2`` per sample over the free variables (module docstring).

    Args:
        residuals: the stage's residuals of free variables ``{name: (B, n)}``: exact (their
            squares are the energy) or, with ``True``, the reweighted form of the Jacobian.
        free: the free variables at the start, ``{name: (B, n)}``; overwritten in place with
            the last accepted iterate (which is each sample's best).
        make_tracker: builds the stage's tracker from the start energies ``(B,)`` and the
            energies by term ``{name: (B,)}``.
        iterations: LM iterations (each one Jacobian, one solve, one energy evaluation).
        jacobian_at: the ``(B, R, P)`` Jacobian of the reweighted residuals at given free
            variables and those ``(B, R)`` residuals (:func:`structured_jacobian`); ``None``:
            :func:`jacobian` (forward mode through everything).
    Returns:
        The tracker, updated after every iteration.
    """
    names = list(free)
    sizes = [free[name].shape[1] for name in names]
    theta = torch.cat([free[name].detach() for name in names], dim=-1)

    def split(flat: Tensor) -> dict[str, Tensor]:
        return dict(zip(names, flat.split(sizes, dim=-1), strict=True))

    def evaluate(flat: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        parts = residuals(split(flat), False)
        terms = {name: value.square().sum(dim=-1) for name, value in parts.items()}
        if not terms:
            return flat.new_zeros(flat.shape[0]), terms
        return torch.stack(list(terms.values())).sum(dim=0), terms

    def stacked(flat: Tensor) -> Tensor:
        return torch.cat(list(residuals(split(flat), True).values()), dim=-1)

    energy, terms = evaluate(theta)
    tracker = make_tracker(energy, terms)
    if not terms:
        return tracker
    damping = torch.full_like(energy, INITIAL_DAMPING)
    done = torch.zeros_like(tracker.active)
    watch = EARLY_EXIT_ON_CPU and theta.device.type == "cpu"
    for _ in range(iterations):
        if jacobian_at is None:
            jac, residual = jacobian(stacked, theta)
        else:
            jac, residual = jacobian_at(split(theta))
        finite = jac.isfinite().all(dim=-1).all(dim=-1) & residual.isfinite().all(dim=-1)
        step, solved = damped_step(torch.where(finite[:, None, None], jac, 0.0),
                                   torch.where(finite[:, None], residual, 0.0), damping)
        moving = tracker.active & ~done & finite & solved
        trial = theta + torch.where(moving[:, None], step, 0.0)
        trial_energy, trial_terms = evaluate(trial)
        accept = moving & (trial_energy < energy)  # NaN compares False: refused
        decrease = (energy - trial_energy) / energy.abs().clamp(min=1e-30)
        damping = torch.where(accept, damping * DAMPING_DOWN, damping * DAMPING_UP).clamp(
            MIN_DAMPING, 2.0 * MAX_DAMPING)
        done = done | (accept & (decrease < TOLERANCE)) | (damping > MAX_DAMPING)
        theta = torch.where(accept[:, None], trial, theta)
        energy = torch.where(accept, trial_energy, energy)
        terms = {name: torch.where(accept, trial_terms[name], value)
                 for name, value in terms.items()}
        # residuals or Jacobian not finite at the current iterate: the tracker flags and
        # freezes the sample (its best iterate is kept)
        reported = torch.where(finite | ~tracker.active, energy, torch.nan)
        tracker.update(reported, terms, split(theta), with_grad=False)
        if watch and bool((done | ~tracker.active).all()):
            break
    for name, value in split(theta).items():
        free[name].copy_(value)
    return tracker
