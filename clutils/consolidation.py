r"""The one quadratic consolidation penalty of the book, and the strategy built on it.

.. math:: \mathcal{R}(\theta) = \frac{\lambda}{2}\sum_i \Omega_i\,(\theta_i-\theta^*_i)^2

:math:`\theta^*` are the parameters after an earlier task (the *anchor*) and :math:`\Omega` their
importance: the Fisher diagonal for EWC (chapter 2, :mod:`clutils.ewc`), the MAS importance
(chapter 3, :mod:`clutils.mas`), or 1 for plain :class:`L2`.  Its gradient is
:math:`\lambda\,\Omega\odot(\theta-\theta^*)`.

**One running quadratic per parameter.**  After several tasks the penalty is a sum of
quadratics, and a sum of quadratics is one quadratic:

.. math:: \sum_s \Omega^{(s)}(\theta-\theta^{*(s)})^2 = A\,(\theta-\bar\theta)^2 + c,\qquad
          A=\sum_s\Omega^{(s)},\quad \bar\theta=\frac{\sum_s\Omega^{(s)}\theta^{*(s)}}{A}.

:class:`Consolidation` keeps exactly :math:`A`, :math:`\bar\theta` and the constant :math:`c` as
registered buffers, so a training step costs one term per parameter whatever the number of
tasks.  The two modes of EWC are two update rules of ``after_task``, with :math:`\Omega^{(t)}` the
importance of the task just learnt and :math:`\theta^*_t` the parameters then:

* ``"separate"`` (Kirkpatrick et al., 2017; one penalty per past task):
  :math:`A\leftarrow A+\Omega^{(t)}`, :math:`\bar\theta\leftarrow(A\bar\theta+\Omega^{(t)}\theta^*_t)/(A+\Omega^{(t)})`,
  :math:`c\leftarrow c+\sum_i A_i(\bar\theta'_i-\bar\theta_i)^2+\Omega^{(t)}_i(\bar\theta'_i-\theta^*_{t,i})^2`;
* ``"online"`` (online EWC, Schwarz et al., 2018; MAS):
  :math:`A\leftarrow\gamma A+\Omega^{(t)}`, :math:`\bar\theta\leftarrow\theta^*_t`, :math:`c=0`.

**Heads of other tasks.**  With one head per task (task-incremental streams) the importance for
task ``t`` is computed through head ``t``; the other heads' parameters do not reach that output
(their importance would be zero), so only the shared layers and task ``t``'s own head are
consolidated after task ``t``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from .streams import Stream
from .models import check_model
from . import seeds
from .strategies import BufferDict, Strategy

__all__ = ["quadratic_penalty", "Consolidation", "L2", "ImportanceFn", "MODES", "task_inputs"]

ImportanceFn = Callable[[nn.Module, Stream, int], "dict[str, Tensor]"]
MODES = ("separate", "online")


def quadratic_penalty(model: nn.Module, anchor: dict[str, Tensor], omega: dict[str, Tensor], lam: float) -> Tensor:
    r"""The consolidation penalty :math:`\frac{\lambda}{2}\sum_i\Omega_i(\theta_i-\theta^*_i)^2`, in plain PyTorch.

    Sums over the parameters named in ``omega`` (keys of ``model.named_parameters()``); ``anchor``
    holds :math:`\theta^*` for each.  Differentiable: its gradient is :math:`\lambda\,\Omega\odot(\theta-\theta^*)`.
    """
    params = dict(model.named_parameters())
    unknown = [n for n in omega if n not in params or n not in anchor]
    if unknown:
        raise KeyError(f"omega names {unknown[:3]} that are not parameters of the model or have no anchor; "
                       f"key omega and anchor like model.named_parameters().")
    return 0.5 * lam * sum((omega[n] * (params[n] - anchor[n]) ** 2).sum() for n in omega)


def check_lam(lam: float, what: str = "lambda (λ)") -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
        raise ValueError(f"{what} must be a finite number, got {lam!r}.")
    if lam < 0:
        raise ValueError(f"{what} must be non-negative (it weighs a penalty), got {lam}; use lam >= 0.")
    return float(lam)


def task_inputs(stream: Stream, t: int, n_samples: int | None = None, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Task ``t``'s training inputs and labels, or a seeded subsample of ``n_samples`` of them."""
    task = stream[t]
    x, y = task.x_train, task.y_train
    if n_samples is not None and n_samples < len(y):
        g = seeds.generator(seeds.subsample_seed(seed, t))
        idx = torch.randperm(len(y), generator=g)[:n_samples].to(y.device)
        x, y = x[idx], y[idx]
    return x, y


def check_sampling(n_samples: int | None, **sizes: int | None) -> None:
    if n_samples is not None and (isinstance(n_samples, bool) or not hasattr(n_samples, "__index__") or n_samples < 1):
        raise ValueError(f"n_samples must be a positive integer or None (all training inputs), got {n_samples!r}.")
    for what, v in sizes.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{what} must be a positive integer, got {v!r}.")


class Consolidation(Strategy):
    r"""Quadratic consolidation: after each task, fold :math:`(\theta^*_t, \Omega^{(t)})` into one running quadratic.

    Args:
        lam: :math:`\lambda\ge 0`.
        importance: ``importance(model, stream, t) -> {name: Omega}`` (subclasses override the
            :meth:`importance` method instead).
        mode: ``"separate"`` or ``"online"`` (see the module docstring).
        gamma: the decay :math:`\gamma\in[0,1]` of the online mode.
        lam_scale: the penalty uses :math:`\lambda\cdot` ``lam_scale`` (MAS uses 2 so that ``MAS(lam)``
            is the paper's :math:`\lambda\sum\Omega\Delta^2` without the 1/2).

    State (buffers): ``omega`` (:math:`A`), ``anchor`` (:math:`\bar\theta`), ``const`` (:math:`c`, float64)
    and ``n_tasks``.  The trainer applies the penalty through :meth:`grad_penalty` (its gradient
    added to ``.grad`` with fused kernels); :meth:`value` is the same penalty as a plain
    differentiable expression (the tests check that the two agree).
    """

    name = "consolidation"

    def __init__(self, lam: float, importance: ImportanceFn | None = None, *, mode: str = "separate",
                 gamma: float = 1.0, lam_scale: float = 1.0, name: str | None = None):
        super().__init__()
        self.lam = check_lam(lam)
        if mode not in MODES:
            raise ValueError(f"unknown consolidation mode {mode!r}; choose one of {', '.join(map(repr, MODES))}.")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}.")
        if importance is not None and not callable(importance):
            raise TypeError("importance must be a callable importance(model, stream, t) -> dict of tensors.")
        if importance is None and type(self).importance is Consolidation.importance:
            raise TypeError("Consolidation needs an importance function importance(model, stream, t) -> dict "
                            "of tensors (or use EWC, MAS or L2).")
        self._importance_fn = importance
        self.mode, self.gamma, self.lam_scale = mode, float(gamma), float(lam_scale)
        if name is not None:
            self.name = name
        self.omega = BufferDict()  # A
        self.anchor = BufferDict()  # theta-bar
        self.register_buffer("const", torch.zeros((), dtype=torch.float64))  # c
        self.register_buffer("n_tasks", torch.zeros((), dtype=torch.int64))
        self._bound: tuple | None = None  # (model, params, A, anchors, workspace): lists ready for every step

    def importance(self, model: nn.Module, stream: Stream, t: int) -> dict[str, Tensor]:
        r""":math:`\Omega^{(t)}`: the importance of every parameter for task ``t``."""
        return self._importance_fn(model, stream, t)

    # ---- after each task: fold the new quadratic in
    @staticmethod
    def _kept_names(model: nn.Module, stream: Stream, t: int) -> set[str]:
        model = check_model(model)
        if model.n_heads == 1:
            return {n for n, _ in model.named_parameters()}
        own = stream.head_of(t)
        other = {id(p) for j in range(model.n_heads) if j != own for p in model.head_parameters(j)}
        return {n for n, p in model.named_parameters() if id(p) not in other}

    @staticmethod
    def _checked(model: nn.Module, omega: dict[str, Tensor]) -> dict[str, Tensor]:
        params = dict(model.named_parameters())
        if not isinstance(omega, dict):
            raise TypeError(f"the importance function must return a dict of tensors, got {type(omega).__name__}.")
        for n, o in omega.items():
            if n not in params:
                raise KeyError(f"importance names {n!r}, which is not a parameter of the model.")
            if o.shape != params[n].shape:
                raise ValueError(f"importance of {n!r} has shape {tuple(o.shape)}, the parameter {tuple(params[n].shape)}.")
            if not torch.isfinite(o).all():
                raise FloatingPointError(f"importance of {n!r} is not finite; check the model and data.")
        return omega

    @torch.no_grad()
    def after_task(self, model: nn.Module, stream: Stream, t: int) -> None:
        """Compute :math:`\\Omega^{(t)}` on task ``t`` and fold it into :math:`(A, \\bar\\theta, c)`."""
        keep = self._kept_names(model, stream, t)
        new = self._checked(model, self.importance(model, stream, t))
        params = dict(model.named_parameters())
        new = {n: o.detach().to(params[n]) for n, o in new.items() if n in keep}
        const = self.const.clone()
        for n in dict.fromkeys([*self.omega.keys(), *new]):
            theta = params[n].detach()
            o = new.get(n, torch.zeros_like(theta))
            if n not in self.omega:
                self.omega[n], self.anchor[n] = o.clone(), theta.clone()
            elif self.mode == "online":
                self.omega[n], self.anchor[n] = self.gamma * self.omega[n] + o, theta.clone()
            else:  # separate: the exact merge, in float64
                A, m, o64, th = self.omega[n].double(), self.anchor[n].double(), o.double(), theta.double()
                A_new = A + o64
                m_new = torch.where(A_new > 0, (A * m + o64 * th) / A_new.clamp_min(torch.finfo(torch.float64).tiny), th)
                m_new = m_new.to(theta.dtype)  # the stored anchor; c is computed against it
                const += (A * (m_new.double() - m).square() + o64 * (m_new.double() - th).square()).sum()
                self.omega[n], self.anchor[n] = A_new.to(theta.dtype), m_new
        for n, A in self.omega.items():  # subnormal importances weigh nothing but slow every CPU product
            self.omega[n] = torch.where(A < torch.finfo(A.dtype).tiny, torch.zeros_like(A), A)
        self.const.copy_(const if self.mode == "separate" else torch.zeros_like(const))
        self.n_tasks += 1
        self._bound = None

    # ---- every step
    def _bind(self, model: nn.Module) -> tuple:
        params = dict(model.named_parameters())
        names = self.omega.keys()
        P = [params[n] for n in names]
        self._bound = (model, P, [self.omega[n] for n in names], [self.anchor[n] for n in names],
                       [torch.empty_like(p, memory_format=torch.contiguous_format) for p in P])  # workspace
        return self._bound

    def _apply(self, fn, *args, **kwargs):  # .to(device) replaces the buffers: rebind at the next step
        self._bound = None
        return super()._apply(fn, *args, **kwargs)

    def grad_penalty(self, model: nn.Module, t: int) -> None:
        r"""Add :math:`\lambda A\odot(\theta-\bar\theta)`, the gradient of
        :math:`\frac\lambda2\sum_i A_i(\theta_i-\bar\theta_i)^2`, to every consolidated parameter's ``.grad``."""
        if len(self.omega) == 0:
            return
        bound = self._bound if self._bound is not None and self._bound[0] is model else self._bind(model)
        _, P, A, M, W = bound
        lam = self.lam * self.lam_scale
        with torch.no_grad():  # grad += lam * (A * (theta - theta-bar)), in a workspace kept between steps
            for p, a, m, w in zip(P, A, M, W):
                if p.grad is not None:
                    p.grad.add_(torch.sub(p, m, out=w).mul_(a), alpha=lam)

    def value(self, model: nn.Module) -> Tensor | None:
        r"""The same penalty as a differentiable expression: :math:`\frac\lambda2\sum_iA_i(\theta_i-\bar\theta_i)^2+\frac\lambda2c`."""
        if len(self.omega) == 0:
            return None
        lam = self.lam * self.lam_scale
        pen = quadratic_penalty(model, dict(self.anchor.items()), dict(self.omega.items()), lam)
        return pen + 0.5 * lam * self.const.to(pen.dtype)


def _ones(model: nn.Module, stream: Stream, t: int) -> dict[str, Tensor]:
    return {n: torch.ones_like(p) for n, p in model.named_parameters()}


class L2(Consolidation):
    r"""Plain L2 towards the parameters after the latest task: :math:`\Omega=1`, :math:`\frac\lambda2\lVert\theta-\theta^*\rVert^2`.

    Online mode with :math:`\gamma=0` by default (one anchor, uniform strength);
    ``mode="separate"`` anchors to every past task instead.
    """

    name = "l2"

    def __init__(self, lam: float, *, mode: str = "online", gamma: float = 0.0):
        super().__init__(lam, _ones, mode=mode, gamma=gamma)
