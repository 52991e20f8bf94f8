"""A run's record -- configuration, accuracy matrix, timings -- as plain JSON, and the result cache's reader."""
from __future__ import annotations

import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from . import metrics
from ._files import atomic_write_text
from ._version import __version__
from .checkpoint import first_difference, normalised

__all__ = ["RunResult", "CacheError", "load_cached"]


class CacheError(RuntimeError):
    """A result-cache file cannot be read."""


FORMAT = 1  # version of the JSON layout written by RunResult.save; files without one are format 1


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
    val_acc: list[list[float]] = field(default_factory=list)  # the same matrix on the validation splits, if any
    from_cache: bool = field(default=False, compare=False)  # loaded from the result cache, not trained
    model_restored: bool = field(default=False, compare=False)  # a cache hit that gave the trained weights back

    @property
    def R(self) -> np.ndarray:
        return np.asarray(self.acc, dtype=float)

    @property
    def R_val(self) -> np.ndarray:
        """The accuracy matrix on the validation splits (``make_stream(..., val_fraction=...)``)."""
        if not self.val_acc:
            raise ValueError("this run has no validation matrix: its stream held no validation split "
                             "(make_stream(..., val_fraction=0.1)).")
        return np.asarray(self.val_acc, dtype=float)

    def summary(self, split: str = "test") -> dict:
        """Average accuracy, forgetting and backward transfer of the final model, on ``"test"`` or ``"val"``."""
        if split not in ("test", "val"):
            raise ValueError(f"split must be 'test' or 'val', got {split!r}.")
        return metrics.summary(self.R if split == "test" else self.R_val)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the record as JSON (atomically: a crash leaves the old file or the new one)."""
        record = asdict(self)
        del record["from_cache"], record["model_restored"]
        return atomic_write_text(path, json.dumps({"format": FORMAT, "clutils_version": __version__, **record},
                                                  indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RunResult":
        """Read a record written by :meth:`save`.

        Raises ``ValueError`` naming the file when it is not valid JSON, lacks a field, has fields
        this version does not know (a file from another clutils version), or holds a ragged or
        non-numeric accuracy matrix; ``FileNotFoundError`` when there is no file.
        """
        path = Path(path)
        text = path.read_text()
        try:
            d = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}): the "
                             f"file is damaged (an interrupted copy?) or not a run record. Delete it and run "
                             f"again, or restore it from a copy.") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path} holds a JSON {type(d).__name__}, not a run record (an object with "
                             f"'config' and 'acc'). Is it the right file?")
        fmt, version = d.pop("format", 1), d.pop("clutils_version", "an older version")
        if fmt != FORMAT:
            raise ValueError(f"{path} was written by clutils {version} in record format {fmt!r}; this clutils "
                             f"reads format {FORMAT}. Load it with that version, or run again to rewrite it.")
        known = {f.name for f in fields(cls)} - {"from_cache", "model_restored"}  # set when loaded, never stored
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        missing, unknown = sorted(required - set(d)), sorted(set(d) - known)
        if missing or unknown:
            what = "; ".join(x for x in (f"missing field(s) {missing}" if missing else "",
                                         f"unknown field(s) {unknown}" if unknown else "") if x)
            raise ValueError(f"{path} is not a run record of this clutils version ({what}); it was written by "
                             f"clutils {version} or is another kind of JSON. Run again to rewrite it.")
        for name, kind in (("config", dict), ("acc", list), ("timings", dict), ("curves", list), ("extras", dict)):
            if name in d and not isinstance(d[name], kind):
                raise ValueError(f"{path}: field {name!r} must be a JSON {'object' if kind is dict else 'array'}, "
                                 f"got {type(d[name]).__name__}. The file is damaged; run again to rewrite it.")
        _check_acc(d["acc"], path)
        return cls(**d)


def _check_acc(acc: list, path: Path) -> None:
    """``acc`` must be a rectangular matrix of numbers in [0, 1] with one row per finished task."""
    for i, row in enumerate(acc):
        if not isinstance(row, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row):
            raise ValueError(f"{path}: acc row {i} is not a list of numbers ({row!r}); the file is damaged. "
                             f"Run again to rewrite it.")
        if len(row) != len(acc[0]):
            raise ValueError(f"{path}: the accuracy matrix is ragged (row 0 has {len(acc[0])} entries, row {i} "
                             f"{len(row)}); every row holds one accuracy per task. The file is damaged or edited "
                             f"by hand; run again to rewrite it.")
        bad = [v for v in row if not 0.0 <= v <= 1.0]
        if bad:
            raise ValueError(f"{path}: acc row {i} holds {bad}, outside [0, 1]; accuracies are fractions. "
                             f"Run again to rewrite the file.")
    if acc and len(acc) > len(acc[0]):
        raise ValueError(f"{path}: the accuracy matrix has {len(acc)} rows (tasks trained) but only "
                         f"{len(acc[0])} columns (tasks); the file is damaged. Run again to rewrite it.")


def load_cached(path: str | os.PathLike, config: dict | None = None) -> RunResult | None:
    """The cached run at ``path`` (``from_cache=True``), ``None`` if there is none; a clear error if it is
    unreadable, or if the configuration stored inside it is not ``config`` (the file name is an index,
    not a proof: a file copied or edited under another run's name is refused)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        res = RunResult.load(path)  # checks the fields and the matrix (ragged, non-numeric, out of range)
    except Exception as err:
        raise CacheError(f"the result-cache file {path} is unreadable ({type(err).__name__}: {err}); it may be "
                         f"truncated or corrupt. Delete it and run again (the run will be retrained).") from None
    if config is not None:
        diff = first_difference(res.config, normalised(config))
        if diff:
            raise CacheError(f"the result-cache file {path} holds another run's result ({diff}): it was copied or "
                             f"edited under this run's name. Delete it and run again.")
    res.from_cache = True
    return res
