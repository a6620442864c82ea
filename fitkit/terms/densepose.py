"""The DensePose data term: IUV images -> 2D targets for body vertices.

A DensePose IUV image gives every person pixel a body part ``I`` (1-24; 0 is the background) and
chart coordinates ``(U, V)`` (stored as ``round(255 U)``, ``round(255 V)``). In memory fitkit
keeps DensePose's channel order ``(I, U, V)``: the order of the array DensePose writes with
``cv2.imwrite`` and ``cv2.imread`` returns. (A PNG reader that returns RGB, such as Pillow,
gives ``(V, U, I)``: flip the channels.)

At construction, up to ``max_samples`` person pixels per image are drawn (uniformly without
replacement, reproducible from ``seed``), and each is matched to the body vertex whose
``(U, V)`` is nearest among the vertices of its part (one KD-tree query over all parts, on the
CPU, once per term). The pixel's position becomes that vertex's 2D target, and the energy is
that of :class:`fitkit.terms.flow.VertexTargetsTerm`::

    E_b = (K / N_b)  sum_n  sum_{x,y} GM(s_b (P(v_{b,i_n}) - p_bn); rho)

over the ``N_b`` sampled pixels ``p_bn`` and their vertices ``i_n``: 25 times the mean robust
error per target, residuals in pixels of a 224-pixel crop around the person (the crop box 1.2
times the larger side of the sampled pixels' bounding box), ``rho`` = 100 crop pixels, so the
keypoints term's weights carry over.

The body's DensePose coordinates come from the body itself (the open body's ``dp_I``, ``dp_U``,
``dp_V``) or from DensePose's ``UV_Processed.mat`` for official SMPL
(:mod:`fitkit.body.densepose_uv`). Even for an IUV image rendered from the body itself, a
pixel's nearest vertex lies up to half a triangle away from the pixel, so the energy at the
true body is small (of the order of the squared vertex spacing in crop pixels), not zero.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fitkit.body import BodyModel
from fitkit.body.densepose_uv import (
    NUM_PARTS,
    SMPL_NUM_VERTICES,
    DensePoseUV,
    read_uv_processed,
)
from fitkit.io.inputs import read_iuv
from fitkit.terms.base import TermContext, register_term
from fitkit.terms.flow import REFERENCE_POINTS, VertexTargetsTerm

PART_SPACING = 10.0
"""Distance between parts in the lookup space ``(U, V, PART_SPACING * I)``: more than any
distance inside a part's unit square, so the nearest entry always lies in the pixel's part
whenever that part has any."""


@register_term("densepose")
class DensePoseTerm(VertexTargetsTerm):
    """Robust reprojection error of the body vertices that DensePose IUV pixels point at.

    Args:
        iuv: ``(B, H, W, 3)`` uint8 IUV images, channels ``(I, U, V)`` (module docstring), in
            the pixels of the cameras the term is evaluated with.
        body: the body model; its ``dp_I``, ``dp_U``, ``dp_V`` are the lookup table unless
            ``uv`` is given, and its vertex count is checked against ``uv``.
        uv: the lookup table instead: a :class:`~fitkit.body.densepose_uv.DensePoseUV` or the
            path of DensePose's ``UV_Processed.mat`` (for official SMPL, 6890 vertices).
        max_samples: person pixels drawn per image (all of them if fewer).
        seed: seed of the draw; the same inputs and seed give the same targets.
        rho, crop_size, reference_points: as :class:`~fitkit.terms.flow.VertexTargetsTerm`
            (100 px, 224 px, 25).

    Attributes (besides the base class's): ``pixels`` ``(B, N, 2)`` long ``(u, v)`` of the drawn
    pixels; ``parts`` ``(B, N)`` their part (0 for slots without a pixel).

    A sample without person pixels is invalid (``valid`` False, energy 0). Pixels whose part has
    no vertex in the table are dropped.

    Raises:
        ValueError: ``iuv`` of the wrong shape or dtype or with parts above 24, no lookup table
            (no ``uv`` and a body without DensePose labels), or a table for another vertex count.
        fitkit.body.BodyFileError: an unreadable ``UV_Processed.mat``.

    Input: ``fit(..., iuv=...)``, ``(B, H, W, 3)`` uint8 arrays or ``*_IUV.png`` files; in a
    dataset folder ``densepose/NAME_IUV.png``.
    """

    keyword = "iuv"
    dataset_pattern = "densepose/{name}_IUV.png"

    @classmethod
    def read(cls, value: Any, errors: list[str] | None = None) -> np.ndarray:
        """``(B, H, W, 3)`` uint8 ``(I, U, V)`` from arrays or IUV PNG files
        (:func:`fitkit.io.inputs.read_iuv`)."""
        return read_iuv(value, errors)

    @classmethod
    def from_observations(cls, observations: Tensor, context: TermContext) -> DensePoseTerm:
        """The term of ``(B, H, W, 3)`` IUV images, with the fit's body as lookup table."""
        return cls(observations, body=context.body, **context.options)

    def __init__(
        self,
        iuv: Tensor | np.ndarray,
        body: BodyModel | None = None,
        uv: DensePoseUV | str | os.PathLike | None = None,
        max_samples: int = 1000,
        seed: int = 0,
        rho: float | None = 100.0,
        crop_size: float | None = 224.0,
        reference_points: float = REFERENCE_POINTS,
    ) -> None:
        iuv = torch.as_tensor(iuv)
        if iuv.ndim != 4 or iuv.shape[-1] != 3 or iuv.dtype != torch.uint8:
            raise ValueError(
                "densepose term: iuv must be uint8 of shape (B, H, W, 3) with channels "
                f"(I, U, V), got {iuv.dtype} {tuple(iuv.shape)}"
            )
        if max_samples < 1:
            raise ValueError(f"densepose term: max_samples must be >= 1, got {max_samples}")
        table = lookup_table(body, uv)
        device = iuv.device
        iuv = iuv.cpu()
        if iuv.numel() and int(iuv[..., 0].max()) > NUM_PARTS:
            raise ValueError(
                f"densepose term: iuv channel 0 (I) must lie in 0-{NUM_PARTS}, got "
                f"{int(iuv[..., 0].max())} (channels in DensePose's order I, U, V?)"
            )

        batch, height, width, _ = iuv.shape
        pixel, taken = sample_pixels(iuv[..., 0] > 0, max_samples, seed)
        flat = iuv.reshape(batch, height * width, 3).gather(1, pixel[..., None].expand(-1, -1, 3))
        parts = torch.where(taken, flat[..., 0].long(), 0)
        vertex, found = nearest_vertices(
            table, parts.numpy(), flat[..., 1].numpy() / 255.0, flat[..., 2].numpy() / 255.0
        )
        used = taken & torch.from_numpy(found)
        self.pixels = torch.stack([pixel % width, pixel // width], dim=-1).to(device)
        targets = self.pixels.to(torch.get_default_dtype())
        super().__init__(
            torch.from_numpy(vertex).to(device),
            targets,
            used.to(device),
            table.num_vertices,
            parts=parts.to(device),
            rho=rho,
            crop_size=crop_size,
            reference_points=reference_points,
        )


def lookup_table(body: BodyModel | None, uv: DensePoseUV | str | os.PathLike | None) -> DensePoseUV:
    """The DensePose table of the term: ``uv`` (a path is DensePose's ``UV_Processed.mat``,
    which describes official SMPL's 6890 vertices), else the body's labels.

    Raises:
        ValueError: no table to be had, an empty one, or one for a body of another vertex
            count.
    """
    if isinstance(uv, DensePoseUV):
        table = uv
    elif uv is not None:
        table = read_uv_processed(uv, SMPL_NUM_VERTICES)
    elif body is not None and body.dp_I is not None:
        table = DensePoseUV.from_per_vertex(
            body.dp_I.cpu().numpy(),
            body.dp_U.cpu().numpy(),
            body.dp_V.cpu().numpy(),
            source=str(body.source),
        )
    else:
        source = "no body" if body is None else f"body {body.source} has no dp_I/dp_U/dp_V"
        raise ValueError(
            "densepose term: needs DensePose coordinates of the body: pass body= a body with "
            f"DensePose labels or uv= DensePose's UV_Processed.mat ({source})"
        )
    if table.part.size == 0:
        raise ValueError(f"densepose term: the DensePose table {table.source} has no entries")
    if body is not None and table.num_vertices != body.num_vertices:
        raise ValueError(
            f"densepose term: the DensePose table {table.source} describes "
            f"{table.num_vertices} vertices, body {body.source} has {body.num_vertices}"
        )
    return table


def sample_pixels(person: Tensor, max_samples: int, seed: int) -> tuple[Tensor, Tensor]:
    """Draw up to ``max_samples`` person pixels per image, uniformly without replacement.

    Every pixel gets a uniform random key (one generator seeded with ``seed`` for the batch);
    the person pixels with the smallest keys are drawn.

    Args:
        person: ``(B, H, W)`` bool person mask (CPU).
        max_samples: most pixels per image.
        seed: seed of the keys.
    Returns:
        ``pixel`` ``(B, N)`` long flat indices ``row * W + column`` and ``taken`` ``(B, N)``
        bool (False in slots beyond an image's person pixels), ``N = min(max_samples, H W)``.
    """
    generator = torch.Generator().manual_seed(seed)
    flat = person.flatten(1)
    keys = torch.rand(flat.shape, generator=generator)
    keys = torch.where(flat, keys, 2.0)
    count = min(max_samples, flat.shape[1])
    chosen, pixel = keys.topk(count, dim=1, largest=False)
    return pixel, chosen < 2.0


def nearest_vertices(
    table: DensePoseUV, parts: np.ndarray, u: np.ndarray, v: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The body vertex whose DensePose ``(U, V)`` is nearest to each query within its part.

    Args:
        table: the body's DensePose entries.
        parts: ``(...)`` int query parts (0 = no query); u, v: ``(...)`` in ``[0, 1]``.
    Returns:
        ``vertex`` ``(...)`` int64 (0 where not found) and ``found`` ``(...)`` bool: the query
        has a part and the table has entries of that part.
    """
    from scipy.spatial import cKDTree  # here, not at the top: importing it takes ~0.2 s

    tree = cKDTree(np.stack([table.u, table.v, PART_SPACING * table.part], axis=-1))
    queries = np.stack([u, v, PART_SPACING * parts], axis=-1).reshape(-1, 3)
    _, entry = tree.query(queries)
    entry = entry.reshape(parts.shape)
    found = (parts > 0) & (table.part[entry] == parts)
    return np.where(found, table.vertex[entry], 0), found
