"""Pose and shape priors behind one interface, and :func:`load` for the open defaults.

Every pose prior is a :class:`PosePrior`: ``energy(body_pose (B, 69), context=None) -> (B,)``.
Latent priors (:class:`VPoserPrior`, :class:`CNFPrior`) also map pose <-> latent.

``load("gmm" | "vposer" | "cnf")`` returns fitkit's open default, trained on fitkit's synthetic
pose distribution and shipped in the top-level ``priors/`` folder (installed as
``fitkit.open_priors``); ``load(PATH)`` reads an official or user file and decides its kind by
layout: a ``.pkl`` with the GMM keys, a VPoser v2 experiment folder, or a fitkit cNF folder.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fitkit.priors.base import LatentPosePrior, PosePrior
from fitkit.priors.bending import bending_energy
from fitkit.priors.cnf import CNFPrior, is_cnf_folder
from fitkit.priors.gmm import GMMPrior, fit_gmm
from fitkit.priors.shape import shape_energy
from fitkit.priors.vposer import VPoserPrior, VPoserV2, is_vposer_folder

__all__ = [
    "CNFPrior", "GMMPrior", "LatentPosePrior", "PosePrior", "PRIORS", "PriorKind",
    "VPoserPrior", "VPoserV2", "bending_energy", "fit_gmm", "load", "open_priors_dir",
    "register", "shape_energy",
]


@dataclass(frozen=True)
class PriorKind:
    """A loadable prior kind.

    Attributes:
        name: registry name (``load(name)`` gives the open default).
        default: path of the open default, relative to the open-priors folder.
        matches: whether a user path has this kind's layout.
        load: reads a path of this kind.
    """

    name: str
    default: str
    matches: Callable[[Path], bool]
    load: Callable[[Path], PosePrior]


PRIORS: dict[str, PriorKind] = {}
"""Registered prior kinds, by name."""


def register(kind: PriorKind) -> None:
    """Add a prior kind to :data:`PRIORS` (a new prior is one file plus this call)."""
    PRIORS[kind.name] = kind


register(PriorKind("gmm", "gmm_08.pkl", lambda p: p.is_file() and p.suffix == ".pkl",
                   GMMPrior.from_pickle))
register(PriorKind("vposer", "vposer", is_vposer_folder, VPoserPrior.from_folder))
register(PriorKind("cnf", "cnf", is_cnf_folder, CNFPrior.from_folder))


def open_priors_dir() -> Path:
    """Folder of the open default priors: the installed ``fitkit.open_priors`` package, or the
    repository's top-level ``priors/`` when running from a source tree."""
    if importlib.util.find_spec("fitkit.open_priors") is not None:
        return Path(str(importlib.resources.files("fitkit.open_priors")))
    return Path(__file__).resolve().parents[2] / "priors"


def _frozen(prior: PosePrior) -> PosePrior:
    prior.eval().requires_grad_(False)
    return prior


def load(name_or_path: str | Path) -> PosePrior:
    """Load a pose prior by registry name (the open default) or from a path.

    Args:
        name_or_path: ``"gmm"``, ``"vposer"``, ``"cnf"`` (see :data:`PRIORS`), or a path to a
            ``gmm_08.pkl``-layout pickle, a VPoser v2 experiment folder or a fitkit cNF folder.

    Returns:
        The prior on the CPU, in eval mode, its parameters frozen (``requires_grad`` False) so a
        fitter's backward pass only reaches the pose or latent.
    Raises:
        FileNotFoundError: no such path, or a file its layout needs is missing.
        ValueError: an unknown layout; :class:`~fitkit.io.safe_pickle.UnsafePickleError` for a
            file that names code (nothing from it runs); :class:`~fitkit.io.npz.FileKeyError`
            for an unreadable file or a bad key. Every message starts with the file's path.
    """
    if isinstance(name_or_path, str) and name_or_path in PRIORS:
        kind = PRIORS[name_or_path]
        path = open_priors_dir() / kind.default
        if not path.exists():
            raise FileNotFoundError(f"open default prior {kind.name!r} not found at {path}")
        return _frozen(kind.load(path))
    path = Path(name_or_path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such file or folder, and not a prior name ({sorted(PRIORS)})")
    for kind in PRIORS.values():
        if kind.matches(path):
            return _frozen(kind.load(path))
    raise ValueError(f"{path}: not a recognised prior layout (a .pkl with the GMM keys, a VPoser "
                     "v2 folder with *.yaml and snapshots/, or a cNF folder with config.json)")
