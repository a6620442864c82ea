"""fitkit's Adam equals torch.optim.Adam bit for bit, and a fit process never imports
torch._dynamo (which torch.optim's first optimizer of a process would)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from fitkit.fitting.adam import Adam


def quadratic_problem(seed: int) -> tuple[list[torch.Tensor], callable]:
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(5, 3, generator=generator).requires_grad_(),
              torch.randn(4, generator=generator).requires_grad_()]
    target = [torch.randn(5, 3, generator=generator), torch.randn(4, generator=generator)]
    scale = torch.rand(5, 3, generator=generator) * 10

    def loss() -> torch.Tensor:
        return (scale * (params[0] - target[0]) ** 4).sum() + (params[1] - target[1]).abs().sum()

    return params, loss


@pytest.mark.parametrize("lr, betas, eps", [(0.01, (0.9, 0.999), 1e-8), (0.3, (0.5, 0.9), 1e-3)])
def test_adam_equals_torch_optim_adam_exactly(lr, betas, eps) -> None:
    trajectories = []
    for optimizer_class in (Adam, torch.optim.Adam):
        params, loss = quadratic_problem(0)
        optimizer = optimizer_class(params, lr=lr, betas=betas, eps=eps)

        def closure(params=params, loss=loss) -> torch.Tensor:
            value = loss()
            grads = torch.autograd.grad(value, params)
            for param, grad in zip(params, grads, strict=True):
                param.grad = grad
            return value.detach()

        trajectory = []
        for _ in range(30):
            trajectory.append(optimizer.step(closure))
        trajectories.append((torch.stack(trajectory), [p.detach().clone() for p in params]))
    (ours, ours_params), (theirs, theirs_params) = trajectories
    assert torch.equal(ours, theirs)
    assert all(torch.equal(a, b) for a, b in zip(ours_params, theirs_params, strict=True))
    assert ours[-1] < 0.9 * ours[0]  # it does minimize


def test_a_parameter_without_gradient_is_left_alone_and_bad_settings_are_refused() -> None:
    still, moving = torch.zeros(3, requires_grad=True), torch.ones(3, requires_grad=True)
    optimizer = Adam([still, moving], lr=0.1)

    def closure() -> torch.Tensor:
        moving.grad = torch.ones(3)
        return torch.zeros(())

    optimizer.step(closure)
    assert torch.equal(still, torch.zeros(3)) and torch.allclose(moving, torch.full((3,), 0.9))
    with pytest.raises(ValueError, match="lr > 0"):
        Adam([moving], lr=0.0)


def test_a_keypoint_fit_does_not_import_torch_dynamo() -> None:
    """torch.optim's first optimizer imports torch._dynamo (seconds); SMPLify's Adam stages do
    not, so a fitting process does not pay it."""
    code = (
        "import sys, torch, fitkit\n"
        "from fitkit.fitting import SMPLify, preset\n"
        "from fitkit.geometry import Camera\n"
        "from fitkit.terms import KeypointsTerm\n"
        "body = fitkit.load_body('open')\n"
        "camera = Camera.from_image_size(128, 128, batch_size=2)\n"
        "keypoints = torch.rand(2, 25, 3) * 100\n"
        "config = preset('spin').with_stages(iterations=2)\n"
        "result = SMPLify(body, fitkit.priors.load('gmm'), config).fit(KeypointsTerm(keypoints),"
        " camera)\n"
        "assert result.energy.isfinite().all()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert output.stdout.strip() == "False", output.stdout + output.stderr
