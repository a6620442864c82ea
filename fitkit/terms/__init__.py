"""Data terms: observations scored against posed bodies, behind one interface.

``build_term(name, **inputs)`` builds a registered term (``"keypoints"``: OpenPose BODY_25;
``"densepose"``: DensePose IUV images; ``"flow"``: seed 003's per-vertex displacement targets);
``energy(body_output, camera) -> (B,)`` scores a batch of bodies. A new term is one file with a
:class:`DataTerm` subclass decorated with :func:`register_term`, imported here.
"""

from fitkit.terms.base import TERMS, DataTerm, build_term, geman_mcclure, register_term
from fitkit.terms.densepose import DensePoseTerm
from fitkit.terms.flow import FlowTerm, VertexTargetsTerm, exact_displacements
from fitkit.terms.keypoints import (
    IGNORED_KEYPOINTS,
    TORSO_KEYPOINTS,
    KeypointsTerm,
    default_joint_weights,
    torso_joint_weights,
)

__all__ = [
    "IGNORED_KEYPOINTS",
    "TERMS",
    "TORSO_KEYPOINTS",
    "DataTerm",
    "DensePoseTerm",
    "FlowTerm",
    "KeypointsTerm",
    "VertexTargetsTerm",
    "build_term",
    "default_joint_weights",
    "exact_displacements",
    "geman_mcclure",
    "register_term",
    "torso_joint_weights",
]
