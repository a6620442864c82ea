"""fitkit: fit the SMPL human body model to images.

Batched SMPLify with interchangeable pose priors (GMM, VPoser, cNF) and data terms (keypoints,
DensePose, learned displacements), on an open SMPL-format body that ships with the package.
``fitkit.fit(images, init=..., data_term=..., prior=...)`` is the one-call entry point.
"""

from fitkit.api import fit
from fitkit.body import load_body
from fitkit.fitting import FitResult

__version__ = "0.1.0"

__all__ = ["FitResult", "fit", "load_body"]
