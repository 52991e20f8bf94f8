r"""Sweeping a regularisation strength: the same stream, model and seed, one run per value.

A consolidation penalty :math:`\lambda \sum_i \Omega_i (\theta_i - \theta^*_i)^2` trades
stability (large :math:`\lambda`) against plasticity (small :math:`\lambda`).  To compare
methods fairly, each gets the same handful of log-spaced values, every run starting from the
same initial weights (``seed_everything(seed)`` right before ``make_model()``).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

from torch import nn

from .data import Stream
from .results import RunResult
from .strategies import Strategy
from .training import TrainConfig, seed_everything, train_stream

__all__ = ["sweep", "sweep_table", "best_value", "METRICS"]

# summary metrics for which higher is better (forgetting is not: it is its own column)
METRICS = ("acc", "bwt", "learning_acc")


def _check_values(values: Sequence[float]) -> list[float]:
    try:
        vals = [float(v) for v in values]
    except TypeError:
        raise TypeError(f"values must be a sequence of numbers, e.g. [0.1, 1, 10]; got {values!r}.") from None
    if not vals:
        raise ValueError("sweep needs at least one value, e.g. [0.1, 1, 10].")
    bad = [v for v in vals if not math.isfinite(v)]
    if bad:
        raise ValueError(f"every swept value must be finite; got {bad}.")
    return vals


def sweep(values: Sequence[float], make_strategy: Callable[[float], Strategy], make_model: Callable[[], nn.Module],
          stream: Stream, cfg: TrainConfig, *, seed: int | None = None, device: str = "auto",
          progress: bool = False) -> list[RunResult]:
    r"""One run per value ``v``: ``seed_everything(seed); train_stream(make_model(), stream, make_strategy(v), cfg)``.

    ``seed`` defaults to ``cfg.seed``, so every run starts from the same weights and sees the
    same batches; only ``v`` differs.  All strategies are built (and so their arguments checked)
    before the first run trains.  Returns the runs in the order of ``values``, each with
    ``extras["value"] = v``.
    """
    vals = _check_values(values)
    if not callable(make_strategy) or not callable(make_model):
        raise TypeError("make_strategy must be a function value -> Strategy and make_model a function () -> nn.Module.")
    cfg.validate(len(stream))
    strategies = [make_strategy(v) for v in vals]  # bad values (e.g. lam < 0) fail here, before any training
    seed = cfg.seed if seed is None else seed
    out: list[RunResult] = []
    for v, strategy in zip(vals, strategies):
        seed_everything(seed)
        res = train_stream(make_model(), stream, strategy, cfg, device=device, progress=progress)
        res.extras["value"] = v
        out.append(res)
    return out


def sweep_table(results: Sequence[RunResult], method: str | None = None):
    r"""One row per run: ``value``, ``acc``, ``forgetting``, ``bwt``, ``learning_acc`` (fractions), ``train_s``.

    ``acc`` is the mean final accuracy :math:`\frac1T\sum_j R_{T-1,j}`; ``forgetting`` the mean over old
    tasks of :math:`\max_{l<T-1} R_{l,j} - R_{T-1,j}` (see :mod:`clutils.metrics`).
    """
    import pandas as pd

    rows = []
    for res in results:
        row = {"value": res.extras.get("value"), **res.summary(),
               "train_s": float(sum(res.timings.get("train_s", [])))}
        rows.append({"method": method, **row} if method is not None else row)
    return pd.DataFrame(rows)


def best_value(results: Sequence[RunResult], metric: str = "acc") -> float:
    """The swept value whose run has the highest ``metric`` (one of :data:`METRICS`); ties go to the first."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)} (higher is better).")
    if not results:
        raise ValueError("best_value needs at least one run.")
    scores = [res.summary()[metric] for res in results]
    return float(results[max(range(len(scores)), key=scores.__getitem__)].extras["value"])
