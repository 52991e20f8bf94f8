"""Checkpoints after every task, refused when written by a different configuration.

A checkpoint holds the model's and strategy's state (importances, anchors), which
parameters are trainable, the rows of the accuracy matrix so far, the curves and
timings, and PyTorch's global RNG state.  Batch order is drawn from generators
seeded by (seed, task, epoch), so a resumed run repeats the uninterrupted one exactly.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

__all__ = ["Checkpointer", "CheckpointError", "ConfigMismatchError", "check_writable_folder", "fingerprint",
           "weights_digest"]


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


def fingerprint(config: dict) -> str:
    """A short hash of a run's configuration (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_digest(model: torch.nn.Module) -> str:
    """A short hash of a model's parameters and buffers (its initial weights, for the fingerprint).

    Two runs with the same settings but differently initialised models (another seed)
    must not resume each other.
    """
    h = hashlib.sha256()
    for name, v in model.state_dict().items():
        h.update(name.encode())
        h.update(v.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class Checkpointer:
    """Saves ``checkpoint.pt`` in ``folder`` after each task; loads it only for the same configuration."""

    def __init__(self, folder: str | os.PathLike, config: dict):
        self.folder = Path(folder)
        self.path = self.folder / "checkpoint.pt"
        self.config = config
        self.key = fingerprint(config)

    def load(self) -> dict | None:
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
        if not isinstance(state, dict) or "fingerprint" not in state or "task" not in state:
            raise CheckpointError(f"{self.path} is not a clutils checkpoint (it holds a {type(state).__name__}"
                                  f"{' without a fingerprint' if isinstance(state, dict) else ''}). {advice}")
        if state.get("fingerprint") != self.key:
            raise ConfigMismatchError(
                f"{self.path} was written by a different configuration (fingerprint {state.get('fingerprint')} "
                f"!= {self.key}); it is not resumed, to avoid mixing two runs. Use a new checkpoint folder "
                f"or delete this one.")
        torch.set_rng_state(state["torch_rng"])
        if torch.cuda.is_available() and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        return state

    def save(self, state: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        state = dict(state, fingerprint=self.key, config=self.config, torch_rng=torch.get_rng_state(),
                     cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)  # atomic: a kill never leaves half a checkpoint
