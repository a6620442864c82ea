"""ReFit behind the solver seam: ``ReFitSolver.solve(batch) -> FitResult``.

The learned optimizer (:class:`fitkit.nets.refit.ReFit`) reads each image's crop around the
person and runs T feedback-update steps. The crop box (:func:`fitkit.geometry.crop_boxes`, fill
:data:`fitkit.geometry.crop.CROP_FILL`, kept inside the image) is the square around

1. the projection of the initial body, when ``init`` holds all four parameters;
2. else the confident keypoints, when the batch has a ``keypoints`` observation;
3. else the whole image (the square around it).

With ``init`` the loop starts from it (any subset of the parameters; the others come from the
network's own guess), else from the network's guess ``Θ_0``. The result is in the full image's
camera frame (``transl`` from the weak-perspective camera through the full-frame formulas).

Energy: with a ``keypoints`` observation, the keypoints data term's energy
(:class:`fitkit.terms.keypoints.KeypointsTerm`, a robust 2D reprojection error, the one SMPLify
minimises) at the result, reported as ``terms["keypoints"]``; without it the energy is 0 (ReFit
minimises no explicit energy) and ``terms`` is empty. Flags: ``nan`` for a non-finite result,
``no_data`` for a blank image (all one value) with no init.

**Groups** (:class:`fitkit.fitting.SampleGroup`, seed 001 §3.5). Every row is one image with
its own camera, and ``init`` rows are always that image's camera-frame estimate.

- *Multi-view ReFit* (``shares="all"``, ``multiview="pool"``, Fig. 4): ReFit runs on every view
  and after every update (and on ``Θ_0``) the group's estimates are pooled into one body by
  :func:`fitkit.fitting.groups.pool_rows` (SMPLify's multi-view initialisation too): each view's
  global orientation and full-frame translation
  (:func:`fitkit.geometry.weak_perspective_to_full_frame`) taken to the world frame through its
  extrinsics (:func:`fitkit.geometry.camera_to_world_params`, about the view's own rest root
  joint) and averaged there (chordal mean, :func:`fitkit.geometry.average_world_params`); each
  body joint's rotation averaged (chordal mean); betas averaged. The one body goes back into
  every view (:func:`fitkit.geometry.world_to_camera_params`) and each view's weak-perspective
  crop camera is re-derived from it (:func:`fitkit.geometry.full_frame_to_weak_perspective`), so
  the next feedback reprojects the pooled body. A view's 6D rotations are turned onto the pooled
  ones (left-multiplied by ``R_pooled R_view^T``, which Gram-Schmidt commutes with,
  :func:`turn_rot6d`), so each view keeps its own 6D magnitudes and pooling identical views
  changes nothing. Each view keeps its own recurrent state. ``multiview="average_final"`` is the
  baseline: ReFit on each view alone, the same pooling once on the final estimates.
- ``shares="betas"`` (several images of one subject): the betas are averaged at every
  iteration (``"pool"``) or once at the end (``"average_final"``).
- *Shape ReFit* (a group with ``betas``, also of one sample; ``shape="feedback"``): the known
  shape replaces the predicted one on ``Θ_0`` and after every update, so the feedback shows the
  true shape and the loop moves only pose and camera; the result's betas are the given ones.
  ``shape="substitute"`` is the baseline: ReFit as usual, the known shape put in place of the
  predicted one at the end (pose and translation kept).

With extrinsics on the batch camera the result is in the world frame (``global_orient``,
``transl``, ``vertices``, ``joints``), the rows of one ``"all"`` group identical (take
``group.indices[0]`` for one row per subject); the keypoints energy is still per view (the body
moved into each view). Without extrinsics every camera is at the world origin.
"""

from __future__ import annotations

import dataclasses
import os
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fitkit.body import BodyModel
from fitkit.fitting.groups import GroupLayout, pool_rows, rest_root
from fitkit.fitting.result import FitResult
from fitkit.fitting.solver import FitBatch, build_terms
from fitkit.geometry.crop import crop_boxes, crop_images
from fitkit.geometry.frames import world_to_camera_params
from fitkit.geometry.fullframe import (
    full_frame_to_weak_perspective,
    weak_perspective_to_full_frame,
)
from fitkit.geometry.rotations import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    rot6d_to_matrix,
)
from fitkit.io.params import PARAM_SIZES
from fitkit.nets.checkpoint import REFIT_KIND, load_network
from fitkit.nets.refit import NUM_JOINTS, Constraint, CropInfo, ReFit

SHIPPED_REFIT = "refit_open.pt"
"""The shipped ReFit network in ``fitkit/nets/data`` (``refit_net="auto"``)."""
MULTIVIEW_MODES: tuple[str, ...] = ("pool", "average_final")
"""How the views of a ``shares="all"`` group become one body: pooled at every iteration
(multi-view ReFit, seed 001 Fig. 4) or ReFit on each view and its final estimates averaged."""
SHAPE_MODES: tuple[str, ...] = ("feedback", "substitute")
"""How a group's known betas are used: in place of the prediction at every iteration (Shape
ReFit) or put in place of the final prediction."""


def refit_path(name: str | os.PathLike) -> Path:
    """The checkpoint of ``"auto"`` (the shipped network) or a path.

    Raises:
        FileNotFoundError: no such file (named).
    """
    if isinstance(name, str) and name in ("auto", "open"):
        path = Path(str(resources.files("fitkit.nets") / "data" / SHIPPED_REFIT))
    else:
        path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"ReFit checkpoint not found: {path}")
    return path


def known_betas(layout: GroupLayout, betas: Tensor) -> Tensor:
    """``(B, 10)`` betas with the groups' known shapes in place of their rows."""
    if layout.fixed_betas is None:
        return betas
    fixed = layout.fixed_betas[layout.index["betas"]].to(betas)
    return torch.where(fixed.isnan(), betas, fixed)


def _extrinsics(crop: CropInfo) -> tuple[Tensor, Tensor]:
    """``(B, 3, 3)`` and ``(B, 3)`` world -> camera rotations and translations of the crops'
    cameras (identity and zero where absent)."""
    camera, batch = crop.camera, crop.camera.batch_size
    dtype, device = camera.focal_length.dtype, camera.device
    R = camera.R if camera.R is not None else torch.eye(3, dtype=dtype, device=device).expand(
        batch, 3, 3)
    t = camera.t if camera.t is not None else torch.zeros(batch, 3, dtype=dtype, device=device)
    return R.to(dtype), t.to(dtype)


def turn_rot6d(rot6d: Tensor, turn: Tensor) -> Tensor:
    """Left-multiply 6D rotations by rotation matrices, keeping the 6D's own magnitudes.

    Gram-Schmidt commutes with a rotation ``Q`` (``GS(Q A) = Q GS(A)``), so the result maps to
    ``turn @ rot6d_to_matrix(rot6d)`` exactly.

    Args:
        rot6d: ``(..., 6)`` 6D rotations (fitkit's layout).
        turn: ``(..., 3, 3)`` rotation matrices.
    Returns:
        ``(..., 6)``.
    """
    return (turn @ rot6d.unflatten(-1, (3, 2))).flatten(-2)


class ReFitSolver:
    """The ReFit learned optimizer as a :class:`~fitkit.fitting.Solver` (see the module doc).

    Args:
        body: the body model the network drives (the one it was trained with).
        net: ``"auto"`` (the shipped open network), a checkpoint path or a :class:`ReFit`.
        iterations: T (default the network's training T).
        multiview: how the views of a ``shares="all"`` group become one body
            (:data:`MULTIVIEW_MODES`): ``"pool"`` at every iteration (multi-view ReFit) or
            ``"average_final"`` (ReFit on each view, the final estimates averaged).
        shape: how a group's known betas are used (:data:`SHAPE_MODES`): ``"feedback"`` at
            every iteration (Shape ReFit) or ``"substitute"`` (in place of the final prediction).
    Raises:
        FileNotFoundError, CheckpointError: a missing or bad checkpoint.
        ValueError: a network whose keypoints the body does not have, an unknown mode.
    """

    def __init__(self, body: BodyModel, net: ReFit | str | os.PathLike = "auto",
                 iterations: int | None = None, multiview: str = "pool",
                 shape: str = "feedback") -> None:
        if multiview not in MULTIVIEW_MODES:
            raise ValueError(f"multiview must be one of {', '.join(MULTIVIEW_MODES)}, got "
                             f"{multiview!r}")
        if shape not in SHAPE_MODES:
            raise ValueError(f"shape must be one of {', '.join(SHAPE_MODES)}, got {shape!r}")
        if not isinstance(net, ReFit):
            net = load_network(refit_path(net), REFIT_KIND)
        if iterations is not None and iterations < 0:
            raise ValueError(f"refit_iterations must be >= 0, got {iterations}")
        self.body = body
        self.net = net.to(body.device, body.dtype).eval()
        self.iterations = iterations
        self.multiview, self.shape = multiview, shape
        ids = body.selector.vertex_ids(net.config.keypoints)  # the body has the network's set
        count = 24 if net.config.keypoints == "smpl24" else len(ids)
        if count != net.config.num_keypoints:
            raise ValueError(f"the ReFit network reads {net.config.num_keypoints} "
                             f"{net.config.keypoints!r} keypoints; body {body.source} has {count}")

    def pool(self, layout: GroupLayout, crop: CropInfo, pose6d: Tensor, betas: Tensor,
             camera: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One body per ``"all"`` group, one shape per group, known shapes in place (see the
        module doc): the views' estimates pooled by :func:`fitkit.fitting.groups.pool_rows`
        (world frame through the extrinsics, chordal means) and the pooled body put back into
        every view.

        Args:
            layout: the groups to pool (:meth:`fitkit.fitting.groups.GroupLayout.build`).
            crop: the crop boxes and the full images' cameras.
            pose6d: ``(B, 24, 6)``; betas: ``(B, 10)``; camera: ``(B, 3)`` weak-perspective.
        Returns:
            the new ``pose6d``, ``betas`` and ``camera``; rows in no group unchanged.
        """
        rotations = rot6d_to_matrix(pose6d)  # (B, 24, 3, 3)
        axis_angle = matrix_to_axis_angle(rotations)
        state = {"global_orient": axis_angle[:, 0], "body_pose": axis_angle[:, 1:].flatten(1),
                 "betas": betas,
                 "transl": weak_perspective_to_full_frame(camera, crop.box_center,
                                                          crop.box_size, crop.camera)}
        rows = pool_rows(layout, state, crop.camera, self.body, given=tuple(state))
        pooled = {name: layout.expand(name, value) for name, value in rows.items()}
        orient, transl = pooled["global_orient"], pooled["transl"]
        if crop.camera.has_extrinsics:
            R, t = _extrinsics(crop)
            orient, transl = world_to_camera_params(
                orient, transl, rest_root(self.body, pooled["betas"]), R, t)
        target = axis_angle_to_matrix(torch.cat([orient[:, None], pooled["body_pose"].unflatten(
            -1, (NUM_JOINTS - 1, 3))], dim=1))
        turned = turn_rot6d(pose6d, target @ rotations.transpose(-1, -2))
        weak = full_frame_to_weak_perspective(transl, crop.box_center, crop.box_size,
                                              crop.camera)
        index = layout.index["global_orient"]
        views = (index.bincount(minlength=layout.rows["global_orient"])[index] > 1)[:, None]
        return (torch.where(views[..., None], turned, pose6d), pooled["betas"],
                torch.where(views, weak, camera))

    def boxes(self, batch: FitBatch) -> tuple[Tensor, Tensor]:
        """Crop boxes: ``(B, 2)`` centres and ``(B,)`` sides in pixels (module doc's order)."""
        camera = batch.camera
        size = camera.image_size
        whole = torch.cat([torch.zeros_like(size), size - 1.0], dim=-1).view(-1, 2, 2)
        points = whole
        if all(key in batch.init for key in PARAM_SIZES):
            with torch.no_grad():
                vertices = self.body(**{key: batch.init[key] for key in PARAM_SIZES}).vertices
            pixels = camera.project(vertices)
            points = torch.stack([pixels.amin(dim=1), pixels.amax(dim=1)], dim=1)
        elif "keypoints" in batch.observations:
            keypoints = batch.observations["keypoints"]
            if isinstance(keypoints, dict):
                keypoints = keypoints["keypoints"]
            used = keypoints.isfinite().all(dim=-1) & (keypoints[..., 2] > 0)
            xy = keypoints[..., :2]
            low = torch.where(used[..., None], xy, torch.inf).amin(dim=1)
            high = torch.where(used[..., None], xy, -torch.inf).amax(dim=1)
            found = used.any(dim=1)[:, None, None]
            points = torch.where(found, torch.stack([low, high], dim=1).to(size.dtype), whole)
        center, side = crop_boxes(points, image_size=size)
        covers_image = (points == whole).flatten(1).all(dim=1)
        center = torch.where(covers_image[:, None], (size - 1.0) / 2.0, center)
        side = torch.where(covers_image, size.amax(dim=-1), side)
        return center, side

    @torch.no_grad()
    def solve(self, batch: FitBatch) -> FitResult:
        """Run ReFit on the batch's images (see the module doc).

        Raises:
            ValueError: a batch without images, or with malformed groups
                (:meth:`fitkit.fitting.groups.GroupLayout.build`).
        """
        if batch.images is None:
            raise ValueError("data_term='refit' reads the images' pixels; give the images")
        start = time.perf_counter()
        device, dtype = self.body.device, self.body.dtype
        layout = GroupLayout.build(batch.groups, batch.batch_size, device, dtype,
                                   world=batch.camera.has_extrinsics)
        box_center, box_size = self.boxes(batch)
        resolution = self.net.config.image_size
        crops = torch.cat([
            crop_images(torch.as_tensor(np.array(image)).to(device, dtype)
                        .permute(2, 0, 1)[None] / 255.0, box_center[i:i + 1], box_size[i:i + 1],
                        resolution)
            for i, image in enumerate(batch.images)])
        crop = CropInfo(box_center, box_size, batch.camera)
        init = {key: value for key, value in batch.init.items() if key in PARAM_SIZES}
        constrain: Constraint | None = None
        if self.multiview == "pool":
            loop = layout
            if self.shape == "substitute":  # the loop knows nothing of the known shapes
                loop = GroupLayout.build(
                    [dataclasses.replace(group, betas=None) for group in batch.groups],
                    batch.batch_size, device, dtype, world=batch.camera.has_extrinsics)
            if not loop.trivial:
                def constrain(pose6d: Tensor, betas: Tensor, camera: Tensor
                              ) -> tuple[Tensor, Tensor, Tensor]:
                    return self.pool(loop, crop, pose6d, betas, camera)
        elif self.shape == "feedback" and layout.fixed_betas is not None:
            def constrain(pose6d: Tensor, betas: Tensor, camera: Tensor
                          ) -> tuple[Tensor, Tensor, Tensor]:
                return pose6d, known_betas(layout, betas), camera
        estimate = self.net(crops, crop, self.body, self.iterations, init or None,
                            constrain)[-1]
        params = {key: value.detach() for key, value in estimate.params().items()}
        if layout.fixed_betas is not None:  # Shape ReFit has them; "substitute" puts them in
            params["betas"] = known_betas(layout, params["betas"])
        # one body per "all" group (the "average_final" baseline; "pool" pooled already), in
        # the world frame with extrinsics
        rows = pool_rows(layout, params, batch.camera, self.body, given=tuple(params))
        params = {name: layout.expand(name, value) for name, value in rows.items()}
        output = self.body(**params)
        params["focal_length"] = batch.camera.focal_length.clone()
        params["camera_center"] = batch.camera.principal_point.clone()
        elapsed = time.perf_counter() - start
        seen = output
        if batch.camera.has_extrinsics:  # the data terms read each view's camera frame
            seen = dataclasses.replace(output, vertices=batch.camera.to_camera(output.vertices),
                                       joints=batch.camera.to_camera(output.joints))
        terms = {name: term.energy(seen, batch.camera)
                 for name, term in build_terms(batch, self.body).items() if name == "keypoints"}
        energy = sum(terms.values(), output.vertices.new_zeros(batch.batch_size))
        finite = torch.stack([value.isfinite().all(dim=-1) for key, value in params.items()
                              if key in PARAM_SIZES]).all(dim=0)
        blank = torch.tensor([not init and int(np.ptp(image)) == 0 for image in batch.images],
                             device=device)
        return FitResult(
            params=params, vertices=output.vertices, joints=output.joints, energy=energy,
            terms=terms, stages=[{"energy": energy, "terms": terms}],
            flags={"nan": ~finite, "no_data": blank},
            timings={"refit": elapsed, "total": time.perf_counter() - start},
            faces=self.body.faces)
