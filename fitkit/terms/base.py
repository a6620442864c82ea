"""The data-term interface, the term registry and the Geman-McClure robustifier.

A data term is built once from its inputs (keypoints, DensePose IUV, predicted displacements,
...) and then scores bodies: ``energy(body_output, camera) -> (B,)``, one independent energy per
sample, zero where the body explains the data exactly. Samples whose inputs hold no usable
observation are marked in :attr:`DataTerm.valid`; their energy is zero.

A new data term is one file: a :class:`DataTerm` subclass decorated with
``@register_term("name")``, after which ``build_term("name", **inputs)`` builds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import Tensor

from fitkit.body import BodyOutput
from fitkit.geometry import Camera


def geman_mcclure(residual: Tensor, rho: float) -> Tensor:
    """Geman-McClure robust error ``rho^2 r^2 / (rho^2 + r^2)``, element-wise (SMPLify's GMoF).

    Quadratic (``~ r^2``) for ``|r| << rho`` and bounded by ``rho^2`` for ``|r| >> rho``.

    Args:
        residual: any shape, e.g. ``(B, K, 2)`` pixel residuals.
        rho: scale of the robustifier, in the residual's units.
    Returns:
        Same shape as ``residual``.
    """
    squared = residual.square()
    return rho**2 * squared / (rho**2 + squared)


class DataTerm:
    """A data term: observations of a batch of B samples, scored against posed bodies.

    Attributes:
        valid: ``(B,)`` bool, whether a sample has at least one usable observation. Invalid
            samples have zero energy; the fitter leaves them at their initial parameters.
    """

    valid: Tensor

    @property
    def batch_size(self) -> int:
        """B."""
        return self.valid.shape[0]

    @property
    def device(self) -> torch.device:
        """Device of the observations."""
        return self.valid.device

    def energy(self, body_output: BodyOutput, camera: Camera) -> Tensor:
        """Energy of each sample.

        Args:
            body_output: the posed bodies (batch B), in the camera frame of the full image.
            camera: the cameras of the observations (batch B).
        Returns:
            ``(B,)`` energies, ``>= 0``, zero for invalid samples.
        """
        raise NotImplementedError

    def torso(self) -> DataTerm:
        """The term a camera stage uses (``StageConfig.torso_only``): observations of the
        torso only, which a rigid body with an unknown pose can already explain.

        Terms without a notion of torso return themselves.
        """
        return self

    def estimate_transl(self, body_output: BodyOutput, camera: Camera) -> Tensor | None:
        """A first translation that places the body on the observations, for fits without a
        trusted initial translation.

        Args:
            body_output: the initial bodies posed with zero translation (batch B).
            camera: the cameras (batch B).
        Returns:
            ``(B, 3)`` translations, or ``None`` for terms that cannot tell.
        """
        return None

    def check_batch(self, body_output: BodyOutput, camera: Camera) -> None:
        """Raise ``ValueError`` unless ``body_output`` and ``camera`` have this term's batch."""
        sizes = {
            "term": self.batch_size,
            "body": body_output.vertices.shape[0],
            "camera": camera.batch_size,
        }
        if len(set(sizes.values())) != 1:
            raise ValueError(f"{type(self).__name__}: batch sizes disagree: {sizes}")


TERMS: dict[str, type[DataTerm]] = {}
"""Registered data terms, by name."""

TermType = TypeVar("TermType", bound=type[DataTerm])


def register_term(name: str) -> Callable[[TermType], TermType]:
    """Class decorator: register a :class:`DataTerm` subclass under ``name``."""

    def register(cls: TermType) -> TermType:
        if name in TERMS and TERMS[name] is not cls:
            raise ValueError(f"data term {name!r} is already registered ({TERMS[name].__name__})")
        TERMS[name] = cls
        return cls

    return register


def build_term(name: str, **inputs: Any) -> DataTerm:
    """Build the data term registered as ``name`` from its inputs (its constructor's arguments).

    Raises:
        KeyError: no term of that name.
    """
    if name not in TERMS:
        raise KeyError(f"unknown data term {name!r}; registered terms: {', '.join(sorted(TERMS))}")
    return TERMS[name](**inputs)
