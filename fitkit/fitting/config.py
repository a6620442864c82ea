"""SMPLify's schedule as data: stages, their weights, and the presets ``spin`` and ``refine``.

Weights are written as SMPLify, SPIN and SMPLify-X write them and enter the objective squared:
a stage minimizes, per sample,

    sum_t (data_weight * term_weights[t])^2 E_t  +  pose_prior_weight^2 E_pose
    + shape_prior_weight^2 ||betas||^2  +  bending_weight^2 E_bend  +  depth_weight^2 (t_z - t0_z)^2

with ``E_t`` the data terms (:mod:`fitkit.terms`), ``E_pose`` the pose prior's energy (its
latent energy for a latent prior), ``E_bend`` SMPLify's elbow/knee bending energy and ``t0_z``
the depth the fit started from (SPIN's camera depth prior).

Presets (``PRESETS``, :func:`preset`):

- ``spin``: SPIN's SMPLify (``smplify/smplify.py`` and ``losses.py`` of SPIN; seed 002: Adam,
  step 1e-2). A camera stage fits ``global_orient`` and ``transl`` to the shoulders and hips
  (plain squared error) with the depth prior ``100^2 (t_z - t0_z)^2``; a body stage fits
  ``body_pose``, ``betas`` and ``global_orient`` with ``transl`` fixed: robust keypoints
  (rho = 100 px, confidence squared, Neck and hips off) + ``4.78^2`` GMM + ``5^2`` shape +
  ``15.2^2`` bending. 100 Adam iterations per stage (SPIN's code; its supplement says at most
  50). Focal length 5000 px on 224 x 224 crops.
- ``refine``: seed 003 §4.1's modification of SPIN's SMPLify: no bending and no depth prior
  term, the full image with focal length ``sqrt(w^2 + h^2)``, and the reprojection term scaled
  by the person's size (residuals in pixels of a 224-pixel crop around the person, see
  :mod:`fitkit.terms.keypoints`). The seed's extra data multipliers did not survive its text
  extraction. Keypoints keep 1, SPIN's balance on crops, meant for detected (noisy) keypoints.
  The dense terms (``densepose``, ``flow``) weigh 10: chosen on a synthetic validation set
  (50 images, seed 7, GMM, weights 1/3/10/30), where 10 was best for both; a mean over
  thousands of dense targets is far less noisy than 25 keypoints, so it earns more weight.
  docs/results.md has the sweep.

- ``scratch``: fitting without an initial estimate (``fit`` and ``refine`` use it when no
  ``global_orient`` is given, from four global orientations at once,
  :mod:`fitkit.fitting.multistart`, the body pose starting at the prior's typical pose). The refine
  preset's terms and camera, a camera stage of 100 Adam iterations, then SMPLify-style annealing of
  the prior in three body stages of 60, 60 and 80 iterations (pose prior 20, 10, 4.78; shape prior
  10, 5, 5; SMPLify's bending prior 15.2 against elbows and knees bent backwards), Adam at 2e-2.
  Chosen on a synthetic validation set (48 images, seed 7, detector-like keypoints, GMM, started
  from scratch; PA-MPJPE): the refine preset from the rest pose facing the camera 153 mm, with the
  four starts and the typical pose 111 mm, this preset 98 mm; L-BFGS (lr 1) in its place 114 mm,
  and torch's L-BFGS couples the samples of a batch (one line search for the summed energy), so a
  sample's fit would depend on its batch. docs/results.md has the table.

In every preset ``keypoints3d`` weighs 100: its residuals are meters, not (crop) pixels, so its
energy is about 10^4 times smaller than a 2D term's; at weight 1 the pose prior wins (fits of the
open body to exact 3D joints with the open GMM: 22 cm joint error at weight 1, 2.6 cm at 100).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fitkit.geometry import Camera
from fitkit.io.params import PARAM_SIZES
from fitkit.terms import TERMS, DataTerm, build_term

PARAM_NAMES: tuple[str, ...] = tuple(PARAM_SIZES)
"""The body parameters a stage may optimize."""

OPTIMIZERS: tuple[str, ...] = ("adam", "lbfgs", "lm")

WEIGHTS: tuple[str, ...] = (
    "data_weight", "pose_prior_weight", "shape_prior_weight", "bending_weight", "depth_weight")
"""The weights of a stage (:class:`StageConfig`)."""


def check_number(name: str, value: Any, minimum: float = 0.0, strict: bool = False,
                 finite: bool = True) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a real number ``>= minimum``
    (``> minimum`` when ``strict``), finite unless ``finite`` is False (NaN never passes:
    ``nan <= 0`` is False, so a plain comparison lets it through)."""
    bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
    valid = (isinstance(value, numbers.Real) and not math.isnan(value)
             and (not finite or math.isfinite(value))
             and (value > minimum if strict else value >= minimum))
    if not valid:
        kind = "a finite number" if finite else "a number"
        raise ValueError(f"{name} must be {kind} {bound}, got {value!r}")


@dataclass(frozen=True)
class StageConfig:
    """One stage of the fit.

    Attributes:
        name: label in results and timings.
        optimize: the parameters this stage frees (of :data:`PARAM_NAMES`); ``body_pose`` means
            the prior's latent for a latent prior.
        iterations: optimizer iterations.
        optimizer: ``"adam"``, ``"lbfgs"`` (torch's, strong-Wolfe line search, run in steps of
            up to 20 iterations, the per-sample guard acting between steps) or ``"lm"``
            (per-sample Levenberg-Marquardt, :mod:`fitkit.fitting.lm`: an iteration is a
            Gauss-Newton step, so tens do what Adam's hundreds do: with ``optimizer="lm",
            iterations=10`` (the sensible default for LM; 7 nearly as good) the spin preset
            on keypoints + GMM ends at or below its 2 x 100 Adam iterations' energy on 98 % of
            samples (bench/smplify.py). Every weighted data term and prior needs a residual
            form: 2D reprojection terms, the GMM, shape, bending, depth).
        lr: Adam's step size or L-BFGS's initial step (1 is usual for L-BFGS); finite, > 0;
            unused by ``"lm"`` (its damping adapts per sample).
        torso_only: use each data term's torso view (SMPLify's camera stage).
        data_weight, pose_prior_weight, shape_prior_weight, bending_weight, depth_weight:
            weights, applied squared (module docstring); 0 drops the term. Finite and ``>= 0``:
            squared, a negative weight would act as a positive one.
    Raises:
        ValueError: any of these out of range (the stage and the setting named).
    """

    name: str
    optimize: tuple[str, ...]
    iterations: int = 100
    optimizer: str = "adam"
    lr: float = 1e-2
    torso_only: bool = False
    data_weight: float = 1.0
    pose_prior_weight: float = 0.0
    shape_prior_weight: float = 0.0
    bending_weight: float = 0.0
    depth_weight: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "optimize", tuple(self.optimize))
        unknown = [name for name in self.optimize if name not in PARAM_NAMES]
        if unknown or not self.optimize:
            raise ValueError(
                f"stage {self.name!r}: optimize must name some of {PARAM_NAMES}, "
                f"got {self.optimize}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"stage {self.name!r}: optimizer must be one of {OPTIMIZERS}, "
                f"got {self.optimizer!r}"
            )
        if not isinstance(self.iterations, numbers.Integral) or isinstance(
                self.iterations, bool) or self.iterations < 0:
            raise ValueError(f"stage {self.name!r}: iterations must be a whole number >= 0, got "
                             f"{self.iterations!r}")
        try:
            check_number("lr", self.lr, strict=True)
            for name in WEIGHTS:
                check_number(name, getattr(self, name))
        except ValueError as error:
            hint = " (weights enter squared)" if "weight" in str(error) else ""
            raise ValueError(f"stage {self.name!r}: {error}{hint}") from None


def zip_stages(
    names: Sequence[str], optimize: Sequence[Sequence[str]], **settings: Any
) -> tuple[StageConfig, ...]:
    """Stages from per-stage lists, SMPLify-X style.

    Args:
        names: one name per stage.
        optimize: one tuple of parameter names per stage.
        settings: any other :class:`StageConfig` field, as a list with one value per stage or
            a single value for every stage (e.g. ``pose_prior_weight=[0.0, 4.78], lr=1e-2``).
    Raises:
        ValueError: lists of different lengths.
    """
    count = len(names)
    columns: dict[str, Sequence[Any]] = {"name": names, "optimize": optimize}
    for key, value in settings.items():
        columns[key] = value if isinstance(value, list | tuple) else [value] * count
    lengths = {key: len(column) for key, column in columns.items()}
    if set(lengths.values()) != {count}:
        raise ValueError(f"per-stage lists must all have {count} entries: {lengths}")
    return tuple(
        StageConfig(**{key: column[i] for key, column in columns.items()}) for i in range(count)
    )


@dataclass(frozen=True)
class FitConfig:
    """A whole fit: its stages and everything around them.

    Attributes:
        stages: run in order, each starting from the previous one's per-sample best iterate.
        focal_length: pixels for :meth:`camera` (finite, > 0); ``None`` for
            ``sqrt(w^2 + h^2)``.
        term_weights: extra weight per registered data-term name (applied squared, so finite and
            ``>= 0``; 1 when absent).
        term_options: build options per registered data-term name for :meth:`build_term`, each
            an argument of that term's constructor.
        divergence_factor: a sample whose energy exceeds this factor times
            ``max(|start energy|, 1)`` of a stage counts as diverged (> 0; ``inf``: never).
    Raises:
        ValueError: no stage, or a setting out of range or naming an unknown data term or
            option (the setting named; the registered terms or the accepted options listed).
    """

    stages: tuple[StageConfig, ...]
    focal_length: float | None = None
    term_weights: Mapping[str, float] = field(default_factory=dict)
    term_options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    divergence_factor: float = 1e3

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        if not self.stages:
            raise ValueError("a FitConfig needs at least one stage")
        if self.focal_length is not None:
            check_number("focal_length", self.focal_length, strict=True)
        check_number("divergence_factor", self.divergence_factor, strict=True, finite=False)
        for setting in ("term_weights", "term_options"):
            values = getattr(self, setting)
            if not isinstance(values, Mapping):
                raise ValueError(f"{setting} must be a dict by data-term name, got "
                                 f"{type(values).__name__}")
            unknown = sorted(str(name) for name in values if name not in TERMS)
            if unknown:
                raise ValueError(f"{setting}: unknown data term(s) {', '.join(map(repr, unknown))}"
                                 f"; registered data terms: {', '.join(sorted(TERMS))}")
        for name, weight in self.term_weights.items():
            check_number(f"term_weights[{name!r}]", weight)
        for name, options in self.term_options.items():
            check_options(name, options)

    def camera(self, width: int, height: int, batch_size: int, **kwargs: Any) -> Camera:
        """Cameras of ``width x height`` images centred on the image, with this config's focal
        length (``kwargs`` go to :meth:`Camera.from_image_size`: ``device``, ``dtype``)."""
        return Camera.from_image_size(
            width, height, batch_size, focal_length=self.focal_length, **kwargs
        )

    def build_term(self, name: str, **inputs: Any) -> DataTerm:
        """:func:`fitkit.terms.build_term` with this config's options for ``name`` (``inputs``
        win over them)."""
        return build_term(name, **{**self.term_options.get(name, {}), **inputs})

    def with_stages(self, **changes: Any) -> FitConfig:
        """A copy with ``changes`` applied to every stage (e.g. ``iterations=10``)."""
        stages = tuple(dataclasses.replace(stage, **changes) for stage in self.stages)
        return dataclasses.replace(self, stages=stages)


def check_options(name: str, options: Any) -> None:
    """Raise ``ValueError`` unless ``options`` is a dict of arguments that the data term
    ``name``'s constructor takes (any, when it takes ``**kwargs``)."""
    if not isinstance(options, Mapping):
        raise ValueError(f"term_options[{name!r}] must be a dict of build options, got "
                         f"{type(options).__name__}")
    parameters = inspect.signature(TERMS[name].__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [key for key, p in parameters.items() if key != "self"
                and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                               inspect.Parameter.KEYWORD_ONLY)]
    unknown = sorted(str(key) for key in options if key not in accepted)
    if unknown:
        raise ValueError(f"term_options[{name!r}]: unknown option(s) "
                         f"{', '.join(map(repr, unknown))}; {name} takes "
                         f"{', '.join(accepted)}")


CAMERA_AND_BODY = ("camera", "body")
CAMERA_PARAMS = ("global_orient", "transl")
BODY_PARAMS = ("body_pose", "betas", "global_orient")

PRESETS: dict[str, FitConfig] = {
    "spin": FitConfig(
        stages=zip_stages(
            CAMERA_AND_BODY,
            (CAMERA_PARAMS, BODY_PARAMS),
            iterations=100,
            optimizer="adam",
            lr=1e-2,
            torso_only=[True, False],
            depth_weight=[100.0, 0.0],
            pose_prior_weight=[0.0, 4.78],
            shape_prior_weight=[0.0, 5.0],
            bending_weight=[0.0, 15.2],
        ),
        focal_length=5000.0,
        term_weights={"keypoints3d": 100.0},
        term_options={"keypoints": {"rho": 100.0}},
    ),
    "refine": FitConfig(
        stages=zip_stages(
            CAMERA_AND_BODY,
            (CAMERA_PARAMS, BODY_PARAMS),
            iterations=100,
            optimizer="adam",
            lr=1e-2,
            torso_only=[True, False],
            pose_prior_weight=[0.0, 4.78],
            shape_prior_weight=[0.0, 5.0],
        ),
        focal_length=None,
        term_weights={"densepose": 10.0, "flow": 10.0, "keypoints3d": 100.0},
        term_options={"keypoints": {"rho": 100.0, "crop_size": 224.0}},
    ),
    "scratch": FitConfig(
        stages=zip_stages(
            ("camera", "body-1", "body-2", "body-3"),
            (CAMERA_PARAMS, BODY_PARAMS, BODY_PARAMS, BODY_PARAMS),
            iterations=[100, 60, 60, 80],
            optimizer="adam",
            lr=2e-2,
            torso_only=[True, False, False, False],
            pose_prior_weight=[0.0, 20.0, 10.0, 4.78],
            shape_prior_weight=[0.0, 10.0, 5.0, 5.0],
            bending_weight=[0.0, 15.2, 15.2, 15.2],
        ),
        focal_length=None,
        term_weights={"densepose": 10.0, "flow": 10.0, "keypoints3d": 100.0},
        term_options={"keypoints": {"rho": 100.0, "crop_size": 224.0}},
    ),
}
"""Named fit configurations (module docstring)."""


def preset(name: str, **changes: Any) -> FitConfig:
    """The preset ``name`` (``"spin"``, ``"refine"`` or ``"scratch"``), with :class:`FitConfig`
    fields replaced by ``changes``.

    Raises:
        KeyError: no such preset.
    """
    if name not in PRESETS:
        raise KeyError(f"unknown fit preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    return dataclasses.replace(PRESETS[name], **changes)
