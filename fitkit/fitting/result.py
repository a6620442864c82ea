"""What every solver returns: :class:`FitResult` and its per-sample flags; saving it as a
parameter file and its bodies as meshes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from fitkit.fitting.plausibility import PLAUSIBILITY_FLAGS
from fitkit.io.params import write_params
from fitkit.io.runs import atomic_write

FLAG_NAMES: tuple[str, ...] = ("nan", "diverged", "no_data", "bad_input", *PLAUSIBILITY_FLAGS)
"""Per-sample flags of a :class:`FitResult`: the energy or gradient turned NaN/Inf, the energy
diverged, no usable observation, values that cannot be fitted (left out of the fit, the reason
in :attr:`FitResult.errors`); then the plausibility flags of a fit that ran but whose body is
likely wrong (:mod:`fitkit.fitting.plausibility`): ``hyperextended`` (an elbow or knee bent
backwards), ``reprojection`` (median 2D error above 5 % of the person's height), ``facing``
(the torso faces away from the camera while the face is detected, or the reverse), ``depth``
(the body's projected size off the 2D data's)."""

MESH_SUFFIXES: tuple[str, ...] = (".obj", ".ply", ".glb")
"""The mesh files :meth:`FitResult.export_mesh` writes (through ``trimesh``)."""


def parameter_arrays(params: dict[str, Tensor], count: int, names: Sequence[str] | None,
                     owner: str) -> dict[str, np.ndarray]:
    """The rows of a parameter file: ``image_names`` (default ``row000000``, ...) and
    ``params`` as float32 arrays ``(B, ...)``.

    Raises:
        ValueError: ``names`` not of length ``count`` (``owner`` names the record).
    """
    names = [f"row{row:06d}" for row in range(count)] if names is None else list(names)
    if len(names) != count:
        raise ValueError(f"{owner}: {len(names)} names for {count} samples")
    return {"image_names": np.array(names, dtype=str)} | {
        key: value.detach().cpu().float().numpy() for key, value in params.items()}


@dataclass
class FitResult:
    """What a solver returns (:meth:`SMPLify.fit`, any :class:`~fitkit.fitting.Solver`; all
    tensors detached, batch B).

    Attributes:
        params: ``global_orient`` (B, 3), ``body_pose`` (B, 69) axis-angle, ``betas`` (B, 10),
            ``transl`` (B, 3), ``focal_length`` (B, 2), ``camera_center`` (B, 2): the layout of
            the parameter files (``docs/formats.md``).
        vertices: ``(B, V, 3)`` fitted vertices, camera frame (the world frame, as the
            parameters, when the cameras carry extrinsics: ``docs/groups.md``).
        joints: ``(B, 24, 3)`` fitted SMPL joints, in the frame of ``vertices``.
        energy: ``(B,)`` the last stage's total energy at the returned parameters (a sample
            group's total in each of its rows).
        terms: the last stage's weighted energies by term name (data terms by their names,
            ``pose_prior``, ``shape_prior``, ``bending``, ``depth``), each ``(B,)``; they sum
            to ``energy`` (for a sample group, summed over its rows as well).
        stages: per stage, ``{"energy": (B,), "terms": {name: (B,)}}`` at its best iterate.
        flags: :data:`FLAG_NAMES`: ``nan``, ``diverged``, ``no_data``, ``bad_input``, ``(B,)``
            bool each (a flag the solver did not set is all False).
        timings: seconds per stage name and ``"total"``.
        errors: per sample, why it was flagged ``bad_input`` (``""`` when it was not); default
            all ``""``.
        faces: ``(F, 3)`` the body's triangles (vertex indices), for :meth:`export_mesh`;
            ``None`` when the solver did not give them.
        measures: the plausibility measures behind the flags, ``(B,)`` each, NaN where not
            measured (:func:`fitkit.fitting.plausibility.measure_plausibility`:
            ``relative_error``, the median 2D error over the person's height; ``size_ratio``;
            ``hyperextension`` in degrees; ``facing``; ``face``); empty when the solver gave
            none.
    Raises:
        ValueError: ``errors`` not of length B.
    """

    params: dict[str, Tensor]
    vertices: Tensor
    joints: Tensor
    energy: Tensor
    terms: dict[str, Tensor]
    stages: list[dict[str, Tensor | dict[str, Tensor]]]
    flags: dict[str, Tensor]
    timings: dict[str, float]
    errors: list[str] = field(default_factory=list)
    faces: Tensor | None = None
    measures: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        count = self.energy.shape[0]
        self.errors = list(self.errors) or [""] * count
        if len(self.errors) != count:
            raise ValueError(f"FitResult: {len(self.errors)} errors for {count} samples")
        missing = {name: torch.zeros(count, dtype=torch.bool, device=self.energy.device)
                   for name in FLAG_NAMES if name not in self.flags}
        self.flags = {**self.flags, **missing}

    @property
    def ok(self) -> Tensor:
        """``(B,)`` bool: samples with no flag set."""
        return ~torch.stack(list(self.flags.values())).any(dim=0)

    def as_arrays(self, names: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """The result as the rows of a parameter file (``docs/formats.md``) with energies,
        flags and errors: the layout of ``refine``'s part files.

        Args:
            names: B image name stems (unique); default ``row000000``, ``row000001``, ...
        Returns:
            ``image_names`` (B,) str; the ``params`` float32 ``(B, ...)``; ``energy`` and
            ``energy_TERM`` for each term of :attr:`terms` ``(B,)`` float64; ``flag_NAME``
            ``(B,)`` bool for each of :data:`FLAG_NAMES`; ``measure_NAME`` ``(B,)`` float64 for
            each of :attr:`measures`; ``error`` ``(B,)`` str.
        Raises:
            ValueError: ``names`` not of length B.
        """
        arrays = parameter_arrays(self.params, self.energy.shape[0], names, "FitResult")
        arrays["energy"] = self.energy.detach().cpu().double().numpy()
        arrays |= {f"energy_{key}": value.detach().cpu().double().numpy()
                   for key, value in self.terms.items()}
        arrays |= {f"flag_{key}": value.detach().cpu().numpy() for key, value in self.flags.items()}
        arrays |= {f"measure_{key}": value.detach().cpu().double().numpy()
                   for key, value in self.measures.items()}
        arrays["error"] = np.array(self.errors, dtype=str)
        return arrays

    def save(self, path: str | os.PathLike, names: Sequence[str] | None = None) -> Path:
        """Write the result as a parameter file with energies, flags and errors
        (:meth:`as_arrays`), atomically; :func:`fitkit.io.read_params` reads it back and
        ``fitkit.fit(init=path)`` starts from it.

        Args:
            path: the ``.npz`` (parent folders are created).
            names: B image name stems (unique), when known; default ``row000000``, ...
        Returns:
            ``path``.
        Raises:
            ValueError: ``names`` not of length B; fitkit.io.ParamsFileError: repeated names.
        """
        write_params(path, self.as_arrays(names))
        return Path(path)

    def export_mesh(
        self,
        path: str | os.PathLike,
        index: int | Literal["all"] = 0,
        faces: Tensor | np.ndarray | None = None,
    ) -> Path:
        """Write fitted bodies as a mesh file (``.obj``, ``.ply`` or ``.glb``, through
        ``trimesh``), atomically.

        Vertices are in meters in the camera frame of the full image (x right, y down,
        z forward), as :attr:`vertices`; viewers with y up show the body upside down.

        Args:
            path: the file; its suffix picks the format (:data:`MESH_SUFFIXES`).
            index: the sample (negative counts from the end), or ``"all"``: every sample
                with finite vertices, one mesh each, named ``body_{i}`` (``.glb`` keeps them as
                separate nodes; ``.obj`` writes them as objects ``o body_{i}``; ``.ply`` holds one
                mesh: they are concatenated in sample order).
            faces: ``(F, 3)`` triangles; default :attr:`faces` (a fit's body gives them).
        Returns:
            ``path``.
        Raises:
            ValueError: an unknown suffix, no faces, an index out of range, a sample whose
                vertices are not finite (its flags and error named), or no finite sample.
        """
        import trimesh  # here, not at the top: importing trimesh takes a second

        path = Path(path)
        if path.suffix.lower() not in MESH_SUFFIXES:
            raise ValueError(f"{path}: a mesh file must end in {', '.join(MESH_SUFFIXES)}")
        faces = self.faces if faces is None else faces
        if faces is None:
            raise ValueError("this FitResult has no faces: pass faces=body.faces "
                             "(fitkit.load_body(...).faces)")
        faces = torch.as_tensor(faces).detach().cpu().numpy().astype(np.int64)
        vertices = self.vertices.detach().cpu().double().numpy()
        count = len(vertices)
        finite = np.isfinite(vertices).all(axis=(1, 2))
        if index == "all":
            rows = np.flatnonzero(finite).tolist()
            if not rows:
                raise ValueError(f"no sample of {count} has finite vertices: nothing to export")
        elif isinstance(index, int | np.integer) and -count <= index < count:
            rows = [int(index) % count]
            if not finite[rows[0]]:
                raise ValueError(f"sample {rows[0]} has no mesh: its vertices are not finite "
                                 f"({self._flags_of(rows[0])})")
        else:
            raise ValueError(f"index must be a sample index in [-{count}, {count}) or 'all', "
                             f"got {index!r}")
        meshes = {f"body_{row}": trimesh.Trimesh(vertices[row], faces, process=False)
                  for row in rows}
        if index == "all":
            content = trimesh.Scene()
            for name, mesh in meshes.items():
                content.add_geometry(mesh, node_name=name, geom_name=name)
        else:
            content = next(iter(meshes.values()))
        data = content.export(file_type=path.suffix.lower()[1:])
        atomic_write(path, data.encode() if isinstance(data, str) else data)
        return path

    def _flags_of(self, row: int) -> str:
        """The flags set on sample ``row`` and its error, for messages."""
        flags = [name for name, value in self.flags.items() if bool(value[row])]
        text = f"flags: {', '.join(flags) or 'none'}"
        return f"{text}; {self.errors[row]}" if self.errors[row] else text
