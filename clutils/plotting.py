"""Plots of a run: the accuracy-matrix heatmap and per-task accuracy curves."""
from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["plot_accuracy_matrix", "plot_task_curves", "plot_training_curves", "plot_scenarios",
           "plot_slni_weights_beside_covariance"]


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


def plot_scenarios(streams, task: int, ax=None):
    """What the network is told at test time, read from real streams (``{name: Stream}``, split streams of
    one dataset in different scenarios): for one test image of ``task`` (0-based), every output unit of every
    head as a box, the units the prediction is taken among filled, the correct one outlined in black."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    streams = dict(streams)
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 0.9 + 1.1 * len(streams)))
    for row, (name, s) in enumerate(streams.items()):
        if not 0 <= task < len(s):
            raise ValueError(f"task {task} is not a task of stream {name!r} ({len(s)} tasks, numbered from 0).")
        label = int(s[task].y_test[0])
        head, n_in_play = s.head_of(task), s.active_outputs(len(s) - 1)
        y = -1.3 * row
        for h in range(s.n_heads):
            for k in range(s.n_outputs):
                x = h * (s.n_outputs + 0.6) + k
                in_play = h == head and k < n_in_play
                ax.add_patch(Rectangle((x, y), 0.85, 0.85, facecolor="tab:blue" if in_play else "0.92",
                                       edgecolor="black" if in_play and k == label else "0.6",
                                       lw=2.5 if in_play and k == label else 0.8))
            if s.n_heads > 1:
                ax.text(h * (s.n_outputs + 0.6) + s.n_outputs / 2 - 0.1, y - 0.3, f"head {h + 1}", ha="center",
                        va="center", fontsize=7, color="0.4")
        told = f"told: task {task + 1} (head {head + 1} of {s.n_heads})" if s.n_heads > 1 else "told: nothing"
        ax.text(-0.6, y + 0.42, f"{name}\n{told}", ha="right", va="center", fontsize=9)
        ax.text(s.n_heads * (s.n_outputs + 0.6), y + 0.42,
                f"chooses among {n_in_play} output{'s' if n_in_play > 1 else ''}; correct: output {label + 1}",
                ha="left", va="center", fontsize=9)
    ax.set_xlim(-0.2, max(s.n_heads * (s.n_outputs + 0.6) for s in streams.values()) + 9)
    ax.set_ylim(-1.3 * len(streams) + 0.8, 1.0)
    ax.set_aspect("equal")
    ax.axis("off")
    return ax


def plot_slni_weights_beside_covariance(h, sigma: float, axes=None, n_show: int | None = None):
    """SLNI's neighbourhood weights ``w_ij = exp(-(i-j)^2 / (2 sigma^2))`` (diagonal 0) beside the matrix they
    weigh, ``(1/M) H^T H`` of a batch of activations ``h`` (M inputs x N neurons), and their product, the
    penalised co-activation per pair.  ``n_show``: only the first neurons (default all)."""
    import matplotlib.pyplot as plt
    import torch

    h = torch.as_tensor(h, dtype=torch.float64)
    if h.ndim != 2:
        raise ValueError(f"h must be a batch of activations, inputs x neurons; got shape {tuple(h.shape)}.")
    n = h.shape[1] if n_show is None else min(int(n_show), h.shape[1])
    i = torch.arange(n, dtype=torch.float64)
    w = torch.exp(-(i[:, None] - i[None, :]) ** 2 / (2 * sigma ** 2)).fill_diagonal_(0.0)
    cov = (h[:, :n].T @ h[:, :n]) / h.shape[0]
    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(13, 4))
    panels = [(w, "weights $w_{ij}$", "Greys"), (cov, r"co-activation $\frac{1}{M}\sum_m h_i^m h_j^m$", "magma"),
              (w * cov, f"penalised: $w_{{ij}}$ × co-activation (sum {float((w * cov).sum()):.3g})", "magma")]
    for ax, (m, title, cmap) in zip(axes, panels):
        im = ax.imshow(m.numpy(), cmap=cmap, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("neuron j")
        ax.grid(False)
        plt.colorbar(im, ax=ax, fraction=0.046)
    axes[0].set_ylabel("neuron i")
    return axes
