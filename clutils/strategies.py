"""Strategies: what a continual learner does around plain training on each task.

A strategy is an ``nn.Module`` whose state (importances, anchors, neuron importances) lives
in registered buffers, so ``strategy.state_dict()`` is PyTorch's and ``strategy.to(device)``
moves it.  The trainer (:func:`clutils.training.train_step`, :func:`~clutils.training.train_stream`)
calls five hooks, in this order::

    x, y, heads = strategy.train_data(stream, t)      # what task t trains on
    strategy.before_task(model, stream, t)
    for every batch:                                   # train_step
        loss = CE + strategy.penalty(model, t, hidden)  # autograd penalties (on activations)
        loss.backward()
        strategy.grad_penalty(model, t)               # penalties added straight to .grad
        optimiser.step()
        strategy.after_step(model, t)
    strategy.after_task(model, stream, t)              # e.g. compute importance

``penalty`` returns a scalar the loss gets (``None``: nothing); ``grad_penalty`` adds the
gradient of a penalty whose gradient is known in closed form (the quadratic consolidation
penalty, :math:`\\lambda\\Omega\\odot(\\theta-\\theta^*)`) to the parameters' ``.grad`` with fused
kernels, and returns that penalty's value for the logged loss and the NaN guard.

``config()`` describes a strategy for run records and the result cache: by default its class
name and every argument its constructor was called with (defaults filled in), so a
subclass's settings are captured without writing ``config()``.  A subclass that defines
``__init__`` should call ``super().__init__()`` first, as every ``nn.Module`` does (one that
forgets is initialised as a module anyway).
"""
from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from torch import Tensor, nn

from .data import Stream

__all__ = ["Strategy", "Naive", "Joint", "FreezeFeatures", "Compose", "BufferDict"]


def _describe(value: Any) -> Any:
    """A JSON-friendly description of a constructor argument (for run records and fingerprints)."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _describe(v) for k, v in value.items()}
    if isinstance(value, Strategy):
        return value.config()
    if isinstance(value, Tensor):
        return {"tensor": list(value.shape), "sum": float(value.double().sum())}
    if callable(value):
        return {"callable": f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__name__)}"}
    return repr(value)


class Strategy(nn.Module):
    """Naive fine-tuning: train on each task in turn and nothing else (the base of every strategy)."""

    name = "naive"
    changes_data = False  # True for strategies that override train_data (at most one per Compose)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:  # record the outermost constructor call's arguments
            init = cls.__dict__["__init__"]
            sig = inspect.signature(init)

            @functools.wraps(init)
            def recorded(self, *args, **kw):
                if "_init_args" not in self.__dict__:  # the outermost constructor
                    bound = sig.bind(self, *args, **kw)
                    bound.apply_defaults()
                    object.__setattr__(self, "_init_args", dict(list(bound.arguments.items())[1:]))
                    if "_modules" not in self.__dict__:  # a subclass that forgets super().__init__() still works
                        nn.Module.__init__(self)
                init(self, *args, **kw)

            cls.__init__ = recorded

    def train_data(self, stream: Stream, t: int) -> tuple[Tensor, Tensor, int | Tensor]:
        task = stream[t]
        return task.x_train, task.y_train, stream.head_of(t)

    def before_task(self, model: nn.Module, stream: Stream, t: int) -> None:
        pass

    def penalty(self, model: nn.Module, t: int, hidden: list[Tensor]) -> Tensor | None:
        return None

    def grad_penalty(self, model: nn.Module, t: int) -> Tensor | None:
        return None

    def after_step(self, model: nn.Module, t: int) -> None:
        pass

    def after_task(self, model: nn.Module, stream: Stream, t: int) -> None:
        pass

    def config(self) -> dict:
        args = self.__dict__.get("_init_args", {})
        return {"name": self.name, "class": type(self).__qualname__,
                **{k: _describe(v) for k, v in args.items() if k not in ("name",)}}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k not in ("name", "class", "parts"))


class Naive(Strategy):
    """Fine-tune everything on each new task (the lower bound)."""


class Joint(Strategy):
    """Train on the union of all tasks seen so far (the upper bound; row t of R = joint on tasks 0..t)."""

    name = "joint"
    changes_data = True

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
    """Several strategies at once (an ``nn.ModuleList``); penalties add up.  At most one may change the data."""

    def __init__(self, *parts: Strategy):
        super().__init__()
        if not parts:
            raise ValueError("Compose needs at least one strategy.")
        bad = [p for p in parts if not isinstance(p, Strategy)]
        if bad:
            raise TypeError(f"Compose takes Strategy instances, got {bad!r}; e.g. Compose(MAS(0.1), SSL('slnid', 1e-3)).")
        data_changers = [p for p in parts if p.changes_data]
        if len(data_changers) > 1:
            raise ValueError(f"only one strategy may choose the training data, got {[p.name for p in data_changers]}.")
        self.parts = nn.ModuleList(parts)
        self.name = "+".join(p.name for p in parts)
        self.changes_data = bool(data_changers)
        self._data_part = next((i for i, p in enumerate(parts) if p.changes_data), 0)  # an index: no twin submodule

    def train_data(self, stream, t):
        return self.parts[self._data_part].train_data(stream, t)

    def before_task(self, model, stream, t):
        for p in self.parts:
            p.before_task(model, stream, t)

    @staticmethod
    def _sum(values):
        total = None
        for v in values:
            if v is not None:
                total = v if total is None else total + v
        return total

    def penalty(self, model, t, hidden):
        return self._sum(p.penalty(model, t, hidden) for p in self.parts)

    def grad_penalty(self, model, t):
        return self._sum([p.grad_penalty(model, t) for p in self.parts])

    def after_step(self, model, t):
        for p in self.parts:
            p.after_step(model, t)

    def after_task(self, model, stream, t):
        for p in self.parts:
            p.after_task(model, stream, t)

    def config(self):
        return {"name": self.name, "parts": [p.config() for p in self.parts]}


class BufferDict(nn.Module):
    """A dict of tensors kept as registered buffers, keyed by parameter names (``"layers.0.weight"``).

    Buffers appear as a strategy learns (after its first task); loading a ``state_dict`` into an
    empty ``BufferDict`` creates them, so a fresh strategy can resume from a checkpoint.
    """

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "-")

    def __setitem__(self, name: str, value: Tensor) -> None:
        key = self._key(name)
        if key in self._buffers:
            self._buffers[key] = value
        else:
            self.register_buffer(key, value)

    def __getitem__(self, name: str) -> Tensor:
        return self._buffers[self._key(name)]

    def __contains__(self, name: str) -> bool:
        return self._key(name) in self._buffers

    def __len__(self) -> int:
        return len(self._buffers)

    def __iter__(self):
        return iter(self.keys())

    def keys(self) -> list[str]:
        return [k.replace("-", ".") for k in self._buffers]

    def items(self) -> list[tuple[str, Tensor]]:
        return [(k.replace("-", "."), v) for k, v in self._buffers.items()]

    def values(self) -> list[Tensor]:
        return list(self._buffers.values())

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for key, value in state_dict.items():
            name = key[len(prefix):]
            if key.startswith(prefix) and "." not in name and name not in self._buffers:
                self.register_buffer(name, torch.empty_like(value))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
