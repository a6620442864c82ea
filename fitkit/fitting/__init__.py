"""Batched SMPLify: stages, per-stage weights and presets as data, Adam or L-BFGS.

``SMPLify(body, prior, "spin" | "refine" | FitConfig).fit(terms, camera, init)`` returns a
:class:`FitResult` with per-sample parameters, energies per term, and failure flags.
"""

from fitkit.fitting.config import (
    PARAM_NAMES,
    PRESETS,
    FitConfig,
    StageConfig,
    preset,
    zip_stages,
)
from fitkit.fitting.smplify import (
    FLAG_NAMES,
    FitResult,
    LatentPoseSpace,
    PoseSpace,
    SMPLify,
    pose_space,
)

__all__ = [
    "FLAG_NAMES",
    "PARAM_NAMES",
    "PRESETS",
    "FitConfig",
    "FitResult",
    "LatentPoseSpace",
    "PoseSpace",
    "SMPLify",
    "StageConfig",
    "pose_space",
    "preset",
    "zip_stages",
]
