"""fitkit: fit the SMPL human body model to images.

Batched SMPLify with interchangeable pose priors (GMM, VPoser, cNF) and data terms (keypoints,
DensePose, learned displacements), on an open SMPL-format body that ships with the package.
"""

from fitkit.body import load_body

__version__ = "0.1.0"

__all__ = ["load_body"]
