"""Training samples from a dataset folder of real images with ground-truth bodies.

A trainer that learns on the synthetic world (:mod:`fitkit.synth`) can learn on a user's own
photos instead, or on both: :class:`FolderSamples` reads a dataset folder (``docs/formats.md``)
and turns draw indices into samples: the image, the ground-truth body and camera, and an initial
estimate perturbed around the ground truth exactly as the synthetic world perturbs its own
(:mod:`fitkit.synth.init`), so a network sees the same kind of errors from both sources. What a
trainer makes of a sample (crops, renders, targets) is its own business; the displacement-network
trainer (:mod:`fitkit.train.flow`) crops around the initial mesh and renders it.

The folder::

    images/NAME.png|jpg|jpeg    the photos (any size; one person each, the one in gt.npz)
    gt.npz                      ground truth, one row per image: image_names, global_orient,
                                body_pose, betas, transl, focal_length, camera_center (the
                                camera keys may be left out when all images share one size:
                                fitkit's default camera is then used)
    init.npz                    optional: a regressor's estimates, used with ``file_init``

Every row of ``gt.npz`` is a training sample. The folder is checked when it is opened, so a long
run does not stop on its thousandth step: a missing image, a row with a non-finite value, a body
behind the camera or outside its image raise :class:`fitkit.io.dataset.DatasetError` naming the
file, key and row.

Draws are deterministic: draw ``index`` of a run seeded ``seed`` is row
``permutation(seed, epoch)[index % N]`` with ``epoch = index // N`` (every row once per epoch, in
a fresh order each epoch), and its initial estimate comes from its own generator
(:func:`draw_generator`), so a batch depends on ``(seed, indices)`` alone: resumed and
multi-worker runs draw what a whole run would.

Example (another trainer reading a folder)::

    samples = FolderSamples("data/real", body)
    batch = samples.draw(seed, range(step * 8, step * 8 + 8))
    batch.images        # list of (3, H_i, W_i) photos in [0, 1]
    batch.gt, batch.init, batch.camera, batch.gt_output.vertices, batch.init_output.joints
    crops = batch.crops(box_center, box_size, 256)      # (B, 3, 256, 256)
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fitkit.body.model import BodyModel, BodyOutput
from fitkit.geometry.camera import Camera
from fitkit.geometry.crop import crop_images
from fitkit.io.dataset import DatasetError, image_path, read_dataset_params
from fitkit.io.inputs import image_sizes, read_images
from fitkit.io.params import CAMERA_KEYS, PARAM_SIZES
from fitkit.io.runs import file_digest
from fitkit.synth.init import InitNoise, draw_init_noise, perturb_body, perturb_transl

FOLDER_STREAM = 3
"""Key that sets the folder's draw generators apart from the synthetic world's streams."""
ORDER_STREAM = 4
"""Key of the generators of the epochs' row orders."""

CHECK_CHUNK = 64
"""Rows per body evaluation when a folder is checked on opening."""


@dataclass
class FolderSample:
    """B samples drawn from a dataset folder.

    Attributes:
        rows: ``(B,)`` rows of ``gt.npz``; names: their image names.
        images: B tensors ``(3, H_i, W_i)``, RGB in [0, 1] (the photos differ in size).
        camera: the B cameras of the full images (``image_size`` per sample).
        gt, init: body parameters by name, ``global_orient`` (B, 3), ``body_pose`` (B, 69),
            ``betas`` (B, 10), ``transl`` (B, 3).
        gt_output, init_output: the bodies of ``gt`` and ``init`` (``vertices`` (B, V, 3),
            ``joints`` (B, 24, 3), camera frame).
        from_file: ``(B,)`` bool, the initial estimates taken from ``init.npz``.
    """

    rows: list[int]
    names: list[str]
    images: list[Tensor]
    camera: Camera
    gt: dict[str, Tensor]
    init: dict[str, Tensor]
    gt_output: BodyOutput
    init_output: BodyOutput
    from_file: Tensor

    def crops(self, box_center: Tensor, box_size: Tensor, resolution: int) -> Tensor:
        """The square boxes of the images resampled to ``resolution`` pixels
        (:func:`fitkit.geometry.crop_images`, one image at a time since their sizes differ).

        Args:
            box_center: ``(B, 2)`` box centres in image pixels; box_size: ``(B,)`` sides.
            resolution: side of the crops.
        Returns:
            ``(B, 3, resolution, resolution)``; zeros outside the images.
        """
        return torch.cat([
            crop_images(image[None], box_center[i:i + 1], box_size[i:i + 1], resolution)
            for i, image in enumerate(self.images)])


def draw_generator(seed: int, index: int) -> torch.Generator:
    """The generator of draw ``index`` of a folder run seeded ``seed`` (a stream apart from the
    synthetic world's samples and from a trainer's augmentations)."""
    return _stream(seed, index, FOLDER_STREAM)


def _stream(seed: int, index: int, key: int) -> torch.Generator:
    """A generator for ``(seed, index, key)`` (independent streams through NumPy's
    ``SeedSequence``)."""
    state = np.random.SeedSequence([seed, index, key]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class FolderSamples:
    """A dataset folder of images with ground truth, ready to draw training samples from.

    Args:
        root: the folder (module doc).
        body: the body model the ground truth is given for.
        init_noise: magnitudes of the initial-estimate perturbation (default the synthetic
            world's, :class:`fitkit.synth.init.InitNoise`).
        file_init: probability that a sample starts from its row of ``init.npz`` (a regressor's
            estimate, as seed 003's training mixes in PARE and ProHMR predictions) instead of a
            perturbation of the ground truth; > 0 needs ``init.npz`` with every row of
            ``gt.npz``.
    Attributes:
        names: the N image names, in ``gt.npz``'s row order; paths: their image files.
        gt: ground truth ``(N, ...)`` numpy arrays by key (body parameters and camera keys).
        image_size: ``(N, 2)`` image sizes ``(W, H)``.
        file_inits: the rows of ``init.npz`` in ``gt.npz``'s order (with ``file_init``), or
            ``None``.
    Raises:
        DatasetError: no folder, no ``gt.npz``, a malformed parameter file, a row of ``gt.npz``
            without its image, with a non-finite value, with its body behind the camera or
            projecting outside its image; with ``file_init``, no ``init.npz`` or one that lacks
            rows (each names file, key and row).
        ValueError: ``file_init`` outside [0, 1].
    """

    def __init__(self, root: str | os.PathLike, body: BodyModel,
                 init_noise: InitNoise | None = None, file_init: float = 0.0) -> None:
        if not 0.0 <= file_init <= 1.0:
            raise ValueError(f"file_init must lie in [0, 1], got {file_init!r}")
        self.root = Path(root)
        self.body = body
        self.init_noise = init_noise or InitNoise()
        self.file_init = file_init
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder not found: {self.root}")
        self.gt_path = self.root / "gt.npz"
        if not self.gt_path.is_file():
            raise DatasetError(f"{self.gt_path} not found: training on a folder needs the "
                               "ground-truth parameters of its images (docs/formats.md)")
        gt = self._read(self.gt_path)
        self.names: list[str] = gt.pop("image_names").tolist()
        if not self.names:
            raise DatasetError(f"{self.gt_path}: key 'image_names' has no rows: nothing to "
                               "train on")
        self.gt = {key: gt[key] for key in (*PARAM_SIZES, *CAMERA_KEYS)}
        self._check_finite(self.gt_path, self.gt)
        self.paths = [image_path(self.root, name) for name in self.names]
        for row, (name, path) in enumerate(zip(self.names, self.paths, strict=True)):
            if not path.is_file():
                raise DatasetError(f"{self.gt_path}: key 'image_names' row {row} ({name!r}): "
                                   f"no image {path.with_suffix('')}.png|jpg|jpeg")
        try:
            self.image_size = image_sizes(self.paths).astype(np.float32)  # (N, 2) W, H
        except ValueError as error:
            raise DatasetError(str(error)) from None
        self.init_path = self.root / "init.npz"
        self.file_inits = self._read_file_inits() if file_init > 0 else None
        self._check_bodies()
        self._orders: dict[tuple[int, int], Tensor] = {}

    def __len__(self) -> int:
        """N, the rows of ``gt.npz``."""
        return len(self.names)

    def digest(self) -> dict[str, str]:
        """The content this folder's samples come from, for a run's resume settings:
        ``gt.npz``, the images of its rows (names and bytes), and ``init.npz`` when used
        (:func:`fitkit.io.runs.file_digest`)."""
        images = hashlib.sha256()
        for name, path in zip(self.names, self.paths, strict=True):
            images.update(f"{name}{path.suffix}\0{file_digest(path)}\0".encode())
        result = {"gt.npz": file_digest(self.gt_path), "images": f"sha256:{images.hexdigest()}"}
        if self.file_inits is not None:
            result["init.npz"] = file_digest(self.init_path)
        return result

    def rows(self, seed: int, indices: Sequence[int]) -> list[int]:
        """The rows of draws ``indices`` of a run seeded ``seed``: every row once per epoch of
        N draws, in a fresh order each epoch (module doc)."""
        count = len(self)
        result = []
        for index in indices:
            epoch = index // count
            if (seed, epoch) not in self._orders:
                if len(self._orders) > 4:
                    self._orders.clear()
                generator = _stream(seed, epoch, ORDER_STREAM)
                self._orders[seed, epoch] = torch.randperm(count, generator=generator)
            result.append(int(self._orders[seed, epoch][index % count]))
        return result

    def draw(self, seed: int, indices: Sequence[int],
             keep_pose: Tensor | None = None) -> FolderSample:
        """Draws ``indices`` of a run seeded ``seed`` (module doc): :meth:`sample` of their rows
        with their own generators (:func:`draw_generator`).

        Args:
            seed: the run's seed; indices: B draw indices (any non-negative integers).
            keep_pose: see :meth:`sample`.
        """
        return self.sample([draw_generator(seed, index) for index in indices],
                           self.rows(seed, indices), keep_pose)

    @torch.no_grad()
    def sample(self, generator: torch.Generator | Sequence[torch.Generator], rows: Sequence[int],
               keep_pose: Tensor | None = None) -> FolderSample:
        """Rows of the folder with initial estimates drawn for them.

        Each sample draws, from its generator and in this order, whether it starts from
        ``init.npz`` (one uniform, drawn whatever ``file_init`` is) and the perturbation of
        :func:`fitkit.synth.init.draw_init_noise`; the initial orientation, pose and shape are
        :func:`~fitkit.synth.init.perturb_body` of the ground truth's, its translation
        :func:`~fitkit.synth.init.perturb_transl` of the ground truth's (a depth error that
        keeps the root joint's image position, and a shift by a fraction of the person's size).

        Args:
            generator: one generator for all samples (drawn in row order) or one per sample.
            rows: B rows of ``gt.npz`` (repeats allowed).
            keep_pose: ``(B,)`` bool, samples whose initial estimate keeps the ground truth's
                orientation and pose (only shape and translation perturbed, or taken from
                ``init.npz``); default none.
        Returns:
            A :class:`FolderSample`.
        Raises:
            IndexError: a row outside ``0 ... N - 1``.
            FileNotFoundError, FitInputError: an image vanished or became unreadable.
        """
        rows = [int(row) for row in rows]
        for row in rows:
            if not 0 <= row < len(self):
                raise IndexError(f"row {row} of a folder of {len(self)} rows ({self.gt_path})")
        batch = len(rows)
        generators = (list(generator) if isinstance(generator, Sequence)
                      else [generator] * batch)
        if len(generators) != batch:
            raise ValueError(f"{len(generators)} generators for {batch} rows")
        choice = torch.stack([torch.rand((), generator=g) for g in generators])
        noise = [draw_init_noise(g, PARAM_SIZES["betas"]) for g in generators]
        noise = {key: torch.stack([n[key] for n in noise]) for key in noise[0]}
        from_file = choice < self.file_init

        body = self.body
        gt = {key: torch.from_numpy(self.gt[key][rows]).to(body.device) for key in PARAM_SIZES}
        camera = Camera(torch.from_numpy(self.gt["focal_length"][rows]),
                        torch.from_numpy(self.gt["camera_center"][rows]),
                        torch.from_numpy(self.image_size[rows])).to(body.device)
        gt_output = body(**gt)
        pixels = camera.project(gt_output.vertices)
        person_size = (pixels.amax(1) - pixels.amin(1)).amax(-1)
        root = gt_output.joints[:, 0] - gt["transl"]  # the root joint at zero translation

        orient, pose, betas = perturb_body(gt["global_orient"], gt["body_pose"], gt["betas"],
                                           noise, self.init_noise)
        init = {"global_orient": orient, "body_pose": pose, "betas": betas}
        use_file = from_file[:, None].to(body.device)
        if self.file_inits is not None:
            file_rows = {key: torch.from_numpy(value[rows]).to(body.device)
                         for key, value in self.file_inits.items()}
            init = {key: torch.where(use_file, file_rows[key], value)
                    for key, value in init.items()}
        if keep_pose is not None:
            keep = keep_pose.to(body.device)[:, None]
            for key in ("global_orient", "body_pose"):
                init[key] = torch.where(keep, gt[key], init[key])
        centred = body(**{key: init[key] for key in ("global_orient", "body_pose", "betas")})
        transl = perturb_transl(gt["transl"], root, centred.joints[:, 0],
                                camera.focal_length.mean(-1), person_size, noise,
                                self.init_noise)
        if self.file_inits is not None:
            transl = torch.where(use_file, file_rows["transl"], transl)
        init["transl"] = transl
        init_output = BodyOutput(centred.vertices + transl[:, None], centred.joints
                                 + transl[:, None], centred.selector)
        images = [torch.tensor(image).permute(2, 0, 1).float().div(255.0).to(body.device)
                  for image in read_images([self.paths[row] for row in rows])]
        return FolderSample(rows, [self.names[row] for row in rows], images, camera, gt,
                            {key: init[key] for key in PARAM_SIZES}, gt_output, init_output,
                            from_file)

    def _read(self, path: Path) -> dict[str, np.ndarray]:
        """A parameter file of the folder (:func:`fitkit.io.dataset.read_dataset_params`)."""
        try:
            return read_dataset_params(path)
        except (FileNotFoundError, ValueError) as error:
            raise DatasetError(str(error)) from None

    @staticmethod
    def _check_finite(path: Path, arrays: dict[str, np.ndarray]) -> None:
        """Refuse a row with a non-finite value (naming file, key and row)."""
        for key, value in arrays.items():
            bad = ~np.isfinite(value.reshape(len(value), -1)).all(axis=1)
            if bad.any():
                raise DatasetError(f"{path}: key '{key}' row {int(np.argmax(bad))}: "
                                   "non-finite value")

    def _read_file_inits(self) -> dict[str, np.ndarray]:
        """The rows of ``init.npz`` in ``gt.npz``'s order."""
        if not self.init_path.is_file():
            raise DatasetError(f"{self.init_path} not found: file_init > 0 starts samples from "
                               "the folder's initial estimates")
        arrays = self._read(self.init_path)
        index = {name: row for row, name in enumerate(arrays.pop("image_names").tolist())}
        missing = [name for name in self.names if name not in index]
        if missing:
            raise DatasetError(f"{self.init_path}: key 'image_names' lacks {missing[:5]} of "
                               "gt.npz")
        picked = [index[name] for name in self.names]
        inits = {key: arrays[key][picked] for key in PARAM_SIZES}
        self._check_finite(self.init_path, inits)
        return inits

    @torch.no_grad()
    def _check_bodies(self) -> None:
        """Refuse a row whose ground-truth body is behind the camera or outside its image."""
        for start in range(0, len(self), CHECK_CHUNK):
            rows = list(range(start, min(start + CHECK_CHUNK, len(self))))
            gt = {key: torch.from_numpy(self.gt[key][rows]).to(self.body.device)
                  for key in PARAM_SIZES}
            vertices = self.body(**gt).vertices
            depth = vertices[..., 2].amin(1)
            for offset in torch.nonzero(depth <= 0).flatten().tolist():
                row = rows[offset]
                raise DatasetError(f"{self.gt_path}: key 'transl' row {row} "
                                   f"({self.names[row]!r}): the body reaches behind the camera "
                                   f"(nearest vertex at z = {float(depth[offset]):.3f} m)")
            camera = Camera(torch.from_numpy(self.gt["focal_length"][rows]),
                            torch.from_numpy(self.gt["camera_center"][rows]),
                            torch.from_numpy(self.image_size[rows])).to(self.body.device)
            pixels = camera.project(vertices)
            low, high = pixels.amin(1), pixels.amax(1)
            outside = ((high < -0.5) | (low > camera.image_size - 0.5)).any(-1)
            for offset in torch.nonzero(outside).flatten().tolist():
                row = rows[offset]
                raise DatasetError(f"{self.gt_path}: row {row} ({self.names[row]!r}): the body "
                                   "projects outside its image (check transl, focal_length, "
                                   "camera_center)")
