r"""The exact toy of chapter 1: tasks that are least-squares regressions on a few fixed inputs.

A task is ``y = X w*`` on fixed inputs ``X`` (n x d).  Its loss is the mean squared error

.. math::  L(w) = \frac{1}{2n}\lVert Xw - y\rVert^2 = \tfrac12 (w - w^*)^\top H (w - w^*),
           \qquad H = X^\top X / n,

a quadratic bowl with known Hessian ``H`` centred on ``w*``.  With unit-variance Gaussian
noise on ``y`` the Fisher information of the task equals ``H`` as well, which the EWC
chapter uses.  Everything here is exact and runs in milliseconds on a CPU.

* :func:`two_weight_tasks` -- tasks A and B with optima (2, 2) and (8, 10) on the same inputs;
  their joint optimum is exactly (5, 6).
* :func:`four_weight_tasks` -- the same two tasks seen by a model with two pathways of two
  weights each: a weight vector solving both exactly exists, yet sequential training
  overwrites A.
* :func:`gradient_descent` -- full-batch descent on a sum of task losses, plus an optional
  extra gradient (a penalty such as EWC's), returning the whole trajectory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "Task", "make_task", "loss", "gradient", "hessian", "fisher", "joint_optimum", "min_norm_solution",
    "gradient_descent", "sequential", "gd_limit", "gd_closed_form", "quadratic_penalty_grad", "loss_grid",
    "two_weight_tasks", "four_weight_tasks", "TWO_WEIGHT_INPUTS",
]

DTYPE = torch.float64

#: The fixed inputs both two-weight tasks are measured on (one row per example).
TWO_WEIGHT_INPUTS = ((2.0, 0.0), (1.0, 1.0), (0.0, 1.0))


@dataclass(frozen=True)
class Task:
    """A least-squares task: inputs ``x`` (n, d) and targets ``y`` (n,)."""

    name: str
    x: Tensor
    y: Tensor

    @property
    def dim(self) -> int:
        return self.x.shape[1]


def _as_tensor(v, what: str) -> Tensor:
    t = torch.as_tensor(v, dtype=DTYPE)
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} must be finite, got {t.tolist()}.")
    return t


def make_task(optimum: Sequence[float] | Tensor, inputs: Sequence[Sequence[float]] | Tensor | None = None,
              name: str = "") -> Task:
    r"""The task ``y = X w*``: targets generated from ``optimum`` on ``inputs`` (default :data:`TWO_WEIGHT_INPUTS`).

    With full-column-rank ``X`` the task's unique minimiser is ``optimum``; otherwise every
    ``w`` with ``X w = X w*`` fits it exactly.
    """
    w = _as_tensor(optimum, "optimum")
    x = _as_tensor(TWO_WEIGHT_INPUTS if inputs is None else inputs, "inputs")
    if w.ndim != 1:
        raise ValueError(f"optimum must be a vector of weights, got shape {tuple(w.shape)}.")
    if x.ndim != 2 or x.shape[1] != w.shape[0]:
        raise ValueError(f"inputs must be a matrix (n, {w.shape[0]}) to match the {w.shape[0]} weights of "
                         f"optimum, got shape {tuple(x.shape)}.")
    return Task(name, x, x @ w)


def _check_w(w: Tensor, task: Task) -> Tensor:
    w = torch.as_tensor(w, dtype=DTYPE)
    if w.shape[-1:] != (task.dim,):
        raise ValueError(f"weights must end in dimension {task.dim} (task {task.name!r}), got shape {tuple(w.shape)}.")
    return w


def loss(w: Tensor, task: Task) -> Tensor:
    r"""``L(w) = 1/(2n) ||X w - y||^2``, for ``w`` of shape (..., d) (a grid of weights at once)."""
    w = _check_w(w, task)
    r = w @ task.x.T - task.y
    return 0.5 * (r ** 2).mean(-1)


def gradient(w: Tensor, task: Task) -> Tensor:
    r"""``grad L(w) = X^T (X w - y) / n``, for ``w`` of shape (..., d)."""
    w = _check_w(w, task)
    r = w @ task.x.T - task.y
    return r @ task.x / task.x.shape[0]


def hessian(task: Task) -> Tensor:
    r"""``H = X^T X / n`` (the same at every ``w``: the loss is quadratic)."""
    return task.x.T @ task.x / task.x.shape[0]


def fisher(task: Task, noise_var: float = 1.0) -> Tensor:
    r"""Fisher information of ``y ~ N(w^T x, sigma^2)`` on the task's inputs: ``F = X^T X / (n sigma^2) = H / sigma^2``."""
    if not noise_var > 0:
        raise ValueError(f"noise_var must be > 0, got {noise_var}.")
    return hessian(task) / noise_var


def min_norm_solution(task: Task) -> Tensor:
    r"""The smallest-norm exact fit ``w = X^+ y`` (where gradient descent from zero converges)."""
    return torch.linalg.pinv(task.x) @ task.y


def joint_optimum(tasks: Sequence[Task]) -> Tensor:
    r"""Minimiser of ``sum_k L_k``: ``(sum_k H_k)^+ sum_k H_k w*_k`` (the minimum-norm one if not unique).

    Here ``H_k w*_k = X_k^T y_k / n_k``, so no optimum needs to be known.
    """
    if not tasks:
        raise ValueError("joint_optimum needs at least one task.")
    H = sum(hessian(t) for t in tasks)
    b = sum(t.x.T @ t.y / t.x.shape[0] for t in tasks)
    return torch.linalg.pinv(H) @ b


def quadratic_penalty_grad(w: Tensor, anchor: Tensor, precision: Tensor, lam: float) -> Tensor:
    r"""Gradient of ``lam/2 (w - a)^T P (w - a)``: ``lam P (w - a)``; a vector ``P`` means ``diag(P)`` (EWC's diagonal Fisher)."""
    if lam < 0:
        raise ValueError(f"lambda must be non-negative, got {lam}.")
    w = torch.as_tensor(w, dtype=DTYPE)
    d = w - torch.as_tensor(anchor, dtype=DTYPE)
    P = torch.as_tensor(precision, dtype=DTYPE)
    if P.ndim == 1:
        return lam * P * d
    if P.ndim == 2 and P.shape == (d.shape[-1], d.shape[-1]):
        return lam * d @ P.T
    raise ValueError(f"precision must be a vector ({d.shape[-1]},) or a matrix {(d.shape[-1],) * 2}, "
                     f"got shape {tuple(P.shape)}.")


def gradient_descent(w0: Sequence[float] | Tensor, tasks: Task | Sequence[Task], lr: float, steps: int,
                     extra_grad: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    r"""Full-batch gradient descent on ``sum_k L_k(w)`` (+ a penalty whose gradient is ``extra_grad``).

    ``w_{s+1} = w_s - lr * (sum_k grad L_k(w_s) + extra_grad(w_s))``.  Returns the trajectory,
    a tensor of shape (steps + 1, d) whose first row is ``w0``.  Joint training on A and B is
    ``tasks=[A, B]``; for tasks with the same number of examples this has the same minimiser
    as the mean loss over their union.
    """
    tasks = [tasks] if isinstance(tasks, Task) else list(tasks)
    if not tasks:
        raise ValueError("gradient_descent needs at least one task.")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}.")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}.")
    w = _check_w(w0, tasks[0]).clone()
    if w.ndim != 1:
        raise ValueError(f"w0 must be one weight vector, got shape {tuple(w.shape)}.")
    for t in tasks[1:]:
        _check_w(w, t)
    traj = torch.empty(steps + 1, w.shape[0], dtype=DTYPE)
    traj[0] = w
    for s in range(steps):
        g = sum(gradient(w, t) for t in tasks)
        if extra_grad is not None:
            g = g + extra_grad(w)
        w = w - lr * g
        traj[s + 1] = w
    return traj


def sequential(w0: Sequence[float] | Tensor, tasks: Sequence[Task], lr: float, steps: int,
               extra_grad: Callable[[int, Tensor], Tensor] | None = None) -> list[Tensor]:
    r"""Train on each task in turn, each from where the previous one ended; one trajectory per task.

    ``extra_grad(k, w)`` (optional) is added while training task ``k`` (for example an EWC
    penalty anchored at the end of task ``k - 1``).
    """
    trajs, w = [], torch.as_tensor(w0, dtype=DTYPE)
    for k, t in enumerate(tasks):
        eg = None if extra_grad is None else (lambda w_, k=k: extra_grad(k, w_))
        trajs.append(gradient_descent(w, t, lr, steps, eg))
        w = trajs[-1][-1]
    return trajs


def gd_closed_form(w0: Sequence[float] | Tensor, task: Task, lr: float, steps: int) -> Tensor:
    r"""Where gradient descent on one task is after ``s`` steps, exactly: ``w_s = w0 - X^+(X w0 - y) + (I - lr H)^s X^+(X w0 - y)``.

    (The error ``w_s - w_inf`` shrinks by ``(I - lr H)`` per step; ``w_inf`` is :func:`gd_limit`.)
    """
    w0 = _check_w(w0, task)
    w_inf = gd_limit(w0, task)
    M = torch.eye(task.dim, dtype=DTYPE) - lr * hessian(task)
    return w_inf + torch.linalg.matrix_power(M, steps) @ (w0 - w_inf)


def gd_limit(w0: Sequence[float] | Tensor, task: Task) -> Tensor:
    r"""Where gradient descent (small enough ``lr``) from ``w0`` converges: ``w0 - X^+ (X w0 - y)``.

    Descent only moves ``w`` inside the row space of ``X`` (every gradient is ``X^T r``), so it
    changes just what the task's inputs can see and leaves the rest of ``w0`` alone.
    """
    w0 = _check_w(w0, task)
    return w0 - torch.linalg.pinv(task.x) @ (task.x @ w0 - task.y)


def loss_grid(task: Task, w1: Tensor, w2: Tensor) -> Tensor:
    r"""``L`` on the grid ``w1 x w2`` of a two-weight task, shape (len(w2), len(w1)) (rows: ``w2``), for contour plots."""
    if task.dim != 2:
        raise ValueError(f"loss_grid draws two-weight tasks; task {task.name!r} has {task.dim} weights.")
    W1, W2 = torch.meshgrid(torch.as_tensor(w1, dtype=DTYPE), torch.as_tensor(w2, dtype=DTYPE), indexing="xy")
    return loss(torch.stack([W1, W2], -1), task)


def two_weight_tasks() -> tuple[Task, Task]:
    """Tasks A and B with optima (2, 2) and (8, 10) on the same three inputs :data:`TWO_WEIGHT_INPUTS`.

    Both have Hessian ``H = [[5, 1], [1, 2]] / 3``, so their joint optimum is exactly the average (5, 6).
    """
    return make_task((2.0, 2.0), name="A"), make_task((8.0, 10.0), name="B")


def four_weight_tasks() -> tuple[Task, Task]:
    r"""Tasks A and B seen by a four-weight model with two pathways, ``(w1, w2)`` and ``(w3, w4)``.

    Each example has two features ``(x1, x2)``; pathway 1 reads them through ``(w1, w2)`` and
    pathway 2 through ``(w3, w4)``.  Task A's inputs reach pathway 1 only,
    ``x~ = (x1, x2, 0, 0)``, and A wants ``(w1, w2) = (2, 2)``.  Task B's inputs reach both,
    ``x~ = (x1, x2, x1, x2)``, and B wants ``(w1 + w3, w2 + w4) = (8, 10)``.  The weights
    ``(2, 2, 6, 8)`` fit both exactly; the features are :data:`TWO_WEIGHT_INPUTS`.
    """
    x = torch.tensor(TWO_WEIGHT_INPUTS, dtype=DTYPE)
    xa = torch.cat([x, torch.zeros_like(x)], 1)
    xb = torch.cat([x, x], 1)
    return make_task((2.0, 2.0, 0.0, 0.0), xa, name="A"), make_task((8.0, 10.0, 0.0, 0.0), xb, name="B")
