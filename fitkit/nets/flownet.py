"""The displacement network of seed 003 (§3.1): per-pixel 2D displacements from renders of the
current mesh to the image.

Two encoders like ResNet-50's first stage at stride 1 without max-pooling map the image (3
channels) and the renders (texture RGB 3, depth 1, normal 3, unique vertex colour 3 = 10 channels;
7 without texture, seed 003's Table 3 "w/o texture") to ``width`` features each; the concatenated
features go through a stacked hourglass whose every stack predicts a 2-channel displacement field
``(du, dv)`` in pixels (fitkit's ``(u = column, v = row)``), supervised with the masked end-point
error of Eq. 3 (:func:`flow_loss`).

Input normalisation (what the network sees):

- image: RGB in [0, 1], standardized with the ImageNet channel means and deviations
  (:data:`IMAGE_MEAN`, :data:`IMAGE_STD`) inside :meth:`FlowNet.forward`;
- renders (:func:`normalize_renders`), all 0 on pixels the mesh does not cover:
  texture RGB standardized like the image; depth as ``(z - z_mean) / DEPTH_SCALE`` with
  ``z_mean`` the mean depth of the sample's covered pixels (so the input does not depend on how far
  the person stands); unit camera-frame normals as they are, in [-1, 1]; unique vertex colours
  (rest-pose positions scaled to [0, 1], :func:`fitkit.render.vertex_colors`) mapped to [-1, 1].

Ground truth (Eq. 1-2, :func:`fitkit.render.displacement_field`): per vertex
``D_i = pi(v_i^gt) - pi(v_i^init)`` with the camera's projection ``pi``, interpolated over the
pixels of the initial mesh's render with the barycentrics of the visible triangles; the render's
:class:`RenderInputs` carry the fragments it reuses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fitkit.body.model import BodyModel, BodyOutput
from fitkit.geometry.camera import Camera
from fitkit.nets.blocks import StageOneEncoder
from fitkit.nets.hourglass import StackedHourglass
from fitkit.render import Fragments, RenderMaps, rasterize, render_maps

IMAGE_MEAN = (0.485, 0.456, 0.406)
"""Channel means of RGB images in [0, 1] (ImageNet), subtracted from image and texture render."""
IMAGE_STD = (0.229, 0.224, 0.225)
"""Channel standard deviations (ImageNet) that image and texture render are divided by."""
DEPTH_SCALE = 0.25
"""Meters of depth per unit of the depth channel (a body's depth range spans a few units)."""


@dataclass(frozen=True)
class FlowNetConfig:
    """Size of a displacement network (saved in its checkpoints).

    Attributes:
        image_size: side of the square training images (pixels); inference takes any size whose
            sides are multiples of ``2 ** depth``.
        width: channels of each encoder's output and inside the hourglasses (ResNet-50's first
            stage and the hourglass paper: 256).
        stacks: hourglasses, each supervised (seed 003: 4).
        depth: halvings inside each hourglass.
        encoder_blocks: bottlenecks in each encoder after its 7x7 stem (ResNet-50: 3).
        texture: whether the render branch takes the texture render (10 input channels) or not
            (7: depth, normal, vertex colour).
        displacement_scale: pixels per unit of the heads' raw output, so that typical
            displacements are of order one for the last convolutions.
    """

    image_size: int = 256
    width: int = 256
    stacks: int = 4
    depth: int = 4
    encoder_blocks: int = 3
    texture: bool = True
    displacement_scale: float = 8.0

    def __post_init__(self) -> None:
        if self.image_size % 2**self.depth:
            raise ValueError(f"image_size {self.image_size} is not a multiple of 2 ** depth "
                             f"= {2**self.depth}")
        if self.displacement_scale <= 0:
            raise ValueError(f"displacement_scale must be positive, got {self.displacement_scale}")

    @property
    def render_channels(self) -> int:
        """Channels of the render input: 10 with texture, 7 without."""
        return 10 if self.texture else 7


FLOWNET_CONFIGS: dict[str, FlowNetConfig] = {
    "paper": FlowNetConfig(),
    "small": FlowNetConfig(image_size=128, width=32, stacks=2, depth=4, encoder_blocks=1,
                           displacement_scale=4.0),
}
"""Named sizes: ``paper`` (seed 003 at 256 x 256, for a GPU) and ``small`` (trains on a CPU)."""


class FlowNet(nn.Module):
    """Image + renders -> per-pixel displacement fields, one per hourglass stack.

    The prediction heads start at zero, so an untrained network predicts no displacement (the
    initial mesh as it is).

    Args:
        config: the network's size.
    """

    def __init__(self, config: FlowNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or FlowNetConfig()
        self.image_encoder = StageOneEncoder(3, config.width, config.encoder_blocks)
        self.render_encoder = StageOneEncoder(config.render_channels, config.width,
                                              config.encoder_blocks)
        self.hourglass = StackedHourglass(2 * config.width, config.width, 2, config.stacks,
                                          config.depth)
        for head in self.hourglass.heads:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        self.register_buffer("image_mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1),
                             persistent=False)

    def forward(self, image: Tensor, renders: Tensor) -> Tensor:
        """Displacements predicted by every stack.

        Args:
            image: ``(B, 3, H, W)`` RGB in [0, 1].
            renders: ``(B, C, H, W)`` normalized renders (:func:`normalize_renders`), C = 10 with
                texture or 7 without (``config.render_channels``).
        Returns:
            ``(S, B, 2, H, W)`` displacements ``(du, dv)`` in pixels, stack by stack.
        """
        if renders.shape[1] != self.config.render_channels:
            kind = "with" if self.config.texture else "without"
            raise ValueError(f"this network ({kind} texture) takes {self.config.render_channels} "
                             f"render channels, got {renders.shape[1]}")
        if image.shape[1] != 3 or image.shape[-2:] != renders.shape[-2:]:
            raise ValueError(f"image {tuple(image.shape)} and renders {tuple(renders.shape)} "
                             "need shapes (B, 3, H, W) and (B, C, H, W)")
        image = (image - self.image_mean) / self.image_std
        features = torch.cat([self.image_encoder(image), self.render_encoder(renders)], dim=1)
        return self.hourglass(features) * self.config.displacement_scale


@dataclass
class RenderInputs:
    """The renders of a mesh as the network takes them.

    Attributes:
        channels: ``(B, C, H, W)`` normalized renders (see the module doc), C = 10 or 7.
        mask: ``(B, H, W)`` bool, the pixels the mesh covers (where displacements are defined).
        fragments: the rasterization they came from (for pixel -> vertex, seed 003 Eq. 5).
    """

    channels: Tensor
    mask: Tensor
    fragments: Fragments


def normalize_renders(maps: RenderMaps, texture: bool = True) -> Tensor:
    """Stack and normalize render maps into the network's render input.

    Args:
        maps: from :func:`fitkit.render.render_maps`; ``maps.rgb`` is needed when ``texture``.
        texture: include the texture render (first three channels).
    Returns:
        ``(B, C, H, W)``: [texture RGB (3),] depth (1), normal (3), vertex colour (3), each 0 on
        uncovered pixels.
    """
    mask = maps.mask[..., None]  # (B, H, W, 1)
    count = mask.sum(dim=(1, 2, 3)).clamp(min=1.0)
    mean_depth = (maps.depth[..., None] * mask).sum(dim=(1, 2, 3)) / count
    depth = (maps.depth[..., None] - mean_depth[:, None, None, None]) / DEPTH_SCALE
    parts = [depth, maps.normal, 2.0 * maps.vertex_color - 1.0]
    if texture:
        if maps.rgb is None:
            raise ValueError("the texture render is missing (render_maps without a texture)")
        mean = maps.rgb.new_tensor(IMAGE_MEAN)
        std = maps.rgb.new_tensor(IMAGE_STD)
        parts.insert(0, (maps.rgb - mean) / std)
    return (torch.cat(parts, dim=-1) * mask).permute(0, 3, 1, 2).contiguous()


def render_inputs(
    vertices: Tensor,
    faces: Tensor,
    camera: Camera,
    rest_vertices: Tensor,
    texture: Tensor | None = None,
    uv: tuple[Tensor, Tensor] | None = None,
    image_size: tuple[int, int] | None = None,
    backend: str = "torch",
) -> RenderInputs:
    """Rasterize meshes and make the network's render input.

    Args:
        vertices: ``(B, V, 3)`` camera-frame vertices of the current mesh.
        faces: ``(F, 3)`` long.
        camera: B cameras (or one).
        rest_vertices: ``(V, 3)`` rest-pose vertices of the mean shape (unique vertex colours).
        texture: ``(B, 3, S, S)`` or ``(3, S, S)`` RGB texture in [0, 1]; None for a network
            without texture.
        uv: ``(vt (T, 2), ft (F, 3))`` texture coordinates, needed with ``texture``.
        image_size: ``(H, W)``, default the camera's.
        backend: rasterizer backend.
    Returns:
        RenderInputs with 10 channels with a texture, 7 without.
    """
    fragments = rasterize(vertices, faces, camera, image_size, backend=backend)
    vt, ft = uv if uv is not None else (None, None)
    if texture is not None and uv is None:
        raise ValueError("a texture needs the body's UVs (vt, ft)")
    maps = render_maps(vertices, faces, fragments, rest_vertices, texture, vt, ft)
    channels = normalize_renders(maps, texture=texture is not None)
    return RenderInputs(channels=channels, mask=fragments.mask, fragments=fragments)


def body_render_inputs(
    body: BodyModel,
    output: BodyOutput,
    camera: Camera,
    texture: Tensor | None = None,
    image_size: tuple[int, int] | None = None,
    backend: str = "torch",
) -> RenderInputs:
    """:func:`render_inputs` of a body model's output (its faces, UVs and rest pose).

    Args:
        body: the body model that produced ``output``.
        output: ``vertices`` ``(B, V, 3)`` in the camera frame.
        camera, texture, image_size, backend: as in :func:`render_inputs`.
    """
    if texture is not None and body.uv is None:
        raise ValueError(f"body model {body.source} has no UVs to map a texture with")
    with torch.no_grad():
        rest = body().vertices[0]
    return render_inputs(output.vertices, body.faces, camera, rest, texture, body.uv, image_size,
                         backend)


@torch.no_grad()
def predict_displacements(net: FlowNet, image: Tensor, renders: RenderInputs) -> Tensor:
    """The network's final displacement field, 0 where the mesh is not rendered.

    Put the network in eval mode first (``net.eval()``; :func:`fitkit.nets.load_flownet` does).

    Args:
        net: a displacement network.
        image: ``(B, 3, H, W)`` RGB in [0, 1].
        renders: the current mesh's :class:`RenderInputs` (same H, W).
    Returns:
        ``(B, 2, H, W)`` displacements ``(du, dv)`` in pixels from the render to the image.
    """
    prediction = net(image, renders.channels)[-1]
    return prediction * renders.mask[:, None].to(prediction.dtype)


def masked_epe(prediction: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Eq. 3: the mean end-point error over the covered pixels of the whole batch.

    Args:
        prediction, target: ``(B, 2, H, W)`` displacement fields.
        mask: ``(B, H, W)`` bool or 0/1, the pixels that count.
    Returns:
        Scalar; 0 when no pixel counts.
    """
    weight = mask.to(prediction.dtype)
    distance = torch.linalg.vector_norm(prediction - target, dim=1)
    return (distance * weight).sum() / weight.sum().clamp(min=1.0)


def flow_loss(predictions: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """The training loss: :func:`masked_epe` summed over the stacks (intermediate supervision).

    Args:
        predictions: ``(S, B, 2, H, W)`` from :meth:`FlowNet.forward`.
        target: ``(B, 2, H, W)``; mask: ``(B, H, W)``.
    Returns:
        Scalar.
    """
    return torch.stack([masked_epe(prediction, target, mask) for prediction in predictions]).sum()
