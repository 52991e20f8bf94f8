"""Checkpoints after every task, refused when written by a different configuration.

A checkpoint holds the run's configuration, the model's and strategy's state (importances,
anchors), which parameters are trainable, the rows of the accuracy matrix so far, the curves and
timings, and PyTorch's RNG state inside the run.  Batch order is drawn from generators seeded by
(seed, task, epoch), so a resumed run repeats the uninterrupted one exactly.  A checkpoint is
resumed only when the configuration stored *inside* it equals the run's (the folder's name or a
stored key is an index, never a proof), and only when its contents fit the run.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from ._files import atomic_write

__all__ = ["Checkpointer", "CheckpointError", "ConfigMismatchError", "check_writable_folder", "first_difference",
           "normalised"]


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be used: damaged, empty, or not written by clutils."""


class ConfigMismatchError(CheckpointError):
    """A run folder holds a checkpoint from another configuration."""


def check_writable_folder(folder: str | os.PathLike, what: str = "checkpoint_dir") -> Path:
    """Create ``folder`` if needed and prove it writable (write and remove a probe file), or raise.

    ``NotADirectoryError`` if it (or a parent) is a file, ``PermissionError`` if it cannot be
    written; both name the folder.  Called before training, so a bad folder never costs a task.
    """
    folder = Path(folder)
    for part in (folder, *folder.parents):
        if part.exists() and not part.is_dir():
            raise NotADirectoryError(f"{what} {folder} cannot be used: {part} is a file, not a folder. "
                                     f"Choose another folder (or move the file away).")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise PermissionError(f"{what}: cannot write to {folder} ({type(err).__name__}: {err.strerror or err}). "
                              f"Choose a folder you can write to, or fix its permissions.") from None
    return folder


def normalised(config: dict) -> dict:
    """``config`` as it reads back from JSON (tuples as lists, keys as strings): what stored copies are compared with."""
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def first_difference(a, b, where: str = "config") -> str | None:
    """Where two JSON-like values first differ (``"config.strategy.lam: 1.0 != 2.0"``), ``None`` if equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{where}.{k}: {'absent' if k not in a else 'present'} in the file, " \
                       f"{'absent' if k not in b else 'present'} in this run"
            d = first_difference(a[k], b[k], f"{where}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{where}[{i}]")
            if d:
                return d
        return None
    return None if a == b else f"{where}: {str(a)[:60]} in the file, {str(b)[:60]} in this run"


class Checkpointer:
    """Saves ``checkpoint.pt`` in ``folder`` after each task; loads it only for the same configuration."""

    REQUIRED = ("config", "task", "model", "strategy", "requires_grad", "acc", "val_acc", "curves", "timings",
                "torch_rng")

    def __init__(self, folder: str | os.PathLike, config: dict):
        self.folder = Path(folder)
        self.path = self.folder / "checkpoint.pt"
        self.config = normalised(config)

    def load(self) -> dict | None:
        """The checkpoint's state (``None`` if there is none); a clear error if it is damaged or another run's."""
        if not self.path.exists():
            return None
        advice = "Delete it to start this run afresh (or point checkpoint_dir at another folder)."
        if self.path.stat().st_size == 0:
            raise CheckpointError(f"{self.path} is empty (a copy or a disk that failed?). {advice}")
        try:  # weights_only: tensors and plain Python values only, so a foreign file cannot run code
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as err:  # EOFError, UnpicklingError, RuntimeError (zip) ... : all mean "unreadable"
            if "weights only load failed" in str(err).lower() and "unsupported global" in str(err).lower():
                raise CheckpointError(
                    f"{self.path} holds Python objects other than tensors and plain values, which clutils does "
                    f"not unpickle (a foreign file, or a strategy whose state_dict holds objects: keep its state "
                    f"in tensors). {advice}") from None
            raise CheckpointError(f"{self.path} is damaged and cannot be read ({type(err).__name__}: {err}); "
                                  f"it may be truncated. {advice}") from None
        if not isinstance(state, dict) or "config" not in state or "task" not in state:
            raise CheckpointError(f"{self.path} is not a clutils checkpoint of this version (it holds a "
                                  f"{type(state).__name__}{' without a stored configuration' if isinstance(state, dict) else ''}"
                                  f"). {advice}")
        diff = first_difference(state["config"], self.config)
        if diff:
            raise ConfigMismatchError(
                f"{self.path} was written by a different configuration ({diff}); it is not resumed, to avoid "
                f"mixing two runs. Use a new checkpoint folder or delete this one.")
        missing = [k for k in self.REQUIRED if k not in state]
        if missing:
            raise CheckpointError(f"{self.path} lacks {missing}: it is incomplete or edited. {advice}")
        return state

    def save(self, state: dict) -> None:
        state = dict(state, config=self.config)
        atomic_write(self.path, lambda tmp: torch.save(state, tmp))  # a kill never leaves half a checkpoint
