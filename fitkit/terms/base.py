"""The data-term interface, the term registry and the Geman-McClure robustifier.

A data term is built once from its observations (keypoints, DensePose IUV, predicted
displacements, ...) and then scores bodies: ``energy(body_output, camera) -> (B,)``, one
independent energy per sample, zero where the body explains the data exactly. Samples whose
inputs hold no usable observation are marked in :attr:`DataTerm.valid`; their energy is zero.

A term also describes itself, so that ``fitkit.fit`` and ``python -m fitkit.refine`` are loops
over the registry:

- :attr:`DataTerm.keyword`: the keyword of ``fitkit.fit`` that takes its input (``keypoints=``);
- :meth:`DataTerm.read`: that input, from arrays, tensors or files (through :mod:`fitkit.io`), as
  numpy arrays, one row per sample, with per-sample errors;
- :attr:`DataTerm.dataset_pattern`: where a dataset folder keeps it
  (``"keypoints/{name}_keypoints.json"``), for ``refine``;
- :meth:`DataTerm.blank`: the observation of a sample without usable input;
- :meth:`DataTerm.from_observations`: the term, from what ``read`` returned (moved to the fit's
  device) and a :class:`TermContext` (body, cameras, initial parameters, options).

A new data term is one file: a :class:`DataTerm` subclass decorated with
``@register_term("name")``; registered from any module (the user's own too), it works in
``fit`` and ``refine`` with no other change.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import Tensor

from fitkit.body import BodyModel, BodyOutput
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


@dataclass
class TermContext:
    """What building a term from its observations may use besides them.

    Attributes:
        body: the body model of the fit.
        camera: the cameras of the batch (on the fit's device).
        init: the initial parameters given (``(B, ...)`` tensors on the device, any subset of
            ``global_orient``, ``body_pose``, ``betas``, ``transl``).
        options: the term's build options (``FitConfig.term_options[name]``).
    """

    body: BodyModel
    camera: Camera
    init: Mapping[str, Tensor] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)


class DataTerm:
    """A data term: observations of a batch of B samples, scored against posed bodies.

    Attributes:
        valid: ``(B,)`` bool, whether a sample has at least one usable observation. Invalid
            samples have zero energy; the fitter leaves them at their initial parameters.
        keyword: the ``fitkit.fit`` keyword of the term's input (class attribute; ``None`` for a
            term that ``fit`` cannot build).
        dataset_pattern: the file of a sample's input in a dataset folder, ``{name}`` standing
            for the image name (class attribute; ``None`` when folders do not hold it).
    """

    valid: Tensor
    keyword: ClassVar[str | None] = None
    dataset_pattern: ClassVar[str | None] = None
    links_samples: ClassVar[bool] = False
    """A term that scores samples against each other (a temporal term) instead of observing
    them: it does not count as data for :attr:`valid`'s purpose, and the samples it links
    (:meth:`linked_pairs`) must be in one sample group."""
    batch_hint: ClassVar[int] = 32
    """The batch size ``refine`` uses by default when every term of the fit allows it: small for
    terms that read the whole mesh and hold images' worth of targets per sample; large for terms
    that read joints and a few vertices, where a batch costs nearly the same per iteration
    whatever its size (per-operation overhead dominates), so larger batches fit more images per
    second."""

    @classmethod
    def renumber_links(cls, observations: Any, rows: np.ndarray) -> Any:
        """The observations of the sub-batch ``rows`` (already taken row by row from the
        batch's) with the batch rows they name renumbered into the sub-batch (terms with
        :attr:`links_samples`; others return them as they are).

        Args:
            observations: what :meth:`read` returned, rows ``rows`` of it.
            rows: ``(N,)`` the sub-batch's rows in the batch, increasing.
        """
        return observations

    def linked_pairs(self) -> tuple[Tensor, Tensor]:
        """``(P,)`` and ``(P,)`` long: the pairs of batch rows the term links (terms with
        :attr:`links_samples`; none for others)."""
        empty = torch.zeros(0, dtype=torch.long, device=self.valid.device)
        return empty, empty

    @classmethod
    def read(cls, value: Any, errors: list[str] | None = None) -> Any:
        """The term's input from what a user gives (arrays, tensors, file paths): numpy arrays
        with one row per sample, or a dict of them.

        Args:
            value: the ``fit`` keyword's value; for ``refine``, the list of the batch's files
                (``dataset_pattern``).
            errors: per-sample error list: a sample whose file is missing or malformed gets an
                empty observation and its message here; without it the first bad file raises.
        Raises:
            fitkit.io.FitInputError: input of the wrong shape or kind (and, without ``errors``,
                a missing or malformed file).
        """
        raise NotImplementedError(f"{cls.__name__} reads no input (it has no read method)")

    @staticmethod
    def blank(observations: Any, bad: np.ndarray) -> Any:
        """``observations`` with the samples ``bad`` ``(B,)`` bool made unusable (no
        observation at all: NaN for floating arrays, 0 for integer ones), so that the fitter
        flags them ``no_data`` and keeps their initial parameters."""
        if isinstance(observations, Mapping):
            return {key: DataTerm.blank(value, bad) for key, value in observations.items()}
        if not bad.any():
            return observations
        array = np.array(observations, copy=True)
        array[bad] = np.nan if array.dtype.kind == "f" else 0
        return array

    @classmethod
    def from_observations(cls, observations: Any, context: TermContext) -> DataTerm:
        """The term of a batch from its observations (what :meth:`read` returned, as tensors on
        the fit's device) and the context; by default ``cls(observations, **options)``."""
        return cls(observations, **context.options)

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

    def body_vertices(self, body: BodyModel) -> Tensor | None:
        """The body's vertex ids this term reads from a posed body, ``(K,)`` long (empty: joints
        only), or ``None`` for all of them (the default). A fitter evaluates only these inside
        its loop (:meth:`fitkit.body.BodyModel.forward`'s ``vertex_ids``), so a term that
        declares them costs a few dozen vertices instead of thousands."""
        return None

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


def term_class(name: str) -> type[DataTerm]:
    """The term registered as ``name``.

    Raises:
        KeyError: no term of that name (the registered ones are listed).
    """
    if name not in TERMS:
        raise KeyError(f"unknown data term {name!r}; registered terms: {', '.join(sorted(TERMS))}")
    return TERMS[name]


def term_keywords() -> dict[str, str]:
    """``{term name: fit keyword}`` of the registered terms that ``fit`` can build."""
    return {name: cls.keyword for name, cls in TERMS.items() if cls.keyword is not None}


def build_term(name: str, **inputs: Any) -> DataTerm:
    """Build the data term registered as ``name`` from its inputs (its constructor's arguments).

    Raises:
        KeyError: no term of that name.
    """
    return term_class(name)(**inputs)
