"""The flow data term (seed 003, Eq. 5-7): per-visible-vertex 2D targets from displacements.

A displacement network (or the exact field, :func:`exact_displacements`) gives a 2D displacement
``d(p)`` for every pixel ``p`` of the render of the initial mesh. Per vertex, the displacements
of the pixels whose visible triangle has the vertex as a corner are averaged with the vertex's
barycentric weights (Eq. 5, :func:`fitkit.render.pixel_to_vertex`); the target of vertex ``i``
is the projection of its initial position plus that displacement (Eq. 6)::

    x_bi = P(v_bi^init) + d_bi

and only vertices visible in the initial render (``m_bi = 1``) count. The energy of sample b
(Eq. 7, in the form of the keypoints term)::

    E_b = (K / N_b)  sum_i m_bi  sum_{x,y} GM(s_b (P(v_bi) - x_bi); rho)

with ``N_b = sum_i m_bi`` the number of targets, ``K`` = ``reference_points`` (25) and ``s_b``
the person-size scale of :mod:`fitkit.terms.keypoints` (``crop_size`` = 224: residuals in pixels
of a 224-pixel crop, the crop box 1.2 times the larger side of the targets' bounding box). The
energy is thus the mean robust error per target times 25: a fit whose targets are off by as many
(crop) pixels as a keypoint fit's keypoints has the same energy, whatever the number of targets,
so the weights of the keypoints term carry over.

:class:`VertexTargetsTerm` is this machinery for any list of (vertex, 2D target) pairs; the
DensePose term (:mod:`fitkit.terms.densepose`) builds on it too.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fitkit.body import BodyModel, BodyOutput
from fitkit.geometry import Camera
from fitkit.io.inputs import FitInputError, read_displacements
from fitkit.io.params import PARAM_SIZES
from fitkit.render import displacement_field, pixel_to_vertex, rasterize
from fitkit.terms.base import TermContext, register_term
from fitkit.terms.reprojection import ReprojectionTerm

TORSO_PARTS: tuple[int, ...] = (1, 2)
"""DensePose parts of the torso (back, front): what the camera stage of a dense term fits."""

REFERENCE_POINTS = 25.0
"""Default ``K``: a dense term weighs as much as 25 keypoints with its mean error per target."""


class VertexTargetsTerm(ReprojectionTerm):
    """Robust reprojection error of body vertices against 2D targets (module docstring).

    Args:
        vertex: ``(B, N)`` long, the body vertex of each target.
        targets: ``(B, N, 2)`` pixel positions ``(u, v)``.
        used: ``(B, N)`` bool, the targets that count (``m``).
        num_vertices: V, vertices of the body the indices refer to.
        parts: ``(B, N)`` DensePose part (1-24) of each target, or ``None`` when unknown; the
            torso view keeps the targets of :data:`TORSO_PARTS` (all targets when ``None``).
        rho: Geman-McClure scale in (crop) pixels; ``None`` for the plain squared error.
        crop_size: measure residuals in pixels of a crop of this side around the targets;
            ``None`` for image pixels.
        reference_points: ``K``, the energy is ``K`` times the mean error per target.
    """

    def __init__(
        self,
        vertex: Tensor,
        targets: Tensor,
        used: Tensor,
        num_vertices: int,
        parts: Tensor | None = None,
        rho: float | None = 100.0,
        crop_size: float | None = 224.0,
        reference_points: float = REFERENCE_POINTS,
    ) -> None:
        used = used & targets.isfinite().all(dim=-1)
        self.vertex = anchored(vertex, used)
        self.num_vertices = num_vertices
        self.parts = parts
        self.reference_points = reference_points
        self.set_targets(targets, used, used.to(targets.dtype), rho, crop_size)

    @property
    def num_targets(self) -> Tensor:
        """``(B,)`` long, the targets that count per sample."""
        return self.used.sum(dim=-1)

    def normalization(self) -> Tensor:
        """``(B,)`` ``K / N_b``: the energy is ``K`` times the mean error per target."""
        return self.reference_points / self.num_targets.clamp(min=1)

    def check_vertices(self, body_output: BodyOutput) -> None:
        """Raise ``ValueError`` unless the body has the vertices the targets refer to."""
        count = (body_output.vertices.shape[1] if body_output.vertex_position is None
                 else body_output.vertex_position.shape[0])
        if count != self.num_vertices:
            raise ValueError(
                f"{type(self).__name__}: targets refer to a body of {self.num_vertices} "
                f"vertices, the body output has {count}"
            )

    def points(self, body_output: BodyOutput) -> Tensor:
        """``(B, N, 3)`` the targeted vertices."""
        self.check_vertices(body_output)
        return body_output.vertices_at(self.vertex)

    def body_vertices(self, body: BodyModel) -> Tensor:
        """The vertices that have a target in some sample (the flow and DensePose terms read
        only those)."""
        return torch.unique(self.vertex)  # the used ones (the others are anchored to one)

    def torso(self) -> VertexTargetsTerm:
        """The camera stage's view: the targets on :data:`TORSO_PARTS` (all targets when parts
        are unknown), plain squared error (as the keypoints term's torso view), the same
        person-size scale."""
        view = copy.copy(self)
        view.rho = None
        if self.parts is not None:
            torso = torch.isin(self.parts, torch.tensor(TORSO_PARTS, device=self.parts.device))
            view.used = self.used & torso
            view.vertex = anchored(self.vertex, view.used)
            view.weights = torch.where(view.used, self.weights, 0.0)
            view.valid = view.used.any(dim=-1)
        return view


def used_first(used: Tensor) -> Tensor:
    """``(B, N')`` the slots of ``used`` ``(B, N)`` to keep: each row's used slots first (in
    order), ``N'`` the most any row uses (at least 1)."""
    count = max(int(used.sum(dim=-1).max()) if used.numel() else 0, 1)
    return torch.argsort((~used).to(torch.uint8), dim=-1, stable=True)[:, :count]


def anchored(vertex: Tensor, used: Tensor) -> Tensor:
    """``vertex`` ``(B, N)`` with the targets that do not count (``used`` ``(B, N)`` False)
    pointed at one that does (vertex 0 when none does), so that a body evaluated only at the
    targeted vertices (:meth:`VertexTargetsTerm.body_vertices`) has every vertex the term
    gathers."""
    anchor = vertex[used][:1] if bool(used.any()) else vertex.new_zeros(1)
    return torch.where(used, vertex, anchor)


@register_term("flow")
class FlowTerm(VertexTargetsTerm):
    """Seed 003's dense displacement term (module docstring), built from either

    (a) per-pixel displacements of the render of the initial mesh: ``displacements``,
        ``init_vertices``, ``camera`` and ``faces`` (or ``body``, whose faces are used), or
    (b) per-vertex targets: ``targets`` and ``visible``.

    ``build_term("flow", ...)`` takes the same keywords; :meth:`from_displacements` and
    :meth:`from_targets` spell the two forms out.

    Args:
        targets: (b) ``(B, V, 2)`` target pixel position of every vertex; non-finite rows do
            not count.
        visible: (b) ``(B, V)`` bool, the vertices that count (visible in the initial render).
        displacements: (a) ``(B, 2, H, W)`` or ``(B, H, W, 2)`` per-pixel 2D displacements
            ``(du, dv)`` in pixels, on the initial mesh's render; ``(H, W)`` must be the camera's
            image size. Values on pixels the mesh does not cover are ignored.
        init_vertices: (a) ``(B, V, 3)`` initial vertices in the camera frame.
        faces: (a) ``(F, 3)`` triangles (default: ``body.faces``).
        camera: (a) the cameras of the images (batch B or 1).
        body: optional body model: its faces for (a), and its DensePose parts ``dp_I`` for the
            torso view (vertices of parts 1-2; all vertices without labels).
        backend: (a) rasterizer backend for the initial render.
        rho, crop_size, reference_points: as :class:`VertexTargetsTerm` (100 px, 224 px, 25).
    Raises:
        ValueError: neither or both forms given, or inputs of the wrong shape.

    The term keeps a slot only for the vertices that count (``vertex``, ``targets``, ``used``
    are ``(B, N)``, each sample's in vertex order, N the most any sample has: a few hundred to a
    few thousand of V); :meth:`per_vertex` gives them per vertex again.

    Input: ``fit(..., displacements=...)``, form (a) ``(B, 2, H, W)`` / ``(B, H, W, 2)`` arrays
    (with the initial parameters they were predicted on) or form (b)
    ``{"targets": (B, V, 2), "visible": (B, V)}``. Dataset folders do not hold displacements:
    ``refine`` predicts them with the displacement network, or takes the exact field.
    """

    keyword = "displacements"

    @classmethod
    def read(cls, value: Any, errors: list[str] | None = None) -> Any:
        """Form (a) or (b) as given, shapes checked
        (:func:`fitkit.io.inputs.read_displacements`)."""
        return read_displacements(value)

    @classmethod
    def from_observations(cls, observations: Any, context: TermContext) -> FlowTerm:
        """Form (b) from a ``{"targets", "visible"}`` dict; form (a) from per-pixel
        displacements rendered at the initial bodies of ``context.init``.

        Raises:
            FitInputError: per-pixel displacements without all initial parameters.
        """
        if isinstance(observations, Mapping):
            return cls(targets=observations["targets"], visible=observations["visible"],
                       body=context.body, **context.options)
        missing = [key for key in PARAM_SIZES if key not in context.init]
        if missing:
            raise FitInputError(
                "data_term='flow' with per-pixel displacements needs the initial parameters "
                f"they were predicted on (init=...; missing {', '.join(missing)})"
            )
        with torch.no_grad():
            vertices = context.body(**{key: context.init[key] for key in PARAM_SIZES}).vertices
        return cls(displacements=observations, init_vertices=vertices, camera=context.camera,
                   body=context.body, **context.options)

    def __init__(
        self,
        targets: Tensor | np.ndarray | None = None,
        visible: Tensor | np.ndarray | None = None,
        displacements: Tensor | np.ndarray | None = None,
        init_vertices: Tensor | np.ndarray | None = None,
        faces: Tensor | np.ndarray | None = None,
        camera: Camera | None = None,
        body: BodyModel | None = None,
        backend: str = "torch",
        rho: float | None = 100.0,
        crop_size: float | None = 224.0,
        reference_points: float = REFERENCE_POINTS,
    ) -> None:
        vertex_form = {"targets": targets, "visible": visible}
        pixel_form = {
            "displacements": displacements,
            "init_vertices": init_vertices,
            "camera": camera,
        }
        given = [name for name, value in {**vertex_form, **pixel_form}.items() if value is not None]
        per_pixel = all(value is not None for value in pixel_form.values())
        per_vertex = all(value is not None for value in vertex_form.values())
        if len(given) != (3 if per_pixel else 2) or not (per_pixel or per_vertex):
            raise ValueError(
                "flow term: give either targets= and visible= (per-vertex targets) or "
                "displacements=, init_vertices=, camera= and faces= or body= (per-pixel "
                f"displacements); given: {given}"
            )
        if per_pixel:
            if faces is None:
                if body is None:
                    raise ValueError("flow term: displacements need faces= or body=")
                faces = body.faces
            targets, visible = displacement_targets(
                _float_tensor(displacements),
                _float_tensor(init_vertices),
                torch.as_tensor(faces),
                camera,
                backend,
            )
        targets = _float_tensor(targets)
        visible = torch.as_tensor(visible, device=targets.device)
        if targets.ndim != 3 or targets.shape[-1] != 2:
            raise ValueError(
                f"flow term: targets must have shape (B, V, 2), got {tuple(targets.shape)}"
            )
        if visible.shape != targets.shape[:2] or visible.dtype != torch.bool:
            raise ValueError(
                f"flow term: visible must be bool of shape {tuple(targets.shape[:2])} "
                f"(B, V), got {visible.dtype} {tuple(visible.shape)}"
            )
        batch, count = visible.shape
        parts = None
        if body is not None and body.dp_I is not None:
            if body.num_vertices != count:
                raise ValueError(
                    f"flow term: {count} vertex targets for a body of {body.num_vertices} vertices"
                )
            parts = body.dp_I.to(device=targets.device, dtype=torch.long).expand(batch, count)
        vertex = torch.arange(count, device=targets.device).expand(batch, count)
        # only the slots of visible vertices are kept (a few hundred to a few thousand of 7,000)
        visible = visible & targets.isfinite().all(dim=-1)
        keep = used_first(visible)
        vertex, visible = vertex.gather(1, keep), visible.gather(1, keep)
        targets = targets.gather(1, keep[..., None].expand(-1, -1, 2))
        parts = None if parts is None else parts.gather(1, keep)
        super().__init__(
            vertex,
            targets,
            visible,
            count,
            parts=parts,
            rho=rho,
            crop_size=crop_size,
            reference_points=reference_points,
        )

    def per_vertex(self) -> tuple[Tensor, Tensor]:
        """The targets ``(B, V, 2)`` (0 where a vertex does not count) and which vertices count
        ``(B, V)`` bool, in the body's vertex order."""
        batch, count = self.vertex.shape[0], self.num_vertices
        # unused slots point at a counted vertex (anchored): send them to a spare row instead,
        # so that every scatter below writes each vertex at most once
        index = torch.where(self.used, self.vertex, count)
        used = self.used.new_zeros(batch, count + 1).scatter(1, index, self.used)[:, :-1]
        targets = self.targets.new_zeros(batch, count + 1, 2).scatter(
            1, index[..., None].expand(-1, -1, 2), self.targets)[:, :-1]
        return targets, used

    @classmethod
    def from_targets(
        cls,
        targets: Tensor | np.ndarray,
        visible: Tensor | np.ndarray,
        body: BodyModel | None = None,
        **options: float | None,
    ) -> FlowTerm:
        """The term of per-vertex targets ``(B, V, 2)`` and visibility ``(B, V)`` (form (b));
        ``options``: ``rho``, ``crop_size``, ``reference_points``."""
        return cls(targets=targets, visible=visible, body=body, **options)

    @classmethod
    def from_displacements(
        cls,
        displacements: Tensor | np.ndarray,
        init_vertices: Tensor | np.ndarray,
        camera: Camera,
        faces: Tensor | np.ndarray | None = None,
        body: BodyModel | None = None,
        **options: float | str | None,
    ) -> FlowTerm:
        """The term of per-pixel displacements on the initial render (form (a));
        ``options``: ``backend``, ``rho``, ``crop_size``, ``reference_points``."""
        return cls(
            displacements=displacements,
            init_vertices=init_vertices,
            camera=camera,
            faces=faces,
            body=body,
            **options,
        )


def displacement_targets(
    displacements: Tensor,
    init_vertices: Tensor,
    faces: Tensor,
    camera: Camera,
    backend: str = "torch",
) -> tuple[Tensor, Tensor]:
    """Per-vertex targets from per-pixel displacements (seed 003, Eq. 5-6).

    Renders the initial mesh, averages the displacements onto the vertices of the visible
    triangles (:func:`fitkit.render.pixel_to_vertex`) and adds them to the vertices' projections.

    Args:
        displacements: ``(B, 2, H, W)`` or ``(B, H, W, 2)`` pixels; ``(H, W)`` the camera's
            image size.
        init_vertices: ``(B, V, 3)`` camera frame; faces: ``(F, 3)``; camera: batch B or 1.
        backend: rasterizer backend.
    Returns:
        ``targets`` ``(B, V, 2)`` (0 where not visible) and ``visible`` ``(B, V)`` bool.
    Raises:
        ValueError: shapes that disagree with each other or with the camera's image size.
    """
    if init_vertices.ndim != 3 or init_vertices.shape[-1] != 3:
        raise ValueError(
            f"flow term: init_vertices must have shape (B, V, 3), got {tuple(init_vertices.shape)}"
        )
    sizes = camera.image_size.unique(dim=0)
    if len(sizes) != 1:
        raise ValueError("flow term: the cameras must share one image size")
    width, height = (int(value) for value in sizes[0].tolist())
    batch = init_vertices.shape[0]
    if displacements.ndim == 4 and displacements.shape == (batch, 2, height, width):
        field = displacements.permute(0, 2, 3, 1)
    elif displacements.ndim == 4 and displacements.shape == (batch, height, width, 2):
        field = displacements
    else:
        raise ValueError(
            f"flow term: displacements must have shape (B, 2, H, W) or (B, H, W, 2) with "
            f"B = {batch} (init_vertices) and (H, W) = ({height}, {width}) (camera image size), "
            f"got {tuple(displacements.shape)}"
        )
    faces = faces.to(device=init_vertices.device, dtype=torch.long)
    camera = camera.to(device=init_vertices.device, dtype=init_vertices.dtype)
    with torch.no_grad():
        init_vertices = init_vertices.detach()
        fragments = rasterize(init_vertices, faces, camera, (height, width), backend=backend)
        per_vertex = pixel_to_vertex(field, faces, fragments, init_vertices.shape[1])
        targets = camera.project(init_vertices) + per_vertex.values
    return torch.where(per_vertex.valid[..., None], targets, 0.0), per_vertex.valid


def exact_displacements(
    body: BodyModel,
    gt_params: Mapping[str, Tensor],
    init_params: Mapping[str, Tensor],
    camera: Camera,
    image_size: tuple[int, int] | None = None,
    backend: str = "torch",
) -> Tensor:
    """The exact ("ground-truth") per-pixel displacement field between two parameter sets
    (seed 003, Eq. 1-2), for upper-bound experiments and training targets.

    Per vertex ``D_i = P(v_i^gt) - P(v_i^init)`` (Eq. 1); per pixel of the render of the
    initial mesh, the barycentric interpolation of ``D`` over its visible triangle (Eq. 2,
    :func:`fitkit.render.displacement_field`).

    Args:
        body: the body model.
        gt_params, init_params: body parameters (``global_orient``, ``body_pose``, ``betas``,
            ``transl``; missing ones zero), batch B.
        camera: the cameras (batch B or 1).
        image_size: ``(H, W)``; default the camera's image size.
        backend: rasterizer backend.
    Returns:
        ``(B, 2, H, W)`` displacements ``(du, dv)`` in pixels, 0 on pixels the initial mesh does
        not cover.
    """
    with torch.no_grad():
        camera = camera.to(device=body.device, dtype=body.dtype)
        return displacement_field(body(**gt_params).vertices, body(**init_params).vertices,
                                  body.faces, camera, image_size=image_size, backend=backend)


def _float_tensor(value: Tensor | np.ndarray) -> Tensor:
    """``value`` as a floating tensor (integer input in the default dtype)."""
    tensor = torch.as_tensor(value)
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    return tensor
