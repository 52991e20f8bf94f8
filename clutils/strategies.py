"""Strategies: what a continual learner does around plain training on each task.

A strategy is a small object with hooks the trainer calls:

* ``train_data(stream, t)``  -> ``(x, y, heads)`` the data used to train task ``t``;
* ``before_task(model, stream, t)`` and ``after_task(model, stream, t)``;
* ``penalty(model, t, hidden)`` -> a scalar added to the cross-entropy at every step
  (``hidden`` are the post-ReLU activations of the current batch);
* ``config()`` (what defines it, for run records) and ``state_dict()`` /
  ``load_state_dict()`` (what it has learned, for checkpoints).

Later chapters add consolidation penalties (EWC, MAS) and activation
regularisers (SNI ... SLNID) as strategies; several combine with :class:`Compose`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .data import Stream

__all__ = ["Strategy", "Naive", "Joint", "FreezeFeatures", "Compose"]


class Strategy:
    """Naive fine-tuning: train on each task in turn and nothing else."""

    name = "naive"

    def train_data(self, stream: Stream, t: int) -> tuple[Tensor, Tensor, int | Tensor]:
        task = stream[t]
        return task.x_train, task.y_train, stream.head_of(t)

    def before_task(self, model: nn.Module, stream: Stream, t: int) -> None:
        pass

    def penalty(self, model: nn.Module, t: int, hidden: list[Tensor]) -> Tensor | None:
        return None

    def after_task(self, model: nn.Module, stream: Stream, t: int) -> None:
        pass

    def config(self) -> dict:
        return {"name": self.name}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Naive(Strategy):
    """Fine-tune everything on each new task (the lower bound)."""


class Joint(Strategy):
    """Train on the union of all tasks seen so far (the upper bound; row t of R = joint on tasks 0..t)."""

    name = "joint"

    def train_data(self, stream: Stream, t: int):
        tasks = stream.tasks[: t + 1]
        x = torch.cat([k.x_train for k in tasks])
        y = torch.cat([k.y_train for k in tasks])
        heads = torch.cat([torch.full_like(k.y_train, stream.head_of(k.id)) for k in tasks])
        return x, y, heads if stream.n_heads > 1 else 0


class FreezeFeatures(Strategy):
    """Train everything on the first task, then freeze the hidden layers and train only the head(s)."""

    name = "freeze"

    def after_task(self, model: nn.Module, stream: Stream, t: int) -> None:
        if t == 0:
            for p in model.shared_parameters():
                p.requires_grad_(False)


class Compose(Strategy):
    """Several strategies at once; penalties add up.  At most one may change the training data."""

    def __init__(self, *parts: Strategy):
        if not parts:
            raise ValueError("Compose needs at least one strategy.")
        data_changers = [p for p in parts if type(p).train_data is not Strategy.train_data]
        if len(data_changers) > 1:
            raise ValueError(f"only one strategy may choose the training data, got {[p.name for p in data_changers]}.")
        self.parts: Sequence[Strategy] = parts
        self.name = "+".join(p.name for p in parts)
        self._data = data_changers[0] if data_changers else parts[0]

    def train_data(self, stream, t):
        return self._data.train_data(stream, t)

    def before_task(self, model, stream, t):
        for p in self.parts:
            p.before_task(model, stream, t)

    def penalty(self, model, t, hidden):
        total = None
        for p in self.parts:
            r = p.penalty(model, t, hidden)
            if r is not None:
                total = r if total is None else total + r
        return total

    def after_task(self, model, stream, t):
        for p in self.parts:
            p.after_task(model, stream, t)

    def config(self):
        return {"name": self.name, "parts": [p.config() for p in self.parts]}

    def state_dict(self):
        return {str(i): p.state_dict() for i, p in enumerate(self.parts)}

    def load_state_dict(self, state):
        for i, p in enumerate(self.parts):
            p.load_state_dict(state[str(i)])
