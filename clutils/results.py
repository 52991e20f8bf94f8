"""A run's record -- configuration, accuracy matrix, timings -- as plain JSON, and the result cache's reader."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import metrics

__all__ = ["RunResult", "CacheError", "load_cached"]


class CacheError(RuntimeError):
    """A result-cache file cannot be read."""


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
    from_cache: bool = field(default=False, compare=False)  # loaded from the result cache, not trained

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
        record = asdict(self)
        del record["from_cache"]
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RunResult":
        d = json.loads(Path(path).read_text())
        return cls(**d)


def load_cached(path: str | os.PathLike) -> RunResult | None:
    """The cached run at ``path`` (``from_cache=True``), ``None`` if there is none; a clear error if it is unreadable."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        res = RunResult.load(path)
        np.asarray(res.acc, dtype=float)  # ragged or non-numeric rows fail here, not later
    except Exception as err:
        raise CacheError(f"the result-cache file {path} is unreadable ({type(err).__name__}: {err}); it may be "
                         f"truncated or corrupt. Delete it and run again (the run will be retrained).") from None
    res.from_cache = True
    return res
