"""Training loops of the pose priors on poses from fitkit's synthetic pose sampler.

Each loop samples ``num_poses`` training poses with :func:`fitkit.synth.poses.sample_body_pose`
from ``seed``, shows a tqdm progress bar and keeps a resume checkpoint next to its output
(``OUT.resume.pt``, written atomically every ``checkpoint_every`` steps and removed when the run
ends): a killed run started again with ``resume=True`` and the same settings continues from its
last checkpoint (other settings are refused, naming them). Batches are drawn from the seed stream
of ``(seed, step)`` (:func:`fitkit.io.runs.seed_stream`) and the global RNG state (dropout, noise,
VAE samples) is checkpointed, so a resumed run ends with the same weights as an uninterrupted one.

The settings a resume must repeat are everything that changes the result: ``num_poses``,
``seed`` and the model's own settings, and for VPoser and the cNF also ``steps``,
``batch_size`` and ``lr`` (the cosine learning-rate decay spans ``steps``). The GMM's EM has no
schedule, so its ``steps`` may grow on resume to extend a run (never below the checkpoint's
step). Counts, steps and rates that would not train (0, negative, NaN) are refused before
anything is written, and a run holds ``OUT.lock`` (:func:`fitkit.train.output_lock`) so that a
second trainer on the same output is refused.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fitkit.geometry.rotations import axis_angle_to_matrix
from fitkit.io.runs import seed_stream, write_torch
from fitkit.priors.cnf import CNFPrior, body_pose_to_6d
from fitkit.priors.gmm import GMMPrior, em_step, init_gmm
from fitkit.priors.vposer import VPoserPrior, VPoserV2
from fitkit.synth.poses import sample_body_pose
from fitkit.train import (
    Command,
    check_non_negative,
    check_positive,
    output_lock,
    register_command,
    settings_mismatch,
)


def resume_path(out: Path) -> Path:
    """The resume checkpoint of a run writing ``out``: ``OUT.resume.pt`` beside it."""
    return out.with_name(out.name + ".resume.pt")


def _load_resume(out: Path, kind: str, resume: bool, settings: dict[str, Any], steps: int,
                 fields: tuple[str, ...]) -> dict[str, Any] | None:
    """The resume state of ``out`` when asked for and present, else ``None``.

    Args:
        fields: what the state must hold besides ``kind`` and ``step``.
    Raises:
        ValueError: an unreadable checkpoint, one of another kind or without ``fields``, one
            made with other ``settings`` (resume checkpoints of earlier fitkit versions hold
            none and are not checked), or one past ``steps``.
    """
    path = resume_path(out)
    if not resume or not path.is_file():
        if resume:
            tqdm.write(f"{path}: no resume checkpoint, starting from scratch")
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a damaged file
        reason = " ".join(str(error).split()[:20])
        raise ValueError(f"{path}: not a readable resume checkpoint ({reason}); delete it to "
                         "start over") from None
    if not isinstance(state, dict) or state.get("kind") != kind:
        found = state.get("kind") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{path}: field 'kind': a {found!r} checkpoint, not {kind!r}")
    missing = [field for field in ("step", *fields) if field not in state]
    if missing:
        raise ValueError(f"{path}: not a complete resume checkpoint (missing field(s) "
                         f"{', '.join(missing)}); delete it to start over")
    mismatch = settings_mismatch(state.get("settings", settings), settings)
    if mismatch:
        raise ValueError(f"{path}: resume with the run's own settings ({'; '.join(mismatch)})")
    if state["step"] > steps:
        raise ValueError(f"{path}: the checkpoint is at step {state['step']}, past steps="
                         f"{steps}; resume with at least {state['step']} steps")
    tqdm.write(f"{path}: resuming at step {state['step']}")
    return state


def training_poses(num_poses: int, seed: int) -> torch.Tensor:
    """(num_poses, 69) float64 sampler poses for training, from ``seed``."""
    return sample_body_pose(num_poses, torch.Generator().manual_seed(seed), dtype=torch.float64)


def train_gmm(out: Path, num_poses: int = 50_000, steps: int = 60, seed: int = 0,
              resume: bool = False, num_components: int = 8, reg_covar: float = 1e-4,
              checkpoint_every: int = 5) -> GMMPrior:
    """Fit the max-mixture GMM with EM and save it to ``out`` in the ``gmm_08.pkl`` layout.

    Args:
        out: output ``.pkl`` path.
        num_poses: training poses.
        steps: EM iterations.
        seed: sampler and initialization seed.
        resume: continue from ``OUT.resume.pt`` if present.
        num_components: mixture components (8 as SMPLify's).
        reg_covar: covariance regularization (rad^2).
        checkpoint_every: EM iterations between resume checkpoints.
    Raises:
        ValueError: a count that is not positive (or fewer poses than components), a
            regularization that is negative or not finite, a resume that cannot continue.
        RunError: another trainer writes ``out``.
    """
    check_positive(num_poses=num_poses, steps=steps, num_components=num_components,
                   checkpoint_every=checkpoint_every)
    check_non_negative(reg_covar=reg_covar)
    if num_poses < num_components:
        raise ValueError(f"num_poses ({num_poses}) must be at least num_components "
                         f"({num_components})")
    out = Path(out)
    with output_lock(out):
        settings = {"num_poses": num_poses, "seed": seed, "num_components": num_components,
                    "reg_covar": reg_covar}
        state = _load_resume(out, "gmm", resume, settings, steps,
                             ("means", "covars", "weights"))
        x = training_poses(num_poses, seed)
        if state is None:
            params = init_gmm(x, num_components, torch.Generator().manual_seed(seed))
            start = 0
        else:
            params, start = (state["means"], state["covars"], state["weights"]), state["step"]
        bar = tqdm(range(start, steps), initial=start, total=steps, desc="gmm EM")
        for step in bar:
            *new, log_lik = em_step(x, *params, reg_covar=reg_covar)
            params = tuple(new)
            bar.set_postfix(log_lik=f"{float(log_lik):.2f}")
            if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
                write_torch(resume_path(out), {
                    "kind": "gmm", "step": step + 1, "settings": settings, "means": params[0],
                    "covars": params[1], "weights": params[2]})
        prior = GMMPrior(*params)
        prior.save_pickle(out)
        resume_path(out).unlink(missing_ok=True)
    return prior


def _lr_schedule(steps: int) -> Any:
    """Cosine decay to 5% over ``steps``."""
    return lambda step: 0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))


def vposer_loss(model: VPoserV2, body_pose: torch.Tensor, kl_weight: float = 5e-3
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """VAE loss of VPoser v2 on (B, 69) poses: squared rotation-matrix reconstruction error
    summed over the 21 joints, plus ``kl_weight`` x KL(q(z|x) || N(0, I)) summed over latents.

    Returns:
        The scalar loss and its parts as floats.
    """
    pose21 = body_pose[:, :63]
    posterior = model.encode(pose21)
    decoded = model.decode(posterior.rsample())
    target = axis_angle_to_matrix(pose21.unflatten(-1, (21, 3)))
    rec = (decoded - target).square().sum(dim=(1, 2, 3)).mean()
    prior = torch.distributions.Normal(torch.zeros_like(posterior.loc),
                                       torch.ones_like(posterior.scale))
    kl = torch.distributions.kl_divergence(posterior, prior).sum(-1).mean()
    return rec + kl_weight * kl, {"rec": float(rec.detach()), "kl": float(kl.detach())}


def _train_network(kind: str, out: Path, module: torch.nn.Module, loss_fn: Any, x: torch.Tensor,
                   steps: int, seed: int, resume: bool, batch_size: int, lr: float,
                   checkpoint_every: int, settings: dict[str, Any]) -> None:
    """Adam with cosine decay on random batches of ``x``; resumable (see the module doc).

    ``settings``: the run's own settings besides the poses, steps, seed, batch size and
    learning rate (a resume must match them all).
    """
    settings = {"num_poses": x.shape[0], "steps": steps, "seed": seed, "batch_size": batch_size,
                "lr": lr, **settings}
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_schedule(steps))
    state = _load_resume(out, kind, resume, settings, steps,
                         ("model", "optimizer", "scheduler", "rng"))
    start = 0
    if state is not None:
        module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start = state["step"]
    module.train()
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=f"{kind} training")
    for step in bar:
        index = torch.randint(x.shape[0], (batch_size,), generator=seed_stream(seed, step))
        loss, parts = loss_fn(x[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 20 == 0:
            shown = {"loss": float(loss.detach()), **parts}
            bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items()})
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
            write_torch(resume_path(out), {
                "kind": kind, "step": step + 1, "settings": settings,
                "model": module.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()})
    module.eval()


def train_vposer(out: Path, num_poses: int = 100_000, steps: int = 4000, seed: int = 0,
                 resume: bool = False, batch_size: int = 256, lr: float = 1e-3,
                 kl_weight: float = 5e-3, checkpoint_every: int = 250) -> VPoserPrior:
    """Train VPoser v2 as a VAE and save a v2 experiment folder at ``out``.

    Args:
        out: output folder (``vposer.yaml`` + ``snapshots/vposer_epoch=00.ckpt``).
        num_poses, steps, seed, resume: see the module doc.
        batch_size, lr: Adam settings (cosine decay to 5%).
        kl_weight: weight of the KL term.
        checkpoint_every: steps between resume checkpoints.
    Raises:
        ValueError: a count, step number or rate that is not positive and finite, a negative
            ``kl_weight``, a resume that cannot continue.
        RunError: another trainer writes ``out``.
    """
    check_positive(num_poses=num_poses, steps=steps, batch_size=batch_size, lr=lr,
                   checkpoint_every=checkpoint_every)
    check_non_negative(kl_weight=kl_weight)
    out = Path(out)
    with output_lock(out):
        torch.manual_seed(seed)
        model = VPoserV2()
        x = training_poses(num_poses, seed).float()
        _train_network("vposer", out, model, lambda b: vposer_loss(model, b, kl_weight), x,
                       steps, seed, resume, batch_size, lr, checkpoint_every,
                       {"kl_weight": kl_weight})
        prior = VPoserPrior(model)
        prior.save_folder(out, name="vposer")
        resume_path(out).unlink(missing_ok=True)
    return prior


def cnf_loss(prior: CNFPrior, body_pose: torch.Tensor, noise: float = 0.02
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """Negative log-likelihood per dimension of the 6D poses with Gaussian noise of std
    ``noise`` added (the 6D poses lie on a 3-manifold per joint; the noise keeps the density
    finite off it)."""
    x = body_pose_to_6d(body_pose)
    x = x + noise * torch.randn_like(x)
    nll = -prior.flow.log_prob(x).mean() / x.shape[1]
    return nll, {"nll": float(nll.detach())}


def train_cnf(out: Path, num_poses: int = 100_000, steps: int = 4000, seed: int = 0,
              resume: bool = False, batch_size: int = 256, lr: float = 1e-3,
              num_layers: int = 4, hidden: int = 128, num_blocks: int = 1, noise: float = 0.02,
              checkpoint_every: int = 250) -> CNFPrior:
    """Train the unconditional pose flow by maximum likelihood and save its folder at ``out``.

    The energy offset stored with it is the mean ``-log_prob`` of the training poses, so typical
    poses have an energy near 0.

    Args:
        out: output folder (``config.json`` + ``weights.pt``).
        num_poses, steps, seed, resume: see the module doc.
        batch_size, lr: Adam settings (cosine decay to 5%).
        num_layers, hidden, num_blocks: flow size.
        noise: std of the training noise on the 6D poses.
        checkpoint_every: steps between resume checkpoints.
    Raises:
        ValueError: a count, size, step number or rate that is not positive and finite, a
            negative ``noise``, a resume that cannot continue.
        RunError: another trainer writes ``out``.
    """
    check_positive(num_poses=num_poses, steps=steps, batch_size=batch_size, lr=lr,
                   num_layers=num_layers, hidden=hidden, num_blocks=num_blocks,
                   checkpoint_every=checkpoint_every)
    check_non_negative(noise=noise)
    out = Path(out)
    with output_lock(out):
        torch.manual_seed(seed)
        prior = CNFPrior(num_layers=num_layers, hidden=hidden, num_blocks=num_blocks)
        x = training_poses(num_poses, seed).float()
        prior.flow.initialize(body_pose_to_6d(x[:4096]))
        _train_network("cnf", out, prior, lambda b: cnf_loss(prior, b, noise), x, steps, seed,
                       resume, batch_size, lr, checkpoint_every,
                       {"num_layers": num_layers, "hidden": hidden, "num_blocks": num_blocks,
                        "noise": noise})
        with torch.no_grad():
            offset = float(-prior.log_prob(x[:10_000]).mean())
        trained = CNFPrior(num_layers=num_layers, hidden=hidden, num_blocks=num_blocks,
                           energy_offset=offset)
        trained.load_state_dict(prior.state_dict())
        trained.save_folder(out)
        resume_path(out).unlink(missing_ok=True)
    return trained


def _common_arguments(parser: argparse.ArgumentParser, num_poses: int, steps: int) -> None:
    parser.add_argument("--out", type=Path, required=True, help="output path")
    parser.add_argument("--num-poses", type=int, default=num_poses,
                        help=f"training poses from the sampler (default {num_poses})")
    parser.add_argument("--steps", type=int, default=steps,
                        help=f"optimization steps (default {steps})")
    parser.add_argument("--seed", type=int, default=0, help="sampler and training seed")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT.resume.pt when present")


def _configure_gmm(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser, 50_000, 60)
    parser.add_argument("--num-components", type=int, default=8)
    parser.add_argument("--reg-covar", type=float, default=1e-4)


def _configure_network(parser: argparse.ArgumentParser) -> None:
    _common_arguments(parser, 100_000, 4000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)


def _run_gmm(args: argparse.Namespace) -> None:
    train_gmm(args.out, args.num_poses, args.steps, args.seed, args.resume, args.num_components,
              args.reg_covar)


def _run_vposer(args: argparse.Namespace) -> None:
    train_vposer(args.out, args.num_poses, args.steps, args.seed, args.resume, args.batch_size,
                 args.lr)


def _run_cnf(args: argparse.Namespace) -> None:
    train_cnf(args.out, args.num_poses, args.steps, args.seed, args.resume, args.batch_size,
              args.lr)


register_command(Command(
    "gmm", "fit the max-mixture GMM pose prior with EM (writes a gmm_08.pkl-layout file)",
    _configure_gmm, _run_gmm))
register_command(Command(
    "vposer", "train the VPoser v2-compatible VAE (writes a v2 experiment folder)",
    _configure_network, _run_vposer))
register_command(Command(
    "cnf", "train the normalizing-flow pose prior (writes a fitkit cNF folder)",
    _configure_network, _run_cnf))
