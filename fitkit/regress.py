"""``fitkit.regress``: initial SMPL parameters for every photo, from the HMR/SPIN regressor.

```python
import fitkit
estimate = fitkit.regress("photo.jpg", keypoints="photo_keypoints.json")
estimate.params["body_pose"], estimate.params["transl"]        # full image's camera frame
result = fitkit.fit("photo.jpg", keypoints="photo_keypoints.json", init=estimate)
result = fitkit.fit("photo.jpg", keypoints="photo_keypoints.json", init="regress")  # the same
```

Each image is cropped to a square box around the person (:func:`person_boxes`), resampled to the
network's input size (:func:`fitkit.geometry.crop_images`) and regressed
(:class:`fitkit.nets.regressor.Regressor`); the weak-perspective crop camera becomes the
translation in the full image's camera frame
(:func:`fitkit.geometry.weak_perspective_to_full_frame`, seed 000 A.1). The camera is the one
given, else the default camera of the image (:meth:`fitkit.geometry.Camera.default`): the same
camera ``fit`` then uses from the record's ``focal_length`` and ``camera_center``.

The box comes from, in this order: the given person box; else the bounding box of the keypoints
with confidence above ``min_confidence`` (at least :data:`MIN_KEYPOINTS` of them); else the
whole image (the square around it). A person box or keypoint box is enlarged to the fill the
networks were trained with (the person's larger side is :data:`fitkit.geometry.crop.CROP_FILL`
of the box side) and kept inside the image where it can (:func:`fitkit.geometry.crop_boxes`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fitkit.fitting.result import parameter_arrays
from fitkit.fitting.settings import resolve_device
from fitkit.geometry import (
    Camera,
    crop_boxes,
    crop_images,
    pixels_to_crop,
    weak_perspective_to_full_frame,
)
from fitkit.io.inputs import FitInputError, ImageInput, read_images, read_keypoints
from fitkit.io.keypoint_formats import KEYPOINT_FORMATS, format_code
from fitkit.io.params import write_params
from fitkit.nets.checkpoint import load_network
from fitkit.nets.regressor import REGRESSOR_KIND, Regressor

SHIPPED_REGRESSOR = "regressor_open.pt"
"""The shipped open regressor in ``fitkit/nets/data`` (``net="auto"``)."""
MIN_KEYPOINTS = 3
"""Confident keypoints a keypoint box needs (fewer: the whole image)."""
BOX_SOURCES = ("box", "keypoints", "image")
"""Where a sample's crop box came from (:attr:`Regression.box_source`)."""


def regressor_path(net: str | os.PathLike) -> Path:
    """The checkpoint of ``"auto"``/``"open"`` (the shipped open regressor) or a path.

    Raises:
        FileNotFoundError: no such file (named; for ``"auto"``, the shipped file's path).
    """
    if isinstance(net, str) and net in ("auto", "open"):
        path = Path(str(resources.files("fitkit.nets") / "data" / SHIPPED_REGRESSOR))
        if not path.is_file():
            raise FileNotFoundError(f"the shipped open regressor is missing: {path}; give "
                                    "the path of a regressor checkpoint instead")
        return path
    path = Path(net)
    if not path.is_file():
        raise FileNotFoundError(f"regressor checkpoint not found: {path}")
    return path


def load_regressor(net: Regressor | str | os.PathLike = "auto",
                   device: torch.device | str = "cpu") -> Regressor:
    """A regressor in eval mode on ``device``: ``net`` itself, or loaded from ``"auto"`` (the
    shipped open network) or a fitkit checkpoint path (:func:`fitkit.nets.load_network`).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a fitkit regressor checkpoint (SPIN's own files:
            :func:`fitkit.nets.spin_official.load_official_spin`).
    """
    if isinstance(net, Regressor):
        return net.to(device).eval()
    return load_network(regressor_path(net), REGRESSOR_KIND, device)


@dataclass
class Regression:
    """Initial parameters regressed from B images (a :class:`fitkit.FitResult`-like record:
    ``fitkit.fit(init=...)`` takes it, :meth:`save` writes a parameter file).

    Attributes:
        params: ``global_orient`` (B, 3), ``body_pose`` (B, 69) axis-angle, ``betas`` (B, 10),
            ``transl`` (B, 3) in the full image's camera frame, ``focal_length`` (B, 2),
            ``camera_center`` (B, 2): the parameter-file layout (``docs/formats.md``).
        weak_camera: ``(B, 3)`` the network's weak-perspective crop cameras ``(s, tx, ty)``.
        box_center: ``(B, 2)`` crop box centres in image pixels.
        box_size: ``(B,)`` crop box sides in image pixels.
        box_source: per sample, where its box came from (:data:`BOX_SOURCES`).
        timings: seconds for ``"crop"``, ``"network"`` and ``"total"``.
    """

    params: dict[str, Tensor]
    weak_camera: Tensor
    box_center: Tensor
    box_size: Tensor
    box_source: list[str]
    timings: dict[str, float] = field(default_factory=dict)

    def as_arrays(self, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The rows of a parameter file: ``image_names`` (default ``row000000``, ...) and the
        ``params`` as float32 arrays.

        Raises:
            ValueError: ``names`` not of length B.
        """
        return parameter_arrays(self.params, self.box_size.shape[0], names, "Regression")

    def save(self, path: str | os.PathLike, names: Sequence[str] | None = None) -> Path:
        """Write the parameters as a parameter file (atomically; ``fitkit.fit(init=path)`` and
        ``init.npz`` of a dataset folder read it).

        Raises:
            ValueError: ``names`` not of length B; fitkit.io.ParamsFileError: repeated names.
        """
        write_params(path, self.as_arrays(names))
        return Path(path)


def person_boxes(
    image_size: Tensor,
    boxes: Tensor | None = None,
    keypoints: Tensor | None = None,
    min_confidence: float = 0.1,
) -> tuple[Tensor, Tensor, list[str]]:
    """Square crop boxes around the people of B images (the module doc's order).

    Args:
        image_size: ``(B, 2)`` image sizes ``(W, H)``.
        boxes: ``(B, 4)`` person boxes ``(x0, y0, x1, y1)`` in pixels; a row that is not finite
            or has no area is not used.
        keypoints: ``(B, K, 3)`` ``(u, v, confidence)`` in pixels.
        min_confidence: keypoints above it make a keypoint box.
    Returns:
        ``(B, 2)`` box centres, ``(B,)`` box sides (pixels), and each box's source.
    """
    size = image_size.to(torch.get_default_dtype())
    whole = torch.stack([torch.zeros_like(size), size - 1.0], dim=1)  # (B, 2, 2) corners
    points = whole
    source = torch.full((len(size),), 2, dtype=torch.long)
    if keypoints is not None:
        keypoints = keypoints.to(size)
        used = keypoints.isfinite().all(dim=-1) & (keypoints[..., 2] > min_confidence)
        xy = keypoints[..., :2]
        low = torch.where(used[..., None], xy, torch.inf).amin(dim=1)
        high = torch.where(used[..., None], xy, -torch.inf).amax(dim=1)
        found = used.sum(dim=1) >= MIN_KEYPOINTS
        points = torch.where(found[:, None, None], torch.stack([low, high], dim=1), points)
        source = torch.where(found, 1, source)
    if boxes is not None:
        boxes = boxes.to(size).view(-1, 2, 2)
        given = boxes.isfinite().flatten(1).all(dim=1) & (boxes[:, 1] > boxes[:, 0]).all(dim=1)
        points = torch.where(given[:, None, None], boxes.nan_to_num(), points)
        source = torch.where(given, 0, source)
    center, side = crop_boxes(points, image_size=size)
    image = source == 2
    center = torch.where(image[:, None], (size - 1.0) / 2.0, center)
    side = torch.where(image, size.amax(dim=-1), side)
    return center, side, [BOX_SOURCES[int(code)] for code in source]


def person_crop(image: np.ndarray, box_center: Tensor, box_size: float, resolution: int,
                device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """One image's box resampled to ``resolution`` pixels (:func:`fitkit.geometry.crop_images`),
    converting only the box's pixels, and, for a box ``k >= 2`` times the crop's side, averaged
    over ``k x k`` blocks first (a large photo is not point-sampled: no aliasing; the averages
    are rounded to bytes).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        box_center: ``(2,)`` box centre in pixels; box_size: its side in pixels.
        resolution: side of the crop.
    Returns:
        ``(1, 3, resolution, resolution)`` RGB in [0, 1]; zeros outside the image.
    """
    height, width = image.shape[:2]
    k = max(int(box_size // resolution), 1)
    center = box_center.double()
    low = [int(np.clip(np.floor(float(center[i]) - box_size / 2) - k, 0, side))
           for i, side in enumerate((width, height))]
    high = [int(np.clip(np.ceil(float(center[i]) + box_size / 2) + k + 1, 0, side))
            for i, side in enumerate((width, height))]
    high = [start + (stop - start) // k * k for start, stop in zip(low, high, strict=True)]
    if high[0] <= low[0] or high[1] <= low[1]:  # the box misses the image
        return torch.zeros(1, 3, resolution, resolution, device=device, dtype=dtype)
    region = np.ascontiguousarray(image[low[1]:high[1], low[0]:high[0]])
    if k > 1:  # block averages (PIL's reduce, on the bytes: fast)
        region = np.asarray(Image.fromarray(region).reduce(k))
    region = torch.from_numpy(region.copy()).to(device, dtype).permute(2, 0, 1)[None] / 255.0
    center = (center - center.new_tensor(low) - (k - 1) / 2.0) / k
    return crop_images(region, center[None].to(device, dtype),
                       torch.tensor([box_size / k], device=device, dtype=dtype), resolution)


def _check_network_keypoints(model: Regressor, keypoints: Tensor | None,
                             named: Any) -> None:
    """Refuse, naming the format, keypoints a network that reads them cannot use: none, another
    count of points, or files that name another format."""
    name = model.config.keypoint_format
    if not name:
        return
    count = model.config.keypoint_count
    if keypoints is None:
        raise FitInputError(f"regress: this regressor reads the person's {name} keypoints "
                            f"({count} points) besides the crop, and none were given")
    codes = set(np.unique(np.asarray(named)).tolist()) - {0} if named is not None else set()
    other = sorted(list(KEYPOINT_FORMATS)[code - 1] for code in codes - {format_code(name)})
    if keypoints.shape[1] != count or other:
        given = f"files of format {', '.join(other)}" if other else \
            f"{keypoints.shape[1]} points per person"
        raise FitInputError(f"regress: this regressor reads {name} keypoints ({count} points), "
                            f"got {given}")


def _as_tensor(value: Any, name: str, shape: tuple[int | None, ...]) -> Tensor:
    """``value`` as a float tensor of ``shape`` (None: any size), or a clear error."""
    tensor = torch.as_tensor(np.asarray(value.detach().cpu() if isinstance(value, Tensor)
                                        else value, dtype=np.float64))
    if tensor.ndim != len(shape) or any(want is not None and have != want
                                        for have, want in zip(tensor.shape, shape, strict=True)):
        expected = ", ".join("B" if i == 0 else str(want) if want is not None else "K"
                             for i, want in enumerate(shape))
        raise FitInputError(f"regress: {name} must have shape ({expected}), got "
                            f"{tuple(tensor.shape)}")
    return tensor.float()


@torch.no_grad()
def regress(
    images: ImageInput,
    boxes: Any = None,
    keypoints: Any = None,
    net: Regressor | str | os.PathLike = "auto",
    device: torch.device | str | None = None,
    batch_size: int = 32,
    camera: Camera | None = None,
    min_confidence: float = 0.1,
) -> Regression:
    """Regress initial SMPL parameters from images (see the module doc).

    Args:
        images: a path, a list of paths, ``(H, W, 3)`` / ``(B, H, W, 3)`` arrays or tensors, or
            a list of ``(H, W, 3)`` arrays (sizes may differ).
        boxes: ``(B, 4)`` person boxes ``(x0, y0, x1, y1)`` in pixels (array or tensor).
        keypoints: what ``fitkit.fit`` takes as ``keypoints``: ``(B, K, 3)`` arrays of a
            keypoint format or JSON path(s) (:func:`fitkit.io.inputs.read_keypoints`, or its
            output): the boxes, and the network's input where it reads keypoints (required
            then, in its format).
        net: ``"auto"`` (the shipped open regressor ``fitkit/nets/data/regressor_open.pt``), a
            fitkit regressor checkpoint path, or a :class:`~fitkit.nets.regressor.Regressor`.
        device: where the network runs; default CUDA when available, else the CPU.
        batch_size: crops per forward pass.
        camera: the images' B cameras (default :meth:`Camera.default` of each image's size).
        min_confidence: keypoints above it make a keypoint box.
    Returns:
        A :class:`Regression` (parameters in the full image's camera frame, on the CPU).
    Raises:
        FileNotFoundError: a missing image, keypoint file or checkpoint (``"auto"`` before the
            shipped network exists: its path).
        FitInputError: inputs of the wrong shape or batch size, a bad ``batch_size``, an
            unreadable image; no keypoints, or another format, for a network that reads them.
        CheckpointError: a checkpoint that is not a fitkit regressor.
    """
    start = time.perf_counter()
    if batch_size < 1:
        raise FitInputError(f"regress: batch_size must be positive, got {batch_size}")
    device = resolve_device(device)
    model = load_regressor(net, device)
    pictures = read_images(images)
    count = len(pictures)
    if not count:
        raise FitInputError("regress: no images")
    size = torch.tensor([[image.shape[1], image.shape[0]] for image in pictures],
                        dtype=torch.float32)
    if camera is None:
        camera = Camera.default(size)
    elif camera.focal_length.shape[0] != count:
        raise FitInputError(f"regress: {camera.focal_length.shape[0]} cameras for {count} images")
    camera = camera.to("cpu", torch.float32)
    named = None
    if keypoints is not None:
        if not isinstance(keypoints, Mapping):
            keypoints = read_keypoints(keypoints)
        named = keypoints.get("keypoint_format")
        keypoints = _as_tensor(keypoints["keypoints"], "keypoints", (None, None, 3))
    _check_network_keypoints(model, keypoints, named)
    if boxes is not None:
        boxes = _as_tensor(boxes, "boxes", (None, 4))
    for name, value in (("keypoints", keypoints), ("boxes", boxes)):
        if value is not None and len(value) != count:
            raise FitInputError(f"regress: {len(value)} rows of {name} for {count} images")
    box_center, box_size, source = person_boxes(size, boxes, keypoints, min_confidence)
    resolution = model.config.image_size
    dtype = model.init_pose.dtype
    crops = torch.cat([person_crop(image, box_center[i], float(box_size[i]), resolution, device,
                                   dtype) for i, image in enumerate(pictures)])
    cropped = time.perf_counter()
    points = None
    if model.config.keypoint_format:
        points = torch.cat([pixels_to_crop(keypoints[..., :2], box_center, box_size),
                            keypoints[..., 2:]], dim=-1).to(device)
    outputs = [model(model.normalize_crops(crops[first:first + batch_size]),
                     None if points is None else points[first:first + batch_size])
               for first in range(0, count, batch_size)]
    estimate = {key: torch.cat([output[key] for output in outputs]).float().cpu()
                for key in ("global_orient", "body_pose", "betas", "cam")}
    regressed = time.perf_counter()
    transl = weak_perspective_to_full_frame(estimate["cam"], box_center, box_size, camera)
    params = {"global_orient": estimate["global_orient"], "body_pose": estimate["body_pose"],
              "betas": estimate["betas"], "transl": transl,
              "focal_length": camera.focal_length.clone(),
              "camera_center": camera.principal_point.clone()}
    return Regression(params, estimate["cam"], box_center, box_size, source,
                      {"crop": cropped - start, "network": regressed - cropped,
                       "total": time.perf_counter() - start})
