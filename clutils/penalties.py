r"""The consolidation penalty and the strategies built on it (EWC, online EWC, MAS, L2).

One penalty for the whole book:

.. math:: \mathcal{R}(\theta) = \frac{\lambda}{2}\sum_i \Omega_i\,(\theta_i-\theta^*_i)^2

where :math:`\theta^*` are the parameters after an earlier task (the *anchor*) and
:math:`\Omega` their importance: the Fisher diagonal for EWC (Kirkpatrick et al.,
2017, whose convention this is), the MAS importance, or 1 for plain L2.
:class:`Consolidation` is the strategy that computes :math:`\Omega` after each
task and adds the penalty at every step; :class:`EWC`, :class:`MAS` and
:class:`L2` only choose its importance and bookkeeping.

**Heads of other tasks.**  With a multi-head model (task-incremental streams) the
importance for task ``t`` is computed through head ``t``; the parameters of the
other heads do not reach that output and would get zero importance anyway.
Consolidation keeps :math:`\Omega` only on the shared layers and on task ``t``'s
own head, so the penalty never spends time on zero terms.  The trainer does not
train old heads (they are not in the optimiser), so their terms only pin values
that do not move; in single-head streams (domain/class) the one head is shared
and fully consolidated.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from .data import Stream
from .importance import FISHER_KINDS, MAS_KINDS, fisher_diagonal, hebbian_importance, mas_importance
from .strategies import Strategy

__all__ = ["quadratic_penalty", "Consolidation", "EWC", "MAS", "L2", "ImportanceFn"]

ImportanceFn = Callable[[nn.Module, Stream, int], "dict[str, Tensor]"]
MODES = ("separate", "online")


class _Quadratic(torch.autograd.Function):
    """Value and gradient of lam/2 sum_i Omega_i (theta_i - a_i)^2 in a few fused (foreach) kernels."""

    @staticmethod
    def forward(ctx, lam: float, anchors: list[Tensor], omegas: list[Tensor], *params: Tensor) -> Tensor:
        d = torch._foreach_sub(params, anchors)  # theta - theta*
        od = torch._foreach_mul(d, omegas)  # Omega (theta - theta*): the gradient, up to lam
        ctx.save_for_backward(*od)
        ctx.lam = lam
        return (0.5 * lam) * torch.stack([torch.dot(a.reshape(-1), b.reshape(-1)) for a, b in zip(od, d)]).sum()

    @staticmethod
    def backward(ctx, grad: Tensor):
        return (None, None, None, *torch._foreach_mul(ctx.saved_tensors, grad * ctx.lam))


def _quadratic(params: list[Tensor], anchors: list[Tensor], omegas: list[Tensor], lam: float) -> Tensor:
    r""":math:`\frac{\lambda}{2}\sum_i\Omega_i(\theta_i-\theta^*_i)^2` over lists of tensors, gradient
    :math:`\lambda\,\Omega\odot(\theta-\theta^*)` (a custom autograd function: half the cost of the
    plain expression ``sum((o * (p - a) ** 2).sum())`` at every training step)."""
    if not params:
        return torch.zeros(())
    return _Quadratic.apply(float(lam), list(anchors), list(omegas), *params)


def quadratic_penalty(model: nn.Module, anchor: dict[str, Tensor], omega: dict[str, Tensor], lam: float) -> Tensor:
    r"""The consolidation penalty :math:`\frac{\lambda}{2}\sum_i\Omega_i(\theta_i-\theta^*_i)^2`.

    Sums over the parameters named in ``omega`` (keys of ``model.named_parameters()``);
    ``anchor`` holds :math:`\theta^*` for each of them.  Its gradient is
    :math:`\lambda\,\Omega\odot(\theta-\theta^*)`.
    """
    params = dict(model.named_parameters())
    unknown = [n for n in omega if n not in params or n not in anchor]
    if unknown:
        raise KeyError(f"omega names {unknown[:3]} that are not parameters of the model or have no anchor; "
                       f"key omega and anchor like model.named_parameters().")
    names = list(omega)
    return _quadratic([params[n] for n in names], [anchor[n] for n in names], [omega[n] for n in names], lam)


def _check_lam(lam: float) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
        raise ValueError(f"lambda must be a finite number, got {lam!r}.")
    if lam < 0:
        raise ValueError(f"lambda (λ) must be non-negative (it weighs a penalty), got {lam}; use lam >= 0.")
    return float(lam)


class Consolidation(Strategy):
    r"""Quadratic consolidation: after each task, remember :math:`\theta^*` and :math:`\Omega`; penalise moving away.

    Args:
        lam: :math:`\lambda\ge 0` of :func:`quadratic_penalty`.
        importance: ``importance(model, stream, t) -> {name: Omega}``, e.g. a Fisher diagonal.
        mode: ``"separate"`` -- one (anchor, :math:`\Omega`) pair per past task,
            :math:`\mathcal R=\sum_{s<t}\frac\lambda2\sum_i\Omega^{(s)}_i(\theta_i-\theta^{*(s)}_i)^2`;
            ``"online"`` (online EWC, Schwarz et al., 2018) -- one pair,
            :math:`\Omega\leftarrow\gamma\,\Omega+\Omega^{(t)}` and the anchor at the latest :math:`\theta^*`.
        gamma: the decay :math:`\gamma\in[0,1]` of the online mode.
        lam_scale: the penalty uses :math:`\lambda\cdot` ``lam_scale`` (MAS uses 2 so that ``MAS(lam)``
            is the paper's :math:`\lambda\sum\Omega\Delta^2` without the 1/2).

    ``penalty`` is ``None`` until the first task is consolidated.  Only the shared
    layers and task ``t``'s own head are consolidated after task ``t`` (see the
    module docstring).
    """

    def __init__(self, lam: float, importance: ImportanceFn, *, mode: str = "separate", gamma: float = 1.0,
                 name: str = "consolidation", lam_scale: float = 1.0):
        self.lam = _check_lam(lam)
        if mode not in MODES:
            raise ValueError(f"unknown consolidation mode {mode!r}; choose one of {', '.join(map(repr, MODES))}.")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be a number in [0, 1], got {gamma!r}.")
        if not callable(importance):
            raise TypeError("importance must be a callable importance(model, stream, t) -> dict of tensors.")
        self.importance = importance
        self.mode = mode
        self.gamma = float(gamma)
        self.name = name
        self.lam_scale = float(lam_scale)
        self.terms: list[tuple[dict[str, Tensor], dict[str, Tensor]]] = []  # (anchor, omega) pairs
        self.n_consolidated = 0
        self._bound: tuple | None = None  # (model, params, anchors, omegas): lists ready for every step

    # ---- what is kept
    @staticmethod
    def _kept_names(model: nn.Module, stream: Stream, t: int) -> set[str]:
        names = {n for n, _ in model.named_parameters()}
        heads = getattr(model, "heads", None)
        if heads is not None and getattr(model, "n_heads", 1) > 1:
            own = stream.head_of(t)
            other = {id(p) for j, h in enumerate(heads) if j != own for p in h.parameters()}
            names = {n for n, p in model.named_parameters() if id(p) not in other}
        return names

    def _checked(self, model: nn.Module, omega: dict[str, Tensor]) -> dict[str, Tensor]:
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

    def after_task(self, model: nn.Module, stream: Stream, t: int) -> None:
        """Compute :math:`\\Omega^{(t)}` on task ``t`` and store it with the anchor :math:`\\theta^*`."""
        keep = self._kept_names(model, stream, t)
        omega_new = self._checked(model, self.importance(model, stream, t))
        params = dict(model.named_parameters())
        omega_new = {n: o.detach().to(params[n].device).clone() for n, o in omega_new.items() if n in keep}
        if self.mode == "online" and self.terms:
            _, old = self.terms[0]
            omega = {n: self.gamma * o for n, o in old.items()}
            for n, o in omega_new.items():
                omega[n] = omega[n] + o if n in omega else o
        else:
            omega = omega_new
        anchor = {n: params[n].detach().clone() for n in omega}
        if self.mode == "online":
            self.terms = [(anchor, omega)]
        else:
            self.terms.append((anchor, omega))
        self.n_consolidated += 1
        self._bound = None

    # ---- the penalty, every step
    def _bind(self, model: nn.Module) -> None:
        r"""Lists ready for every step.  Several (anchor, Omega) pairs of one parameter are merged exactly:

        .. math:: \sum_s \Omega^{(s)}(\theta-\theta^{*(s)})^2 = A(\theta-m)^2 + c,\quad
                  A=\sum_s\Omega^{(s)},\; m=\frac{\sum_s\Omega^{(s)}\theta^{*(s)}}{A},\;
                  c=\sum_s\Omega^{(s)}\theta^{*(s)2}-A m^2

        (a sum of quadratics is a quadratic), so the separate mode costs one term per
        parameter whatever the number of tasks, with the same value and gradient.
        """
        params = dict(model.named_parameters())
        names = list(dict.fromkeys(n for _, om in self.terms for n in om))
        P, M, O = [], [], []
        const = torch.zeros((), dtype=torch.float64)
        for n in names:
            p = params[n]
            pairs = [(a[n], o[n]) for a, o in self.terms if n in o]
            if len(pairs) == 1:
                m, o = pairs[0]
            else:  # separate mode, several tasks: merge in float64
                a = torch.stack([a for a, _ in pairs]).double()
                w = torch.stack([o for _, o in pairs]).double()
                o = w.sum(0)
                s1 = (w * a).sum(0)
                m = torch.where(o > 0, s1 / o.clamp_min(torch.finfo(torch.float64).tiny), a[-1])
                const = const + ((w * a.square()).sum(0) - o * m.square()).clamp_min(0).sum().cpu()
            P.append(p)
            M.append(m.to(device=p.device, dtype=p.dtype))
            O.append(o.to(device=p.device, dtype=p.dtype))
        dev = P[0].device if P else torch.device("cpu")
        self._bound = (model, P, M, O, const.to(device=dev, dtype=P[0].dtype if P else torch.float32))

    def penalty(self, model: nn.Module, t: int, hidden: list[Tensor]) -> Tensor | None:
        """:math:`\\frac{\\lambda}{2}\\sum_i\\Omega_i(\\theta_i-\\theta^*_i)^2` summed over the stored terms."""
        if not self.terms:
            return None
        if self._bound is None or self._bound[0] is not model:
            self._bind(model)
        _, P, M, O, const = self._bound
        lam = self.lam * self.lam_scale
        pen = _quadratic(P, M, O, lam)
        return pen + (0.5 * lam) * const if self.mode == "separate" and len(self.terms) > 1 else pen

    # ---- records and checkpoints
    def config(self) -> dict:
        return {"name": self.name, "lam": self.lam, "mode": self.mode, "gamma": self.gamma,
                "lam_scale": self.lam_scale,
                "importance": getattr(self.importance, "__qualname__", type(self.importance).__name__)}

    def state_dict(self) -> dict:
        return {"mode": self.mode, "n_consolidated": self.n_consolidated,
                "terms": [{"anchor": dict(a), "omega": dict(o)} for a, o in self.terms]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("mode") != self.mode or "terms" not in state:
            raise ValueError(f"this state is not from a {self.mode!r} consolidation (mode={state.get('mode')!r}).")
        self.terms = [({n: v.clone() for n, v in d["anchor"].items()}, {n: v.clone() for n, v in d["omega"].items()})
                      for d in state["terms"]]
        self.n_consolidated = int(state["n_consolidated"])
        self._bound = None


# --------------------------------------------------------------------------- the methods
def _check_sampling(n_samples: int | None, batch_size: int) -> None:
    if n_samples is not None and (isinstance(n_samples, bool) or int(n_samples) != n_samples or n_samples < 1):
        raise ValueError(f"n_samples must be a positive integer or None (all training inputs), got {n_samples!r}.")
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")


def task_inputs(stream: Stream, t: int, n_samples: int | None = None, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Task ``t``'s training inputs and labels, or a seeded subsample of ``n_samples`` of them."""
    task = stream[t]
    x, y = task.x_train, task.y_train
    if n_samples is not None and n_samples < len(y):
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + 7_919 * t)
        idx = torch.randperm(len(y), generator=g)[:n_samples].to(y.device)
        x, y = x[idx], y[idx]
    return x, y


class EWC(Consolidation):
    r"""Elastic Weight Consolidation (Kirkpatrick et al., 2017): :math:`\Omega` = the Fisher diagonal.

    Penalty :math:`\frac\lambda2\sum_i F_i(\theta_i-\theta^*_i)^2` (the paper's convention).
    ``fisher`` is one of ``"true"``, ``"sampled"``, ``"empirical"``, ``"batched"``
    (see :func:`~clutils.importance.fisher_diagonal`); ``mode="online"`` with
    ``gamma`` is online EWC (Schwarz et al., 2018).  ``n_samples`` computes the
    Fisher on a seeded subsample of the task's training inputs.
    """

    def __init__(self, lam: float, *, fisher: str = "true", mode: str = "separate", gamma: float = 1.0,
                 n_samples: int | None = None, batch_size: int = 1024, seed: int = 0, name: str = "ewc"):
        if fisher not in FISHER_KINDS:
            raise ValueError(f"unknown Fisher estimator {fisher!r}; choose one of {', '.join(map(repr, FISHER_KINDS))}.")
        _check_sampling(n_samples, batch_size)
        self.fisher, self.n_samples, self.batch_size, self.seed = fisher, n_samples, int(batch_size), int(seed)
        super().__init__(lam, self._importance, mode=mode, gamma=gamma, name=name)

    def _importance(self, model: nn.Module, stream: Stream, t: int) -> dict[str, Tensor]:
        x, y = task_inputs(stream, t, self.n_samples, self.seed)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + 31 * t + 1)
        return fisher_diagonal(model, x, y, kind=self.fisher, head=stream.head_of(t),
                               n_active=stream.active_outputs(t), batch_size=self.batch_size, generator=gen)

    def config(self) -> dict:
        return {**super().config(), "importance": "fisher", "fisher": self.fisher, "n_samples": self.n_samples,
                "batch_size": self.batch_size, "seed": self.seed}


class MAS(Consolidation):
    r"""Memory Aware Synapses (Aljundi et al., ECCV 2018).

    :math:`\Omega` from :func:`~clutils.importance.mas_importance` (``kind="per_sample"``,
    the paper's definition, or ``"batch"``, the released code's) or
    :func:`~clutils.importance.hebbian_importance` (``kind="hebbian"``), accumulated
    over tasks :math:`\Omega\leftarrow\Omega+\Omega^{(t)}` with the anchor at the latest
    parameters (online mode with :math:`\gamma=1`).  The paper's penalty is
    :math:`\lambda\sum_i\Omega_i(\theta_i-\theta^*_i)^2` without the 1/2: ``MAS(lam)``
    passes :math:`2\lambda` to :func:`quadratic_penalty`, so ``lam`` is the paper's :math:`\lambda`.
    """

    KINDS = (*MAS_KINDS, "hebbian")

    def __init__(self, lam: float, *, kind: str = "per_sample", n_samples: int | None = None,
                 batch_size: int = 1024, seed: int = 0, name: str = "mas"):
        if kind not in self.KINDS:
            raise ValueError(f"unknown MAS importance kind {kind!r}; choose one of {', '.join(map(repr, self.KINDS))}.")
        _check_sampling(n_samples, batch_size)
        self.kind, self.n_samples, self.batch_size, self.seed = kind, n_samples, int(batch_size), int(seed)
        super().__init__(lam, self._importance, mode="online", gamma=1.0, name=name, lam_scale=2.0)

    def _importance(self, model: nn.Module, stream: Stream, t: int) -> dict[str, Tensor]:
        x, _ = task_inputs(stream, t, self.n_samples, self.seed)
        kw = dict(head=stream.head_of(t), n_active=stream.active_outputs(t), batch_size=self.batch_size)
        if self.kind == "hebbian":
            return hebbian_importance(model, x, **kw)
        return mas_importance(model, x, kind=self.kind, **kw)

    def config(self) -> dict:
        return {**super().config(), "importance": "mas", "kind": self.kind, "n_samples": self.n_samples,
                "batch_size": self.batch_size, "seed": self.seed}


def _ones(model: nn.Module, stream: Stream, t: int) -> dict[str, Tensor]:
    return {n: torch.ones_like(p) for n, p in model.named_parameters()}


class L2(Consolidation):
    r"""Plain L2 towards the parameters after the latest task: :math:`\Omega=1`, :math:`\frac\lambda2\lVert\theta-\theta^*\rVert^2`.

    Online mode with :math:`\gamma=0` by default (one anchor, uniform strength);
    ``mode="separate"`` anchors to every past task instead.
    """

    def __init__(self, lam: float, *, mode: str = "online", gamma: float = 0.0, name: str = "l2"):
        super().__init__(lam, _ones, mode=mode, gamma=gamma, name=name)

    def config(self) -> dict:
        return {**super().config(), "importance": "ones"}
