"""fitkit: fit the SMPL human body model to images.

Batched SMPLify with interchangeable pose priors (GMM, VPoser, cNF) and data terms (keypoints,
DensePose, learned displacements), on an open SMPL-format body that ships with the package.
``fitkit.fit(images, init=..., data_term=..., prior=...)`` is the one-call entry point;
``fitkit.regress(images, keypoints=...)`` gives initial parameters from the HMR/SPIN regressor.

Subpackages that ``fit`` does not need (``fitkit.synth``, ``fitkit.train``, ``fitkit.refine``,
``fitkit.eval``, ...) are imported on first access, so ``import fitkit`` stays cheap.
"""

import importlib
from types import ModuleType

from fitkit.api import fit
from fitkit.body import load_body
from fitkit.fitting import FitResult
from fitkit.regress import regress as regress  # eager: the name must be the function

__version__ = "0.1.0"

__all__ = ["FitResult", "fit", "load_body"]

_SUBMODULES = ("api", "body", "demo", "eval", "fitter", "fitting", "geometry", "io", "nets",
               "priors", "refine", "render", "synth", "terms", "train", "viz")
"""The subpackages and modules reachable as ``fitkit.NAME`` without importing them first."""


def __getattr__(name: str) -> ModuleType:
    """``fitkit.NAME`` for a subpackage or module not imported yet: imported now (PEP 562)."""
    if name in _SUBMODULES:
        return importlib.import_module(f"fitkit.{name}")
    raise AttributeError(f"module 'fitkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBMODULES})
