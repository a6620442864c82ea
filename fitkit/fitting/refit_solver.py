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
"""

from __future__ import annotations

import os
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fitkit.body import BodyModel
from fitkit.fitting.result import FitResult
from fitkit.fitting.solver import FitBatch, build_terms
from fitkit.geometry.crop import crop_boxes, crop_images
from fitkit.io.params import PARAM_SIZES
from fitkit.nets.checkpoint import REFIT_KIND, load_network
from fitkit.nets.refit import CropInfo, ReFit

SHIPPED_REFIT = "refit_open.pt"
"""The shipped ReFit network in ``fitkit/nets/data`` (``refit_net="auto"``)."""


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


class ReFitSolver:
    """The ReFit learned optimizer as a :class:`~fitkit.fitting.Solver` (see the module doc).

    Args:
        body: the body model the network drives (the one it was trained with).
        net: ``"auto"`` (the shipped open network), a checkpoint path or a :class:`ReFit`.
        iterations: T (default the network's training T).
    Raises:
        FileNotFoundError, CheckpointError: a missing or bad checkpoint.
        ValueError: a network whose keypoints the body does not have.
    """

    def __init__(self, body: BodyModel, net: ReFit | str | os.PathLike = "auto",
                 iterations: int | None = None) -> None:
        if not isinstance(net, ReFit):
            net = load_network(refit_path(net), REFIT_KIND)
        if iterations is not None and iterations < 0:
            raise ValueError(f"refit_iterations must be >= 0, got {iterations}")
        self.body = body
        self.net = net.to(body.device, body.dtype).eval()
        self.iterations = iterations
        body.selector.vertex_ids(net.config.keypoints)  # the body has the network's keypoints

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
            ValueError: a batch without images, or with groups (multi-view ReFit is not here).
        """
        if batch.images is None:
            raise ValueError("data_term='refit' reads the images' pixels; give the images")
        if batch.groups:
            raise ValueError("ReFitSolver fits samples on their own; this batch has groups")
        start = time.perf_counter()
        device, dtype = self.body.device, self.body.dtype
        box_center, box_size = self.boxes(batch)
        resolution = self.net.config.image_size
        crops = torch.cat([
            crop_images(torch.as_tensor(np.array(image)).to(device, dtype)
                        .permute(2, 0, 1)[None] / 255.0, box_center[i:i + 1], box_size[i:i + 1],
                        resolution)
            for i, image in enumerate(batch.images)])
        crop = CropInfo(box_center, box_size, batch.camera)
        init = {key: value for key, value in batch.init.items() if key in PARAM_SIZES}
        estimate = self.net(crops, crop, self.body, self.iterations, init or None)[-1]
        params = {key: value.detach() for key, value in estimate.params().items()}
        output = self.body(**params)
        params["focal_length"] = batch.camera.focal_length.clone()
        params["camera_center"] = batch.camera.principal_point.clone()
        elapsed = time.perf_counter() - start
        terms = {name: term.energy(output, batch.camera)
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
