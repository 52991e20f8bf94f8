"""Plots of a run: the accuracy-matrix heatmap and per-task accuracy curves."""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["plot_accuracy_matrix", "plot_task_curves", "plot_training_curves"]


def plot_accuracy_matrix(R, ax=None, title: str | None = None, task_names: Sequence[str] | None = None,
                         cbar: bool = True):
    """Heatmap of ``R[i, j]`` (rows: after training task i; columns: tested on task j), in percent."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    R = 100 * np.asarray(R, dtype=float)
    if ax is None:
        _, ax = plt.subplots(figsize=(0.45 * R.shape[1] + 2.2, 0.4 * R.shape[0] + 1.6))
    names = list(task_names) if task_names is not None else [str(j + 1) for j in range(R.shape[1])]
    sns.heatmap(R, ax=ax, vmin=0, vmax=100, cmap="viridis", annot=R.shape[0] <= 10, fmt=".0f",
                annot_kws={"size": 7}, cbar=cbar, xticklabels=names, yticklabels=names[: R.shape[0]],
                square=True, cbar_kws={"label": "accuracy (%)"} if cbar else None)
    ax.set_xlabel("tested on task")
    ax.set_ylabel("after training task")
    if title:
        ax.set_title(title)
    return ax


def plot_task_curves(R, ax=None, title: str | None = None, task_names: Sequence[str] | None = None):
    """Accuracy on each task (one line per task) as the sequence goes on, from the moment it is learned."""
    import matplotlib.pyplot as plt

    R = 100 * np.asarray(R, dtype=float)
    T = R.shape[0]
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.2))
    names = list(task_names) if task_names is not None else [f"task {j + 1}" for j in range(R.shape[1])]
    for j in range(R.shape[1]):
        xs = np.arange(j, T) + 1
        ax.plot(xs, R[j:, j], marker="o", ms=3, label=names[j])
    ax.plot(np.arange(1, T + 1), R.mean(axis=1, where=np.tri(T, R.shape[1], dtype=bool)), "k--", lw=2,
            label="mean over seen tasks")
    ax.set_xlabel("after training task")
    ax.set_ylabel("accuracy (%)")
    ax.set_xticks(np.arange(1, T + 1))
    ax.set_ylim(0, 101)
    ax.legend(fontsize=7, ncol=2 if R.shape[1] > 5 else 1)
    if title:
        ax.set_title(title)
    return ax


def plot_training_curves(curves: list[dict], ax=None, title: str | None = None, tasks: Sequence[int] | None = None):
    """Accuracy of each task across every training epoch (``RunResult.curves``): the classic EWC figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.2))
    A = 100 * np.array([c["acc"] for c in curves])
    task_of = np.array([c["task"] for c in curves])
    x = np.arange(1, len(curves) + 1)
    for j in tasks if tasks is not None else range(A.shape[1]):
        seen = task_of >= j
        ax.plot(x[seen], A[seen, j], label=f"task {j + 1}")
    for b in np.flatnonzero(np.diff(task_of)) + 1.5:
        ax.axvline(b, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 101)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    return ax
