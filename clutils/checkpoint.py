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
from pathlib import Path

import torch

__all__ = ["Checkpointer", "ConfigMismatchError", "fingerprint", "weights_digest"]


class ConfigMismatchError(RuntimeError):
    """A run folder holds a checkpoint from another configuration."""


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
        state = torch.load(self.path, map_location="cpu", weights_only=False)
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
