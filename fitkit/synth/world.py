"""The synthetic world: one call turns sample indices into rendered, annotated samples.

Every sample is a function of ``(seed, index)`` alone: its random numbers come from its own
generator (:func:`sample_generator`) in a fixed order (pose, orientation, shape, focal length,
placement, clothing, background, lighting, keypoint noise, initial-estimate noise), and the heavy
work (body model, rasterizer, shading) runs batched over samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fitkit.body.model import PARAM_SIZES
from fitkit.geometry.camera import Camera
from fitkit.render import normal_map, rasterize, texture_map, vertex_visibility
from fitkit.render.fragments import Fragments
from fitkit.synth import annotate, scene, textures
from fitkit.synth.backgrounds import random_background
from fitkit.synth.config import SynthConfig
from fitkit.synth.init import draw_init_noise, perturb_body, perturb_transl
from fitkit.synth.poses import sample_body_pose

PARAM_KEYS: tuple[str, ...] = tuple(PARAM_SIZES)


@dataclass
class SampleBatch:
    """Rendered samples (B of them) and their annotations.

    Attributes:
        indices: sample indices (B,).
        images: ``(B, H, W, 3)`` uint8 RGB.
        iuv: ``(B, H, W, 3)`` uint8 ``(I, U, V)`` (DensePose's channel order in memory).
        textures: ``(B, S, S, 3)`` uint8 RGB clothing textures.
        keypoints: ``(B, 25, 3)`` OpenPose ``(u, v, confidence)``.
        gt, init: parameters, each ``global_orient`` (B, 3), ``body_pose`` (B, 69),
            ``betas`` (B, 10), ``transl`` (B, 3).
        focal_length, camera_center: ``(B, 2)`` pixels.
        distance: ``(B,)`` depth of the person's bounding-box centre, meters.
    """

    indices: list[int]
    images: Tensor
    iuv: Tensor
    textures: Tensor
    keypoints: Tensor
    gt: dict[str, Tensor]
    init: dict[str, Tensor]
    focal_length: Tensor
    camera_center: Tensor
    distance: Tensor


def stack_draws(draws: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Per-sample dicts of tensors -> one dict of batched tensors."""
    return {key: torch.stack([d[key] for d in draws]) for key in draws[0]}


def sample_generator(seed: int, index: int, *keys: int) -> torch.Generator:
    """The generator of sample ``index`` of a dataset made with ``seed`` (independent streams
    through NumPy's ``SeedSequence``); ``keys`` name further streams of the same sample (a view
    of a multi-view subject, a frame of a sequence)."""
    state = np.random.SeedSequence([seed, index, *keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class SynthWorld:
    """A body model and the per-body precomputations, ready to generate samples.

    Args:
        body: a fitkit ``BodyModel`` with ``faces``, ``uv`` and DensePose labels.
        config: the dataset settings.
    """

    def __init__(self, body: torch.nn.Module, config: SynthConfig) -> None:
        missing = [name for name in ("vt", "ft", "dp_I", "dp_U", "dp_V")
                   if getattr(body, name, None) is None]
        if missing:
            source = getattr(body, "source", type(body).__name__)
            raise ValueError(f"body model {source} lacks {', '.join(missing)} (UVs and DensePose "
                             "labels), which synthetic data needs")
        self.body = body
        self.config = config
        self.faces = body.faces.long()
        self.vt, self.ft = body.vt.float(), body.ft.long()
        self.dp_I, self.dp_U, self.dp_V = body.dp_I.long(), body.dp_U.float(), body.dp_V.float()
        with torch.no_grad():
            rest = body()
        vertices, keypoints = rest.vertices[0], rest.keypoints("openpose25")[0]
        hair = textures.hair_faces(vertices, self.faces, self.dp_I, keypoints[15:17],
                                   keypoints[17:19])  # eyes, ears in BODY_25
        self.regions = textures.garment_regions(self.vt, self.ft, self.faces, self.dp_I, hair,
                                                config.texture_size)
        self.neighbours = annotate.keypoint_neighbours(vertices, keypoints,
                                                       config.keypoints.neighbours)

    @torch.no_grad()
    def generate(self, seed: int, indices: list[int]) -> SampleBatch:
        """Render and annotate samples ``indices`` of the dataset made with ``seed``.

        Returns:
            a :class:`SampleBatch` of ``len(indices)`` samples.
        """
        cfg = self.config
        size = cfg.size
        draws = [self._draw(sample_generator(seed, i)) for i in indices]
        stack = stack_draws([{k: v for k, v in d.items() if k not in ("keypoints", "init")}
                        for d in draws])
        batch = len(indices)

        gt = {"global_orient": stack["global_orient"], "body_pose": stack["body_pose"],
              "betas": stack["betas"], "transl": torch.zeros(batch, 3)}
        centred = self.body(**gt)
        focal = stack["focal_length"]
        camera = Camera.from_image_size(size, size, batch, focal_length=focal)
        gt["transl"] = scene.place_bodies(centred.vertices, focal, camera.principal_point,
                                          (size, size), stack["placement"], cfg.scene)
        distance = gt["transl"][:, 2] + 0.5 * (centred.vertices[..., 2].amin(1)
                                               + centred.vertices[..., 2].amax(1))
        return self.render(indices, gt, camera, stack, stack_draws([d["keypoints"] for d in draws]),
                           stack_draws([d["init"] for d in draws]), centred.joints[:, 0], distance)

    @torch.no_grad()
    def render(
        self, indices: list, gt: dict[str, Tensor], camera: Camera, looks: dict[str, Tensor],
        keypoint_noise: dict[str, Tensor], init_noise: dict[str, Tensor], root: Tensor,
        distance: Tensor,
    ) -> SampleBatch:
        """Render and annotate B placed bodies: the shaded image, DensePose IUV, keypoints and
        the perturbed initial estimate (what :meth:`generate` does once the bodies are placed;
        the multi-view and sequence makers call it per view or per chunk of frames).

        Args:
            indices: B labels of the samples (kept in the batch).
            gt: camera-frame parameters ``global_orient`` (B, 3), ``body_pose`` (B, 69),
                ``betas`` (B, 10), ``transl`` (B, 3).
            camera: the B cameras (no extrinsics), image ``config.size`` square.
            looks: ``texture`` (B, 3, S, S) in [0, 1], ``background`` (B, 3, H, W), ``light``
                (B, 9) uniforms, ``sensor`` (B, 3, H, W) normals.
            keypoint_noise: batched :func:`fitkit.synth.annotate.draw_keypoint_noise` draws.
            init_noise: batched :func:`fitkit.synth.init.draw_init_noise` draws.
            root: ``(B, 3)`` the rest root joint of each body (its ``betas``).
            distance: ``(B,)`` depth of each person's bounding-box centre, meters.
        Returns:
            a :class:`SampleBatch` of B samples.
        """
        cfg = self.config
        size = cfg.size
        batch = len(indices)
        output = self.body(**gt)
        vertices = output.vertices
        fragments = rasterize(vertices, self.faces, camera, (size, size))

        images = self._shade(vertices, fragments, looks)
        iuv = annotate.densepose_iuv(fragments.face_id, fragments.bary, self.faces, self.dp_I,
                                     self.dp_U, self.dp_V)

        vertex_pixels = camera.project(vertices)
        person_size = (vertex_pixels.amax(1) - vertex_pixels.amin(1)).amax(-1)
        keypoint_pixels = camera.project(output.keypoints("openpose25"))
        if cfg.keypoint_noise == "none":
            keypoints = annotate.exact_keypoints(keypoint_pixels, size, size)
        else:
            seen = vertex_visibility(fragments, self.faces, vertices.shape[1])
            visible = seen[:, self.neighbours].sum(-1) >= cfg.keypoints.min_visible
            keypoints = annotate.detector_keypoints(keypoint_pixels, visible, person_size, size,
                                                    size, keypoint_noise, cfg.keypoints)

        orient, pose, betas = perturb_body(gt["global_orient"], gt["body_pose"], gt["betas"],
                                           init_noise, cfg.init)
        init = {"global_orient": orient, "body_pose": pose, "betas": betas,
                "transl": torch.zeros(batch, 3)}
        root_init = self.body(**init).joints[:, 0]
        init["transl"] = perturb_transl(gt["transl"], root, root_init, camera.focal_length[:, 0],
                                        person_size, init_noise, cfg.init)
        return SampleBatch(
            indices=list(indices),
            images=images,
            iuv=iuv,
            textures=(looks["texture"].permute(0, 2, 3, 1) * 255.0).round().to(torch.uint8),
            keypoints=keypoints,
            gt=gt,
            init=init,
            focal_length=camera.focal_length,
            camera_center=camera.principal_point,
            distance=distance,
        )

    def _draw(self, generator: torch.Generator) -> dict:
        """All random numbers of one sample, in the documented order."""
        cfg = self.config
        return {
            "body_pose": sample_body_pose(1, generator)[0].float(),
            "global_orient": scene.sample_global_orient(generator, cfg.scene),
            "betas": scene.sample_betas(generator, cfg.scene, PARAM_SIZES["betas"]),
            "focal_length": torch.tensor(
                scene.sample_focal_length(generator, cfg.scene, cfg.size, cfg.size)),
            "placement": scene.sample_placement(generator, cfg.scene),
            "texture": textures.clothing_texture(self.regions, generator),
            "background": random_background(cfg.size, cfg.size, generator),
            "light": torch.rand(9, generator=generator),
            "sensor": torch.randn(3, cfg.size, cfg.size, generator=generator),
            "keypoints": annotate.draw_keypoint_noise(generator),
            "init": draw_init_noise(generator, PARAM_SIZES["betas"]),
        }

    def _shade(self, vertices: Tensor, fragments: Fragments, stack: dict) -> Tensor:
        """Textured, Lambert-shaded bodies over their backgrounds -> ``(B, H, W, 3)`` uint8.

        Lighting is two-sided: a normal that points away from the camera (the inside of the
        mesh, seen through a gap) is flipped. Pixels on the silhouette's border are replaced by
        their 3 x 3 mean, a cheap anti-aliasing of the edge."""
        cfg = self.config.lighting
        covered = fragments.mask
        albedo = texture_map(stack["texture"], self.vt, self.ft, fragments)  # (B, H, W, 3)
        normal = normal_map(vertices, self.faces, fragments)
        normal = torch.where(normal[..., 2:] > 0, -normal, normal)

        light = stack["light"]  # (B, 9) uniforms
        azimuth = (light[:, 0] - 0.5) * math.pi  # left to right of the camera
        elevation = light[:, 1] * 0.4 * math.pi  # from level to well above
        direction = torch.stack([torch.sin(azimuth) * torch.cos(elevation), -torch.sin(elevation),
                                 -torch.cos(azimuth) * torch.cos(elevation)], dim=-1)
        ambient = cfg.ambient[0] + (cfg.ambient[1] - cfg.ambient[0]) * light[:, 2]
        diffuse = cfg.diffuse[0] + (cfg.diffuse[1] - cfg.diffuse[0]) * light[:, 3]
        tint = 1.0 + cfg.tint * (2.0 * light[:, 4:7] - 1.0)  # (B, 3)
        exposure = cfg.exposure[0] + (cfg.exposure[1] - cfg.exposure[0]) * light[:, 7]
        lambert = (normal * direction[:, None, None, :]).sum(-1).clamp(min=0.0)
        shading = ambient[:, None, None] + diffuse[:, None, None] * lambert  # (B, H, W)
        body = albedo * shading[..., None] * tint[:, None, None, :]
        image = torch.where(covered[..., None], body, stack["background"].permute(0, 2, 3, 1))
        mask = covered[:, None].float()
        edge = (F.max_pool2d(mask, 3, 1, 1) != -F.max_pool2d(-mask, 3, 1, 1))[:, 0, ..., None]
        mean = F.avg_pool2d(image.permute(0, 3, 1, 2), 3, 1, 1, count_include_pad=False)
        image = torch.where(edge, mean.permute(0, 2, 3, 1), image)
        image = image * exposure[:, None, None, None]
        sigma = cfg.noise * light[:, 8, None, None, None]
        image = image + sigma * stack["sensor"].permute(0, 2, 3, 1)
        return (image.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
