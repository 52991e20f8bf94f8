r"""Synaptic Intelligence (Zenke, Poole & Ganguli, ICML 2017): importance from the training path itself.

While task :math:`t` trains, every optimiser step moves the parameters by :math:`\Delta\theta` and
changes the loss by about :math:`g\cdot\Delta\theta`; summed over the steps, each parameter's
share of the loss decrease is the path integral

.. math:: \omega_i = -\sum_{\text{steps}} g_i\,\Delta\theta_i
          \;\approx\; \text{its part of } L(\theta_{\text{start}}) - L(\theta_{\text{end}}) ,

with :math:`g` the gradient of the task's loss (not of the consolidation penalty).  At the end of
the task it is normalised by how far the parameter travelled, :math:`\Delta_i=\theta_{i,\text{end}}-\theta_{i,\text{start}}`:

.. math:: \Omega^{(t)}_i = \frac{\max(\omega_i, 0)}{\Delta_i^2 + \xi} ,

accumulated over tasks, :math:`\Omega\leftarrow\Omega+\Omega^{(t)}`, and the next task trains with
:math:`L(\theta) + c\sum_i\Omega_i(\theta_i-\theta^*_i)^2` (the paper's penalty, no 1/2).

**The clamp.**  A step can raise the loss (momentum, a large learning rate, the mini-batch noise),
so :math:`\omega_i` can be negative, and with it :math:`\Omega_i`: a negative importance *rewards*
moving the parameter away and can make training diverge.  This implementation keeps
:math:`\max(\omega_i,0)` (a parameter whose moves did not help the task is not protected); the
paper does not discuss the case.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .consolidation import Consolidation, check_lam
from .streams import Stream
from .strategies import BufferDict

__all__ = ["SI"]


class SI(Consolidation):
    r"""Synaptic Intelligence: :math:`\Omega^{(t)}_i=\max(\omega_i,0)/(\Delta_i^2+\xi)` from the path integral :math:`\omega`.

    Args:
        c: the strength :math:`c\ge0` of the penalty :math:`c\sum_i\Omega_i(\theta_i-\theta^*_i)^2`.
        xi: the damping :math:`\xi>0` (the paper uses 0.1 on split MNIST, 1e-3 on permuted MNIST).

    Hooks: ``before_task`` remembers :math:`\theta_{\text{start}}`; ``after_backward`` (right after
    ``backward()``) keeps the gradient :math:`g` of the task's loss -- SI sets ``task_gradient``, so
    activation penalties composed with it (SLNID) are back-propagated separately and never count as
    task progress, and no consolidation gradient (its own or another strategy's) has been added yet,
    wherever SI stands in a ``Compose`` -- and the parameters before the step; ``after_step`` adds
    :math:`-g\odot\Delta\theta` to :math:`\omega`; ``after_task`` turns :math:`\omega` into
    :math:`\Omega^{(t)}` and folds it into the running quadratic (online mode, :math:`\gamma=1`).
    """

    name = "si"
    task_gradient = True

    def __init__(self, c: float, *, xi: float = 0.1):
        super().__init__(c, mode="online", gamma=1.0, lam_scale=2.0)
        self.xi = check_lam(xi, "xi (ξ)")
        if self.xi == 0:
            raise ValueError("xi must be > 0: it keeps Omega finite for parameters that did not move.")
        self.path = BufferDict()  # omega: the running path integral of the current task
        self.start = BufferDict()  # theta at the start of the current task
        self._step: tuple[list, list, list, list] | None = None  # (names, params, g, theta before the step)

    def before_task(self, model: nn.Module, stream: Stream, t: int) -> None:
        for n, p in model.named_parameters():
            self.start[n] = p.detach().clone()
            self.path[n] = torch.zeros_like(p)

    def after_backward(self, model: nn.Module, t: int) -> None:
        moving = [(n, p) for n, p in model.named_parameters() if p.grad is not None]
        with torch.no_grad():
            self._step = ([n for n, _ in moving], [p for _, p in moving],
                          torch._foreach_mul([p.grad for _, p in moving], 1.0),  # a copy of g
                          [p.detach().clone() for _, p in moving])

    @torch.no_grad()
    def after_step(self, model: nn.Module, t: int) -> None:
        if self._step is None:
            return
        names, params, g, before = self._step
        step = torch._foreach_sub([p.detach() for p in params], before)  # delta theta of this step
        torch._foreach_mul_(step, g)
        torch._foreach_sub_([self.path[n] for n in names], step)  # omega -= g * delta theta
        self._step = None

    def importance(self, model: nn.Module, stream: Stream, t: int) -> dict[str, Tensor]:
        r""":math:`\Omega^{(t)}_i=\max(\omega_i,0)/(\Delta_i^2+\xi)` for task ``t`` (and :math:`\omega` reset)."""
        omega = {}
        for n, p in model.named_parameters():
            if n in self.path:
                delta = p.detach() - self.start[n]
                omega[n] = self.path[n].clamp_min(0) / (delta.square() + self.xi)
                self.path[n] = torch.zeros_like(p)
        return omega
