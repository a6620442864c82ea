"""Predicted displacements for the flow data term (seed 003, §3.1 and Eq. 5-6 at test time).

:class:`FlowPredictor` turns images and initial bodies into per-vertex 2D targets in the images'
own pixels:

1. **Crop.** A square box around the projection of the initial mesh (side = the larger side of
   its bounding box / :data:`CROP_FILL`, so the person fills the crop about as the training
   images' people fill theirs, kept inside the image where it can be, :func:`crop_boxes`),
   resampled to the network's input size; the camera is scaled and shifted with it
   (:func:`crop_camera`), so rendering in the crop is rendering in the image.
2. **Texture** of the subject, for a network with texture input: estimated from the image
   itself by back-projection at the initial body (:func:`fitkit.texture.estimate_texture`, 003
   §4) unless one is given; ``"other"`` gives each sample the estimate of the next sample in the
   batch (a wrong texture, for ablations).
3. **Render and predict.** The initial mesh's renders (:func:`fitkit.nets.render_inputs`) and the
   crop go through the network; the final stack's field is averaged onto the visible vertices
   (Eq. 5, :func:`fitkit.render.pixel_to_vertex`) and scaled back to image pixels; each vertex's
   target is its initial projection plus that displacement (Eq. 6).

Shipped networks (:data:`SHIPPED_FLOWNETS`): ``"open"`` (with texture input) and
``"open-notexture"``, trained on fitkit's synthetic world with the open body; their training
commands and figures are in ``docs/results.md``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from fitkit.body.model import BodyModel, BodyOutput
from fitkit.geometry.camera import Camera
from fitkit.nets.checkpoint import load_flownet
from fitkit.nets.flownet import FlowNet, body_render_inputs, predict_displacements
from fitkit.render import pixel_to_vertex
from fitkit.texture import estimate_texture

SHIPPED_FLOWNETS: dict[str, str] = {
    "open": "flownet_open.pt",
    "open-notexture": "flownet_open_notexture.pt",
}
"""Names of the displacement networks that ship with fitkit -> files in ``fitkit/nets/data``."""

CROP_FILL = 0.7
"""The person's bounding-box side as a fraction of the crop side (training images: 0.45-0.9)."""

MAX_FILL = 0.9
"""The largest fill a crop may have when it is shrunk to stay inside the image."""

TEXTURE_MODES = ("estimate", "other")
"""Texture sources by name: the sample's own estimate, or the next sample's (a wrong one)."""


def flownet_path(name: str | os.PathLike) -> Path:
    """The checkpoint file of a shipped network name (:data:`SHIPPED_FLOWNETS`) or a path.

    Raises:
        FileNotFoundError: neither a shipped name nor an existing file (both named).
    """
    if isinstance(name, str) and name in SHIPPED_FLOWNETS:
        path = Path(str(resources.files("fitkit.nets") / "data" / SHIPPED_FLOWNETS[name]))
        if not path.is_file():
            raise FileNotFoundError(f"the shipped network {name!r} is missing from this "
                                    f"installation ({path})")
        return path
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"displacement network not found: {path} (shipped networks: "
                                f"{', '.join(SHIPPED_FLOWNETS)})")
    return path


@dataclass
class FlowPrediction:
    """Predicted per-vertex targets and what they came from.

    Attributes:
        targets: ``(B, V, 2)`` target pixel positions ``(u, v)`` in the images (0 where not
            visible).
        visible: ``(B, V)`` bool, vertices visible in the initial render of the crop.
        displacements: ``(B, 2, S, S)`` the network's field in crop pixels, 0 off the mesh.
        mask: ``(B, S, S)`` bool, the crop pixels the initial mesh covers.
        camera: the B crop cameras (:func:`crop_camera`) the field lives in.
        boxes: ``(B, 3)`` crop boxes ``(u0, v0, side)`` in image pixels (top-left pixel edge).
        texture: ``(B, 3, T, T)`` textures given to the network, or ``None``.
    """

    targets: Tensor
    visible: Tensor
    displacements: Tensor
    mask: Tensor
    camera: Camera
    boxes: Tensor
    texture: Tensor | None


def crop_boxes(points: Tensor, fill: float = CROP_FILL, image_size: Tensor | None = None
               ) -> Tensor:
    """Square boxes around the bounding boxes of 2D points.

    Without ``image_size`` the box is centred on the points and its side is the bounding box's
    larger side / ``fill``. With it, the box stays inside the image where it can, so that the
    network sees image rather than padding (its training images have none): the side shrinks
    to the image's shorter side but not below the bounding box's larger side /
    :data:`MAX_FILL`, and the box shifts towards the image's interior, still holding the
    bounding box.

    Args:
        points: ``(B, N, 2)`` pixel positions (pixel centres at integers).
        fill: the bounding box's larger side as a fraction of the box side.
        image_size: ``(B, 2)`` image sizes ``(W, H)``, or ``None``.
    Returns:
        ``(B, 3)`` ``(u0, v0, side)``: the box's top-left corner (pixel edges, so pixel ``u``
        spans ``[u - 0.5, u + 0.5]``) and side, in pixels.
    """
    low, high = points.amin(dim=1), points.amax(dim=1)
    extent = (high - low).amax(dim=-1)
    side = (extent / fill).clamp(min=8.0)
    corner = 0.5 * (low + high) + 0.5 - 0.5 * side[:, None]
    if image_size is not None:
        image_size = image_size.to(side.dtype)
        side = torch.minimum(side, torch.maximum(image_size.amin(dim=-1), extent / MAX_FILL))
        corner = 0.5 * (low + high) + 0.5 - 0.5 * side[:, None]
        room = image_size - side[:, None]
        inside = torch.minimum(corner.clamp(min=0.0), room)
        corner = torch.where(room >= 0, inside, corner)
    return torch.cat([corner, side[:, None]], dim=-1)


def crop_camera(camera: Camera, boxes: Tensor, size: int) -> Camera:
    """The cameras of ``size x size`` crops of the boxes: image pixel ``u`` maps to crop pixel
    ``(u + 0.5 - u0) * size / side - 0.5``.

    Args:
        camera: B cameras of the full images.
        boxes: ``(B, 3)`` from :func:`crop_boxes`.
        size: crop side in pixels.
    """
    scale = (size / boxes[:, 2])[:, None]
    principal = (camera.principal_point + 0.5 - boxes[:, :2]) * scale - 0.5
    image_size = torch.full_like(principal, float(size))
    return Camera(camera.focal_length * scale, principal, image_size)


def crop_images(images: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Resample the boxes of images to ``size x size`` (bilinear; zeros outside the image).

    Args:
        images: ``(B, C, H, W)``.
        boxes: ``(B, 3)`` from :func:`crop_boxes`.
        size: output side.
    Returns:
        ``(B, C, size, size)``.
    """
    height, width = images.shape[-2:]
    steps = (torch.arange(size, device=images.device, dtype=images.dtype) + 0.5) / size
    u = boxes[:, None, 0] + steps[None] * boxes[:, None, 2]  # (B, S) image x at pixel edges
    v = boxes[:, None, 1] + steps[None] * boxes[:, None, 2]
    grid_x = (2.0 * u / width - 1.0)[:, None, :].expand(-1, size, -1)
    grid_y = (2.0 * v / height - 1.0)[:, :, None].expand(-1, -1, size)
    grid = torch.stack([grid_x, grid_y], dim=-1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                         align_corners=False)


class FlowPredictor:
    """A displacement network ready to give the flow term its targets (module docstring).

    Args:
        net: a :class:`FlowNet`, a checkpoint path, or a shipped name (``"open"``,
            ``"open-notexture"``).
        body: the body model the initial vertices come from (faces, UVs, rest pose).
        texture_size: side of estimated textures (texels).
        backend: rasterizer backend.
    Raises:
        FileNotFoundError, fitkit.nets.CheckpointError: a missing or bad checkpoint.
        ValueError: a network with texture input for a body without UVs.
    """

    def __init__(self, net: FlowNet | str | os.PathLike, body: BodyModel,
                 texture_size: int = 256, backend: str = "torch") -> None:
        if not isinstance(net, FlowNet):
            net = load_flownet(flownet_path(net), device=body.device)
        self.net = net.to(body.device).eval()
        self.body = body
        self.texture_size = texture_size
        self.backend = backend
        if self.uses_texture and body.uv is None:
            raise ValueError(f"this network takes a texture, and body model {body.source} has "
                             "no UVs to map one with")

    @property
    def uses_texture(self) -> bool:
        """Whether the network takes a texture render."""
        return self.net.config.texture

    @property
    def size(self) -> int:
        """Side of the network's input crops (its training image size)."""
        return self.net.config.image_size

    @torch.no_grad()
    def __call__(
        self,
        images: Tensor,
        output: BodyOutput,
        camera: Camera,
        texture: Tensor | str | None = "estimate",
    ) -> FlowPrediction:
        """Per-vertex targets from images and initial bodies.

        Args:
            images: ``(B, 3, H, W)`` RGB in [0, 1].
            output: the initial bodies (``vertices`` ``(B, V, 3)`` in the camera frame).
            camera: the B cameras of the images.
            texture: for a network with texture input: ``"estimate"`` (back-projected from each
                image at its initial body), ``"other"`` (the next sample's estimate, a wrong
                texture), or ``(B, 3, T, T)`` / ``(3, T, T)`` RGB in [0, 1]. Ignored by a network
                without texture input.
        Returns:
            A :class:`FlowPrediction`.
        Raises:
            ValueError: shapes that disagree, an unknown texture mode.
        """
        vertices = output.vertices.detach()
        batch = vertices.shape[0]
        if images.ndim != 4 or images.shape[:2] != (batch, 3):
            raise ValueError(f"images must have shape ({batch}, 3, H, W) (one per initial body), "
                             f"got {tuple(images.shape)}")
        device, dtype = vertices.device, vertices.dtype
        images = images.to(device=device, dtype=dtype)
        camera = camera.to(device, dtype)
        if camera.batch_size == 1 and batch > 1:
            camera = Camera(*(value.expand(batch, 2) for value in
                              (camera.focal_length, camera.principal_point, camera.image_size)))
        texture = self._texture(images, output, camera, texture) if self.uses_texture else None
        boxes = crop_boxes(camera.project(vertices), image_size=camera.image_size)
        crop = crop_camera(camera, boxes, self.size)
        renders = body_render_inputs(self.body, output, crop, texture, backend=self.backend)
        field = predict_displacements(self.net, crop_images(images, boxes, self.size), renders)
        per_vertex = pixel_to_vertex(field.permute(0, 2, 3, 1), self.body.faces,
                                     renders.fragments, vertices.shape[1])
        scale = (boxes[:, 2] / self.size)[:, None, None]
        targets = camera.project(vertices) + per_vertex.values * scale
        targets = torch.where(per_vertex.valid[..., None], targets, 0.0)
        return FlowPrediction(targets, per_vertex.valid, field, renders.mask, crop, boxes,
                              texture)

    def _texture(self, images: Tensor, output: BodyOutput, camera: Camera,
                 texture: Tensor | str | None) -> Tensor:
        """``(B, 3, T, T)`` the textures given to the network."""
        vertices = output.vertices.detach()
        batch = vertices.shape[0]
        if isinstance(texture, Tensor):
            texture = texture.to(device=vertices.device, dtype=vertices.dtype)
            if texture.ndim == 3:
                texture = texture[None].expand(batch, -1, -1, -1)
            if texture.ndim != 4 or texture.shape[:2] != (batch, 3):
                raise ValueError(f"texture must have shape (3, T, T) or ({batch}, 3, T, T), got "
                                 f"{tuple(texture.shape)}")
            return texture
        if texture not in TEXTURE_MODES:
            raise ValueError(f"unknown texture {texture!r}; give a (B, 3, T, T) tensor or one of "
                             f"{', '.join(TEXTURE_MODES)}")
        estimates = torch.stack([
            estimate_texture(images[i:i + 1], self.body,
                             BodyOutput(vertices[i:i + 1], output.joints[i:i + 1],
                                        output.selector),
                             camera[i], size=self.texture_size, backend=self.backend).texture
            for i in range(batch)])
        return estimates.roll(-1, dims=0) if texture == "other" else estimates

