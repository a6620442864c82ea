"""Adam for SMPLify's stages, without ``torch.optim``.

``torch.optim``'s optimizers import ``torch._dynamo`` when the first one of a process is made
(``Optimizer.__init__`` runs through ``torch._disable_dynamo``): about 2 s on a small CPU, more
than a batched keypoint fit of 64 images, paid by every fitting process. :class:`Adam` does the
arithmetic of ``torch.optim.Adam``'s default path (single tensors, no weight decay, no AMSGrad)
in the same order, so fits are bit-identical (``tests/test_adam.py``), and reads nothing from the
device: its step count is a Python integer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


class Adam:
    """Adam (Kingma and Ba) over a list of leaf tensors.

    Args:
        params: the tensors to optimize (each its own ``(...)`` shape); their ``.grad`` is read.
        lr: step size.
        betas: decay rates of the first and second moment averages.
        eps: added to the denominator.
    """

    def __init__(self, params: Sequence[Tensor], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        if lr <= 0 or eps < 0 or not all(0.0 <= beta < 1.0 for beta in betas):
            raise ValueError(f"Adam needs lr > 0, eps >= 0 and betas in [0, 1), got lr={lr}, "
                             f"betas={betas}, eps={eps}")
        self.params = list(params)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.steps = [0] * len(self.params)
        self.moments: list[tuple[Tensor, Tensor] | None] = [None] * len(self.params)

    def step(self, closure: Callable[[], Tensor]) -> Tensor:
        """Evaluate ``closure`` (which sets the tensors' ``.grad``) and take one Adam step on
        every tensor that has a gradient.

        Returns:
            what ``closure`` returned.
        """
        with torch.enable_grad():
            loss = closure()
        first, second = self.betas
        with torch.no_grad():
            for index, param in enumerate(self.params):
                grad = param.grad
                if grad is None:
                    continue
                if self.moments[index] is None:
                    self.moments[index] = (torch.zeros_like(param), torch.zeros_like(param))
                average, squares = self.moments[index]
                self.steps[index] += 1
                step = self.steps[index]
                average.lerp_(grad, 1 - first)
                squares.mul_(second).addcmul_(grad, grad, value=1 - second)
                step_size = self.lr / (1 - first**step)
                denominator = (squares.sqrt() / (1 - second**step) ** 0.5).add_(self.eps)
                param.addcdiv_(average, denominator, value=-step_size)
        return loss
