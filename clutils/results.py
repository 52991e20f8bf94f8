"""A run's record -- configuration, accuracy matrix, timings -- as plain JSON."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import metrics

__all__ = ["RunResult"]


@dataclass
class RunResult:
    """What a run produced.

    ``acc[i][j]`` is the accuracy (in [0, 1]) on task ``j``'s test set after
    training task ``i``.  ``curves`` (optional) holds one row per evaluation
    during training: ``{"task": i, "epoch": e, "acc": [acc on each task]}``.
    """

    config: dict
    acc: list[list[float]]
    timings: dict = field(default_factory=dict)
    curves: list[dict] = field(default_factory=list)
    extras: dict = field(default_factory=dict)

    @property
    def R(self) -> np.ndarray:
        return np.asarray(self.acc, dtype=float)

    def summary(self) -> dict:
        """Average accuracy, forgetting and backward transfer of the final model."""
        return metrics.summary(self.R)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RunResult":
        d = json.loads(Path(path).read_text())
        return cls(**d)
