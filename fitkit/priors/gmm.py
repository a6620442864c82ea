"""SMPLify's max-mixture Gaussian pose prior, its ``gmm_08.pkl`` file layout and EM fitting.

The energy of a pose ``x`` (69-d axis-angle body pose) is, as in SMPLify (and SPIN, SMPLify-X)::

    E(x) = min_k [ 0.5 (x - mu_k)^T Sigma_k^-1 (x - mu_k) - log c_k ],
    c_k  = w_k / ((2 pi)^(D/2) * sqrt(det Sigma_k) / min_j sqrt(det Sigma_j))

i.e. the negative log of the best single weighted Gaussian, with the determinant normalized by the
smallest one among the components.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import torch

from fitkit.io.npz import FileKeyError
from fitkit.io.runs import atomic_write
from fitkit.io.safe_pickle import safe_load
from fitkit.priors.base import PosePrior

GMM_KEYS: tuple[str, ...] = ("means", "covars", "weights")
NUM_POSE = 69
"""Size of the body pose (axis-angle of SMPL joints 1-23) the GMM of a file describes."""


class GMMPrior(PosePrior):
    """Max-mixture GMM pose prior.

    Args:
        means: (K, D) component means.
        covars: (K, D, D) component covariances.
        weights: (K,) mixture weights.
    """

    def __init__(self, means: torch.Tensor, covars: torch.Tensor, weights: torch.Tensor) -> None:
        super().__init__()
        means, covars, weights = (torch.as_tensor(a, dtype=torch.float64)
                                  for a in (means, covars, weights))
        k, d = means.shape
        if covars.shape != (k, d, d) or weights.shape != (k,):
            raise ValueError(
                f"GMM shapes disagree: means {tuple(means.shape)}, covars {tuple(covars.shape)}, "
                f"weights {tuple(weights.shape)}")
        half_logdet = torch.linalg.cholesky(covars).diagonal(dim1=-2, dim2=-1).log().sum(-1)
        log_c = (weights.log() - 0.5 * d * math.log(2.0 * math.pi)
                 - (half_logdet - half_logdet.min()))
        self.register_buffer("means", means.float())
        self.register_buffer("covars", covars.float())
        self.register_buffer("weights", weights.float())
        self.register_buffer("precisions", torch.linalg.inv(covars).float())
        self.register_buffer("log_c", log_c.float())
        # Residual form (:meth:`residuals`): the whitening L_k^-1 of each component
        # (Sigma_k = L_k L_k^T) and sqrt(-log c_k), derived, so not saved with the module.
        whitening = torch.linalg.solve_triangular(
            torch.linalg.cholesky(covars), torch.eye(d, dtype=covars.dtype), upper=False)
        self.register_buffer("whitening", whitening.float(), persistent=False)
        self.register_buffer("residual_constant", (-log_c).clamp(min=0.0).sqrt().float(),
                             persistent=False)
        self.has_residual_form = bool((log_c <= 0).all())

    @property
    def num_components(self) -> int:
        """Number of mixture components K."""
        return self.means.shape[0]

    def component_energies(self, body_pose: torch.Tensor) -> torch.Tensor:
        """Per-component energies ``0.5 d^T P d - log c_k``: (B, D) -> (B, K)."""
        diff = body_pose[:, None, :] - self.means.to(body_pose.dtype)
        prec_diff = torch.einsum("kij,bkj->bki", self.precisions.to(body_pose.dtype), diff)
        return 0.5 * (prec_diff * diff).sum(-1) - self.log_c.to(body_pose.dtype)

    def energy(self, body_pose: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Max-mixture energy: (B, 69) axis-angle -> (B,) (``context`` is ignored)."""
        return self.component_energies(body_pose).min(dim=-1).values

    def residuals(self, body_pose: torch.Tensor) -> torch.Tensor:
        """The max-mixture energy as squared residuals (Levenberg-Marquardt,
        :mod:`fitkit.fitting.lm`): for the component ``k`` of least energy, the
        Cholesky-whitened difference ``sqrt(0.5) L_k^-1 (x - mu_k)`` and the constant
        ``sqrt(-log c_k)``, so that ``residuals(x).square().sum(-1) == energy(x)``.

        The choice of ``k`` is not differentiated (the max-mixture energy is piecewise).

        Args:
            body_pose: ``(B, 69)`` axis-angle.
        Returns:
            ``(B, 70)`` residuals (``D + 1``).
        Raises:
            ValueError: a component with ``log c_k > 0`` (weights far above 1), whose energy
                is no sum of squares.
        """
        if not self.has_residual_form:
            raise ValueError("this GMM has a component with log c_k > 0 (its weights are not "
                             "normalized); its energy has no residual form")
        dtype = body_pose.dtype
        component = self.component_energies(body_pose.detach()).argmin(dim=-1)  # (B,)
        diff = body_pose - self.means.to(dtype)[component]
        white = torch.einsum("bij,bj->bi", self.whitening.to(dtype)[component], diff)
        constant = self.residual_constant.to(dtype)[component]
        return torch.cat([math.sqrt(0.5) * white, constant[:, None]], dim=-1)

    def residual_jacobian(self, body_pose: torch.Tensor) -> torch.Tensor:
        """The Jacobian of :meth:`residuals`: ``sqrt(0.5) L_k^-1`` of each sample's component
        over a zero row (the constant).

        Args:
            body_pose: ``(B, 69)`` axis-angle.
        Returns:
            ``(B, 70, 69)``.
        """
        component = self.component_energies(body_pose.detach()).argmin(dim=-1)
        white = math.sqrt(0.5) * self.whitening.to(body_pose.dtype)[component]
        return torch.cat([white, white.new_zeros(white.shape[0], 1, white.shape[2])], dim=1)

    def typical_pose(self, batch_size: int = 1,
                     context: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of the heaviest component: ``(B, 69)`` (``context`` is ignored)."""
        return self.means[self.weights.argmax()].expand(batch_size, -1).clone()

    @classmethod
    def from_pickle(cls, path: str | Path) -> GMMPrior:
        """Load the official ``gmm_08.pkl`` layout (latin1 pickle of a dict of arrays) without
        running code from the file (:func:`fitkit.io.safe_pickle.safe_load`).

        Raises:
            FileNotFoundError: no such file.
            UnsafePickleError: the pickle names anything but numpy arrays.
            FileKeyError: not a pickle of a dict, or a missing or malformed key (named).
        """
        path = Path(path)
        data = safe_load(path)
        if not isinstance(data, dict):
            raise FileKeyError(path, None, f"expected a pickled dict with keys "
                               f"{', '.join(GMM_KEYS)}, got {type(data).__name__}")
        arrays = {key: _gmm_array(data, key, path) for key in GMM_KEYS}
        weights = arrays["weights"]
        if weights.ndim != 1:
            raise FileKeyError(path, "weights", f"expected shape (K,), got {weights.shape}")
        k = weights.shape[0]
        for key, shape in (("means", (k, NUM_POSE)), ("covars", (k, NUM_POSE, NUM_POSE))):
            if arrays[key].shape != shape:
                raise FileKeyError(path, key, f"expected shape {shape} for {k} components "
                                   f"of {NUM_POSE}-d body poses, got {arrays[key].shape}")
        if (weights < 0).any() or weights.sum() <= 0:
            raise FileKeyError(path, "weights", "must be non-negative and not all zero")
        try:
            return cls(*arrays.values())
        except torch.linalg.LinAlgError as error:
            raise FileKeyError(path, "covars", "not positive definite") from error

    def save_pickle(self, path: str | Path) -> None:
        """Write the official layout: latin1-readable pickle of ``means``, ``covars``, ``weights``
        as float64 NumPy arrays."""
        data = {key: getattr(self, key).detach().cpu().double().numpy() for key in GMM_KEYS}
        atomic_write(path, pickle.dumps(data, protocol=2))


def _gmm_array(data: dict, key: str, path: Path) -> np.ndarray:
    """``data[key]`` as a finite float64 array, or a :class:`FileKeyError` naming the key."""
    if key not in data:
        raise FileKeyError(path, key, f"missing (a gmm_08.pkl holds {', '.join(GMM_KEYS)}; "
                           f"found {', '.join(sorted(map(str, data)))})")
    try:
        array = np.asarray(data[key], dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise FileKeyError(path, key, f"not an array of numbers ({error})") from error
    if not np.isfinite(array).all():
        raise FileKeyError(path, key, "contains NaN or infinite values")
    return array


def _log_gaussians(x: torch.Tensor, means: torch.Tensor, covars: torch.Tensor) -> torch.Tensor:
    """log N(x_n; mu_k, Sigma_k): (N, D), (K, D), (K, D, D) -> (N, K)."""
    chol = torch.linalg.cholesky(covars)  # (K, D, D)
    diff = (x[None] - means[:, None]).transpose(1, 2)  # (K, D, N)
    white = torch.linalg.solve_triangular(chol, diff, upper=False)
    quad = white.square().sum(1)  # (K, N)
    logdet = 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    d = x.shape[1]
    return (-0.5 * (quad + logdet[:, None] + d * math.log(2.0 * math.pi))).T


def em_step(
    x: torch.Tensor,
    means: torch.Tensor,
    covars: torch.Tensor,
    weights: torch.Tensor,
    reg_covar: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One expectation-maximization step of a full-covariance Gaussian mixture.

    Args:
        x: (N, D) data.
        means, covars, weights: (K, D), (K, D, D), (K,) current parameters.
        reg_covar: added to every covariance diagonal (keeps them positive definite).

    Returns:
        New ``means``, ``covars``, ``weights`` and the mean log-likelihood (scalar) of ``x`` under
        the parameters passed in.
    """
    log_joint = _log_gaussians(x, means, covars) + weights.log()
    log_norm = torch.logsumexp(log_joint, dim=1, keepdim=True)
    resp = (log_joint - log_norm).exp()  # (N, K)
    mass = resp.sum(0) + 1e-10  # (K,)
    new_means = resp.T @ x / mass[:, None]
    diff = x[None] - new_means[:, None]  # (K, N, D)
    new_covars = torch.einsum("kn,kni,knj->kij", resp.T, diff, diff) / mass[:, None, None]
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    new_covars = new_covars + reg_covar * eye
    return new_means, new_covars, mass / mass.sum(), log_norm.mean()


def init_gmm(
    x: torch.Tensor, num_components: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """k-means++ style initialization: means chosen among the data with probability proportional to
    the squared distance to the nearest chosen mean; shared data covariance; uniform weights.

    Args:
        x: (N, D) data (on the CPU or any device).
        num_components: K.
        generator: CPU generator for the choices.

    Returns:
        ``means`` (K, D), ``covars`` (K, D, D), ``weights`` (K,).
    """
    n = x.shape[0]
    first = torch.randint(n, (1,), generator=generator)
    chosen = [x[first.item()]]
    dist = (x - chosen[0]).square().sum(1)
    for _ in range(num_components - 1):
        probs = (dist / dist.sum()).cpu()
        pick = torch.multinomial(probs, 1, generator=generator).item()
        chosen.append(x[pick])
        dist = torch.minimum(dist, (x - x[pick]).square().sum(1))
    means = torch.stack(chosen)
    cov = torch.cov(x.T) + 1e-4 * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    covars = cov.expand(num_components, -1, -1).clone()
    weights = torch.full((num_components,), 1.0 / num_components, dtype=x.dtype, device=x.device)
    return means, covars, weights


def fit_gmm(
    x: torch.Tensor,
    num_components: int = 8,
    iterations: int = 100,
    reg_covar: float = 1e-4,
    generator: torch.Generator | None = None,
) -> GMMPrior:
    """Fit a max-mixture prior's Gaussian mixture to data with EM (float64).

    Args:
        x: (N, D) data, e.g. axis-angle body poses.
        num_components: K.
        iterations: EM steps from a k-means++ start (:func:`init_gmm`).
        reg_covar: covariance regularization added to every diagonal at every step.
        generator: CPU generator for the initialization.

    Returns:
        The fitted :class:`GMMPrior`.
    """
    x = x.double()
    params = init_gmm(x, num_components, generator)
    for _ in range(iterations):
        *new, _ = em_step(x, *params, reg_covar=reg_covar)
        params = tuple(new)
    return GMMPrior(*params)
