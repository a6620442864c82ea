"""Data terms: observations scored against posed bodies, behind one interface.

``build_term(name, **inputs)`` builds a registered term (``"keypoints"``: OpenPose BODY_25;
``"densepose"``: DensePose IUV images; ``"flow"``: seed 003's per-vertex displacement targets;
``"keypoints3d"``: 3D joints or markers;
``"temporal"``: smooth motion between frames); ``energy(body_output, camera) -> (B,)`` scores a
batch of bodies. Each term describes its input (:class:`DataTerm`: ``keyword``, ``read``,
``dataset_pattern``, ``from_observations``), so ``fitkit.fit`` and ``refine`` loop over
:data:`TERMS`. A new term is one file with a :class:`DataTerm` subclass decorated with
:func:`register_term` (imported here for fitkit's own; a user's module registers its own).
"""

from fitkit.terms.base import (
    TERMS,
    DataTerm,
    TermContext,
    build_term,
    geman_mcclure,
    register_term,
    term_class,
    term_keywords,
)
from fitkit.terms.densepose import DensePoseTerm
from fitkit.terms.flow import FlowTerm, VertexTargetsTerm, exact_displacements
from fitkit.terms.keypoints import (
    IGNORED_KEYPOINTS,
    TORSO_KEYPOINTS,
    KeypointsTerm,
    default_joint_weights,
    torso_joint_weights,
)
from fitkit.terms.keypoints3d import Keypoints3DTerm
from fitkit.terms.reprojection import ReprojectionTerm
from fitkit.terms.temporal import TemporalTerm, previous_frames

__all__ = [
    "IGNORED_KEYPOINTS",
    "TERMS",
    "TORSO_KEYPOINTS",
    "DataTerm",
    "DensePoseTerm",
    "FlowTerm",
    "Keypoints3DTerm",
    "KeypointsTerm",
    "ReprojectionTerm",
    "TemporalTerm",
    "TermContext",
    "VertexTargetsTerm",
    "build_term",
    "default_joint_weights",
    "exact_displacements",
    "geman_mcclure",
    "previous_frames",
    "register_term",
    "term_class",
    "term_keywords",
    "torso_joint_weights",
]
