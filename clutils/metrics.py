r"""Continual-learning metrics from the accuracy matrix.

``R[i, j]`` is the accuracy on task ``j`` after training task ``i`` (T x T, i, j = 0..T-1).

* average accuracy  ``ACC = 1/T sum_j R[T-1, j]``;
* forgetting of task j (Chaudhry et al., 2018): ``f_j = max_{l < T-1} R[l, j] - R[T-1, j]``,
  averaged over ``j < T-1``;
* backward transfer (Lopez-Paz & Ranzato, 2017): ``BWT = 1/(T-1) sum_{j<T-1} (R[T-1, j] - R[j, j])``;
* forward transfer: ``FWT = 1/(T-1) sum_{j>0} (R[j-1, j] - b_j)`` with ``b_j`` the accuracy
  of the randomly initialised model on task ``j`` (the reference it needs);
* intransigence (Chaudhry et al., 2018): ``I_j = a*_j - R[j, j]`` with ``a*_j`` the accuracy
  of a reference model trained without the constraint of the past (for example jointly on
  tasks 0..j), averaged over tasks.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["average_accuracy", "forgetting", "backward_transfer", "forward_transfer",
           "intransigence", "learning_accuracy", "summary"]


def _square(R) -> np.ndarray:
    R = np.asarray(R, dtype=float)
    if R.ndim != 2 or R.shape[0] != R.shape[1] or R.shape[0] == 0:
        raise ValueError(f"the accuracy matrix must be square T x T with T >= 1, got shape {R.shape}.")
    return R


def average_accuracy(R) -> float:
    """Mean accuracy over all tasks after the last task."""
    R = _square(R)
    return float(R[-1].mean())


def learning_accuracy(R) -> float:
    """Mean accuracy on each task right after learning it (the diagonal)."""
    return float(np.diag(_square(R)).mean())


def forgetting(R, per_task: bool = False):
    """Average forgetting: best earlier accuracy minus final accuracy, over tasks 0..T-2."""
    R = _square(R)
    T = R.shape[0]
    if T < 2:
        return np.zeros(0) if per_task else 0.0
    f = np.array([R[: T - 1, j].max() - R[T - 1, j] for j in range(T - 1)])
    return f if per_task else float(f.mean())


def backward_transfer(R) -> float:
    """BWT: mean change of accuracy on old tasks between learning them and the end (< 0 = forgetting)."""
    R = _square(R)
    T = R.shape[0]
    if T < 2:
        return 0.0
    return float(np.mean([R[T - 1, j] - R[j, j] for j in range(T - 1)]))


def forward_transfer(R, random_init: Sequence[float]) -> float:
    """FWT: how much training on tasks < j helps task j before it is seen, vs. a random model."""
    R = _square(R)
    T = R.shape[0]
    b = np.asarray(random_init, dtype=float)
    if b.shape != (T,):
        raise ValueError(f"random_init needs one accuracy per task ({T}), got shape {b.shape}.")
    if T < 2:
        return 0.0
    return float(np.mean([R[j - 1, j] - b[j] for j in range(1, T)]))


def intransigence(R, reference: Sequence[float]) -> float:
    """Mean of ``reference[j] - R[j, j]``: how much the constraint of the past stops learning task j."""
    R = _square(R)
    ref = np.asarray(reference, dtype=float)
    if ref.shape != (R.shape[0],):
        raise ValueError(f"reference needs one accuracy per task ({R.shape[0]}), got shape {ref.shape}.")
    return float(np.mean(ref - np.diag(R)))


def summary(R) -> dict:
    """ACC, forgetting, BWT and learning accuracy of a run, as a dict."""
    return {"acc": average_accuracy(R), "forgetting": forgetting(R), "bwt": backward_transfer(R),
            "learning_acc": learning_accuracy(R)}
