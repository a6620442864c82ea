"""Predicted displacements for the flow data term (seed 003, §3.1 and Eq. 5-6 at test time).

:class:`FlowPredictor` turns images and initial bodies into per-vertex 2D targets in the images'
own pixels:

1. **Crop.** A square box around the projection of the initial mesh (side = the larger side of
   its bounding box / :data:`fitkit.geometry.crop.CROP_FILL`, so the person fills the crop about
   as the training images' people fill theirs, kept inside the image where it can be,
   :func:`fitkit.geometry.crop_boxes`), resampled to the network's input size
   (:func:`fitkit.geometry.crop_images`); the camera is scaled and shifted with it
   (:func:`fitkit.geometry.crop_camera`), so rendering in the crop is rendering in the image.
2. **Texture** of the subject, for a network with texture input: estimated from the image
   itself by back-projection at the initial body (:func:`fitkit.render.estimate_texture`, 003
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
from torch import Tensor

from fitkit.body.model import BodyModel, BodyOutput
from fitkit.geometry.camera import Camera
from fitkit.geometry.crop import crop_boxes, crop_camera, crop_images
from fitkit.nets.checkpoint import load_flownet
from fitkit.nets.flownet import FlowNet, body_render_inputs, predict_displacements
from fitkit.render import estimate_texture, pixel_to_vertex

SHIPPED_FLOWNETS: dict[str, str] = {
    "open": "flownet_open.pt",
    "open-notexture": "flownet_open_notexture.pt",
}
"""Names of the displacement networks that ship with fitkit -> files in ``fitkit/nets/data``."""

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
        camera: the B crop cameras (:func:`fitkit.geometry.crop_camera`) the field lives in.
        box_center: ``(B, 2)`` crop box centres in image pixels.
        box_size: ``(B,)`` crop box sides in image pixels.
        texture: ``(B, 3, T, T)`` textures given to the network, or ``None``.
    """

    targets: Tensor
    visible: Tensor
    displacements: Tensor
    mask: Tensor
    camera: Camera
    box_center: Tensor
    box_size: Tensor
    texture: Tensor | None


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
        camera = camera.expand(batch)
        texture = self._texture(images, output, camera, texture) if self.uses_texture else None
        pixels = camera.project(vertices)
        box_center, box_size = crop_boxes(pixels, image_size=camera.image_size)
        crop = crop_camera(camera, box_center, box_size, self.size)
        renders = body_render_inputs(self.body, output, crop, texture, backend=self.backend)
        field = predict_displacements(
            self.net, crop_images(images, box_center, box_size, self.size), renders)
        per_vertex = pixel_to_vertex(field.permute(0, 2, 3, 1), self.body.faces,
                                     renders.fragments, vertices.shape[1])
        scale = (box_size / self.size)[:, None, None]
        targets = pixels + per_vertex.values * scale
        targets = torch.where(per_vertex.valid[..., None], targets, 0.0)
        return FlowPrediction(targets, per_vertex.valid, field, renders.mask, crop, box_center,
                              box_size, texture)

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

