"""Fitting: the solver seam and batched SMPLify (stages, weights and presets as data).

A :class:`Solver` turns a :class:`FitBatch` (observations by term, cameras, init, groups) into a
:class:`FitResult` (per-sample parameters, energies per term, failure flags).
``SMPLify(body, prior, "spin" | "refine" | FitConfig)`` is one: ``.solve(batch)``, or
``.fit(terms, camera, init)`` with terms already built.
"""

from fitkit.fitting.config import (
    PARAM_NAMES,
    PRESETS,
    FitConfig,
    StageConfig,
    preset,
    zip_stages,
)
from fitkit.fitting.result import FLAG_NAMES, FitResult
from fitkit.fitting.smplify import LatentPoseSpace, PoseSpace, SMPLify, pose_space
from fitkit.fitting.solver import (
    FitBatch,
    SampleGroup,
    Solver,
    build_terms,
    to_device,
)

__all__ = [
    "FLAG_NAMES",
    "PARAM_NAMES",
    "PRESETS",
    "FitBatch",
    "FitConfig",
    "FitResult",
    "LatentPoseSpace",
    "PoseSpace",
    "SMPLify",
    "SampleGroup",
    "Solver",
    "StageConfig",
    "build_terms",
    "pose_space",
    "preset",
    "to_device",
    "zip_stages",
]
