"""The reprojection base of the 2D data terms: body points against 2D targets.

Keypoints, DensePose and flow all score a set of body points ``X_bn`` (keypoints or vertices)
against 2D targets ``x_bn``, per sample b::

    E_b = c_b  sum_n  w_bn  sum_{x,y} GM(s_b (P(X_bn) - x_bn); rho)

with ``P`` the camera's projection, ``w_bn`` the per-target weight (0 for targets that do not
count), ``GM`` the Geman-McClure error (:func:`~fitkit.terms.base.geman_mcclure`; the plain
squared error when ``rho`` is ``None``), ``c_b`` a per-sample normalization (1 for keypoints,
``K / N_b`` for dense targets) and ``s_b`` the person-size scale: with ``crop_size`` set,
residuals are measured in pixels of a square crop of that side around the person, the crop box
being 1.2 times the larger side of the bounding box of the used targets (SPIN's and HMR's
crops, seed 003 §4.1's "reprojection loss scaled by the size of the person"). Weights tuned on
SPIN's 224-pixel crops then carry over to full images of any resolution.

The base also estimates a first translation from the targets (similar triangles), once for all
2D terms, and measures how well a fitted body explains its targets for the plausibility flags
(:meth:`ReprojectionTerm.relative_error`, :meth:`ReprojectionTerm.size_ratio`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fitkit.body import BodyOutput
from fitkit.geometry import Camera
from fitkit.terms.base import DataTerm, geman_mcclure

CROP_BOX_SCALE = 1.2
"""Side of the person's crop box over the larger side of the targets' bounding box (SPIN)."""


class ReprojectionTerm(DataTerm):
    """Robust reprojection error of body points against 2D targets (module docstring).

    Subclasses say which body points are scored (:meth:`points`) and call :meth:`set_targets`.

    Attributes:
        targets: ``(B, N, 2)`` pixel targets ``(u, v)`` (0 where unused).
        used: ``(B, N)`` bool, the targets that count.
        weights: ``(B, N)`` per-target weights ``w`` (0 where unused).
        scale: ``(B,)`` person-size scale ``s``.
        rho: Geman-McClure scale in (crop) pixels, or ``None``.
        crop_size: side of the crop the residuals are measured in, or ``None``.
        length_pairs: optional ``(A, B)`` index lists of target pairs whose 2D and 3D lengths
            give the depth of :meth:`estimate_transl` (the keypoints term's torso sides).
        anchor: optional ``(N,)`` bool, the targets whose centroid :meth:`estimate_transl`
            places (when a sample uses any of them; else all used targets).
        face: optional ``(N,)`` bool, the targets that are face points (for BODY_25 the nose,
            eyes and ears), read by the ``facing`` plausibility flag
            (:mod:`fitkit.fitting.plausibility`); ``None`` when unknown (no flag computed).
    """

    targets: Tensor
    used: Tensor
    weights: Tensor
    scale: Tensor
    rho: float | None
    crop_size: float | None
    length_pairs: tuple[list[int], list[int]] | None = None
    anchor: Tensor | None = None
    face: Tensor | None = None

    def set_targets(
        self,
        targets: Tensor,
        used: Tensor,
        weights: Tensor,
        rho: float | None,
        crop_size: float | None,
    ) -> None:
        """Set the targets ``(B, N, 2)``, which count ``(B, N)`` bool, their weights
        ``(B, N)``, and derive ``valid`` and the person-size ``scale``."""
        self.targets = torch.where(used[..., None], targets, 0.0)
        self.used = used
        self.weights = torch.where(used, weights, 0.0)
        self.rho = rho
        self.crop_size = crop_size
        self.valid = used.any(dim=-1)
        self.scale = torch.ones(used.shape[0], dtype=targets.dtype, device=targets.device)
        if crop_size is not None:
            self.scale = crop_size / self.person_size()

    def points(self, body_output: BodyOutput) -> Tensor:
        """``(B, N, 3)`` the body points scored against the targets, camera frame."""
        raise NotImplementedError

    def normalization(self) -> Tensor | None:
        """``(B,)`` factor ``c`` of the energy, or ``None`` for 1."""
        return None

    def person_size(self) -> Tensor:
        """Side of the person's crop box: 1.2 x the larger side of the bounding box of the used
        targets, at least 1 pixel.

        Returns:
            ``(B,)`` pixels.
        """
        inf = torch.finfo(self.targets.dtype).max
        low = torch.where(self.used[..., None], self.targets, inf).amin(dim=1)
        high = torch.where(self.used[..., None], self.targets, -inf).amax(dim=1)
        side = (high - low).amax(dim=-1)
        return (CROP_BOX_SCALE * torch.where(self.valid, side, 0.0)).clamp(min=1.0)

    def energy(self, body_output: BodyOutput, camera: Camera) -> Tensor:
        """Robust reprojection energy (module docstring).

        Args:
            body_output: posed bodies (batch B), camera frame.
            camera: cameras (batch B) in whose pixels the targets are given.
        Returns:
            ``(B,)`` energies, 0 for samples without targets.
        """
        self.check_batch(body_output, camera)
        residual = (self.projected(body_output, camera) - self.targets)
        residual = residual * self.scale[:, None, None]
        error = residual.square() if self.rho is None else geman_mcclure(residual, self.rho)
        energy = torch.where(self.used, error.sum(dim=-1) * self.weights, 0.0).sum(dim=-1)
        norm = self.normalization()
        return energy if norm is None else energy * norm

    def residuals(self, body_output: BodyOutput, camera: Camera, irls: bool = False) -> Tensor:
        """The energy as residuals (Levenberg-Marquardt, :mod:`fitkit.fitting.lm`): per
        target and pixel coordinate ``sqrt(c_b w_bn) psi(s_b r)``.

        ``psi(r) = r`` for the squared error. For the robust one, ``psi(r) = rho r /
        sqrt(rho^2 + r^2)``, the signed square root of Geman-McClure: the squares sum to
        :meth:`energy` exactly. With ``irls``, ``psi(r) = sqrt(u) r`` instead, the
        iteratively reweighted form with ``u = rho^4 / (rho^2 + r^2)^2`` taken at the current
        ``r`` and not differentiated: the same gradient, and a Gauss-Newton matrix that does not
        shrink the far (saturated) targets' curvature to nothing, so its steps do not
        overshoot; its squares are not the energy.

        Args:
            body_output: posed bodies (batch B), camera frame.
            camera: cameras (batch B) in whose pixels the targets are given.
            irls: the reweighted form for the Jacobian (see above).
        Returns:
            ``(B, 2 N)`` residuals, 0 for targets that do not count.
        """
        self.check_batch(body_output, camera)
        return self.point_residuals(self.points(body_output), camera, irls)

    def point_residuals(self, points: Tensor, camera: Camera, irls: bool = False) -> Tensor:
        """:meth:`residuals` of given body points: ``(B, N, 3)`` camera frame -> ``(B, 2 N)``.
        Residuals ``2n, 2n + 1`` depend on point ``n`` only (what a structured Jacobian relies
        on, :func:`fitkit.fitting.lm.structured_jacobian`)."""
        residual = (camera.project(points) - self.targets)
        residual = residual * self.scale[:, None, None]
        if self.rho is not None and irls:
            residual = residual * self._irls_factor(residual.detach())
        elif self.rho is not None:
            residual = self.rho * residual / (self.rho**2 + residual.square()).sqrt()
        residual = torch.where(self.used[..., None],
                               residual * self._residual_weight().sqrt()[..., None], 0.0)
        return residual.flatten(1)

    def point_residual_jacobian(self, points: Tensor, camera: Camera) -> Tensor:
        """The Jacobian of :meth:`point_residuals` (``irls=True``) with respect to each point:
        ``(B, N, 3)`` camera frame -> ``(B, N, 2, 3)`` (pixel coordinate by point coordinate;
        a subclass that changes :meth:`point_residuals` changes this too)."""
        depth = points[..., 2:3]
        focal = camera.focal_length[:, None, :]  # (B, 1, 2)
        xy = points[..., :2] / depth  # (B, N, 2)
        factor = self.scale[:, None, None] * torch.where(
            self.used[..., None], self._residual_weight().sqrt()[..., None], 0.0)
        if self.rho is not None:
            residual = (xy * focal + camera.principal_point[:, None, :] - self.targets)
            factor = factor * self._irls_factor(residual * self.scale[:, None, None])
        scaled = (factor * focal / depth)  # (B, N, 2): d r / d (x, y) of the 3D point
        zero = torch.zeros_like(depth[..., 0])
        rows = [torch.stack([scaled[..., 0], zero, -scaled[..., 0] * xy[..., 0]], dim=-1),
                torch.stack([zero, scaled[..., 1], -scaled[..., 1] * xy[..., 1]], dim=-1)]
        return torch.stack(rows, dim=-2)

    def _irls_factor(self, residual: Tensor) -> Tensor:
        """``sqrt(u) = rho^2 / (rho^2 + r^2)``, Geman-McClure's reweighting of residuals ``r``
        (person-size scaled pixels), element-wise."""
        return self.rho**2 / (self.rho**2 + residual.square())

    def _residual_weight(self) -> Tensor:
        """``(B, N)`` ``c_b w_bn``: what each target's squared error is multiplied by."""
        weight = torch.where(self.used, self.weights, 0.0).clamp(min=0.0)
        norm = self.normalization()
        return weight if norm is None else weight * norm[:, None]

    def projected(self, body_output: BodyOutput, camera: Camera) -> Tensor:
        """``(B, N, 2)`` the body points (:meth:`points`) in the cameras' pixels: what the
        energy and the plausibility measures compare with the targets."""
        return camera.project(self.points(body_output))

    def relative_error(self, body_output: BodyOutput, camera: Camera) -> Tensor:
        """Median 2D distance between the projected body points and their targets, over the
        person's height in the image.

        The median runs over the targets that count (used, with a weight above 0); the height
        is the larger side of the bounding box of the used targets (a standing person's height;
        :meth:`person_size` without its 1.2 margin). Scale-free: 0.05 is 5 % of the height at
        any resolution (the ``reprojection`` flag, :mod:`fitkit.fitting.plausibility`).

        Args:
            body_output: posed bodies (batch B), camera frame.
            camera: cameras (batch B) in whose pixels the targets are given.
        Returns:
            ``(B,)`` relative errors, NaN for samples without a target that counts.
        """
        self.check_batch(body_output, camera)
        distance = (self.projected(body_output, camera) - self.targets).norm(dim=-1)
        counted = self.used & (self.weights > 0)
        median = torch.where(counted, distance, torch.nan).nanmedian(dim=1).values
        return median / (self.person_size() / CROP_BOX_SCALE)

    def size_ratio(self, body_output: BodyOutput, camera: Camera) -> Tensor:
        """How large the projected body is against the targets: the spread of the projected
        points over that of their targets (the ``depth`` flag,
        :mod:`fitkit.fitting.plausibility`).

        The spread of a point set is the RMS distance of its points to their centroid, over
        the targets that count (used, weight above 0). Under a pinhole camera the projected
        size scales with 1 / depth, so a body placed twice as far as the image says gives
        about 0.5, one twice as near about 2, whatever its pose. Every point takes part, so
        the 2D error of one point moves it little (one far outlier among the targets does
        enlarge their spread).

        Args:
            body_output: posed bodies (batch B), camera frame.
            camera: cameras (batch B) in whose pixels the targets are given.
        Returns:
            ``(B,)`` ratios, NaN for samples with fewer than 3 targets that count.
        """
        self.check_batch(body_output, camera)
        counted = self.used & (self.weights > 0)
        ratio = (_spread(self.projected(body_output, camera), counted)
                 / _spread(self.targets, counted))
        return torch.where(counted.sum(dim=-1) >= 3, ratio, torch.nan)

    def estimate_transl(self, body_output: BodyOutput, camera: Camera) -> Tensor:
        """SMPLify's initial translation, from similar triangles.

        Depth: focal length times the ratio of a length on the body to its length in the image:
        the :attr:`length_pairs` whose two targets are used (the keypoints' torso sides), else
        the RMS spread of the used targets around their centroid (3D x-y vs. 2D), else a 2 m
        body spanning the image height. Then ``x, y`` put the centroid of the used
        :attr:`anchor` targets (of all used targets if the sample uses none of them) on its
        target position; a sample without used targets is centred on the principal point.

        Args:
            body_output: the initial bodies posed with zero translation (batch B).
            camera: the cameras (batch B).
        Returns:
            ``(B, 3)`` translations.
        """
        self.check_batch(body_output, camera)
        points = self.points(body_output).detach()
        targets, used = self.targets.to(points.dtype), self.used
        focal = camera.focal_length.mean(dim=-1)
        length_2d = length_3d = points.new_zeros(points.shape[0])
        if self.length_pairs is not None:
            first, second = self.length_pairs
            sides = (used[:, first] & used[:, second]).to(points.dtype)
            length_2d = ((targets[:, first] - targets[:, second]).norm(dim=-1) * sides).sum(-1)
            length_3d = ((points[:, first] - points[:, second]).norm(dim=-1) * sides).sum(-1)
        spread_2d = _spread(targets, used)
        spread_3d = _spread(points[..., :2], used)
        ratio = torch.where(
            length_2d > 0,
            length_3d / length_2d.clamp(min=1e-9),
            torch.where(
                spread_2d > 0,
                spread_3d / spread_2d.clamp(min=1e-9),
                2.0 / camera.image_size[:, 1],
            ),
        )
        depth = focal * ratio
        anchor = used
        if self.anchor is not None:
            preferred = used & self.anchor.to(used.device)
            anchor = torch.where(preferred.any(dim=-1, keepdim=True), preferred, used)
        anchor = anchor.to(points.dtype)
        count = anchor.sum(dim=-1, keepdim=True)
        center_2d = torch.where(
            count > 0,
            (targets * anchor[..., None]).sum(dim=1) / count.clamp(min=1),
            camera.principal_point,
        )
        center_3d = torch.where(
            count > 0,
            (points * anchor[..., None]).sum(dim=1) / count.clamp(min=1),
            body_output.vertices.detach().mean(dim=1),
        )
        xy = (center_2d - camera.principal_point) / camera.focal_length * depth[:, None]
        return torch.cat([xy - center_3d[:, :2], (depth - center_3d[:, 2])[:, None]], dim=-1)


def _spread(points: Tensor, used: Tensor) -> Tensor:
    """RMS distance of the used points to their centroid: ``(B, K, D)``, ``(B, K)`` -> ``(B,)``."""
    weight = used.to(points.dtype)[..., None]
    count = weight.sum(dim=1).clamp(min=1)
    center = (points * weight).sum(dim=1) / count
    return (((points - center[:, None]).square() * weight).sum(dim=(1, 2)) / count[:, 0]).sqrt()

