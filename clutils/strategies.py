"""Strategies: what a continual learner does around plain training on each task.

A strategy is an ``nn.Module`` whose state (importances, anchors, neuron importances) lives
in registered buffers, so ``strategy.state_dict()`` is PyTorch's and ``strategy.to(device)``
moves it.  The trainer (:func:`clutils.training.train_step`, :func:`clutils.training.train_tasks`)
calls its hooks, each named for when it runs::

    x, y, heads = strategy.train_data(stream, t)       # what task t trains on
    strategy.before_task(model, stream, t)
    for every batch:
        x, y, head = strategy.mix_batch(x, y, head, t)  # e.g. replay adds stored examples
        # train_step:
        task_loss = CE(model(x), y)
        penalty = strategy.penalty(model, t, hidden)    # autograd penalties (on activations)
        (task_loss + penalty).backward()
        strategy.after_backward(model, t)               # .grad holds the loss's gradient, nothing else yet
        strategy.grad_penalty(model, t)                 # penalties added straight to .grad
        optimiser.step()
        strategy.after_step(model, t)
    strategy.after_task(model, stream, t)               # e.g. compute importance

``mix_batch`` may add examples to a batch (replay); the optimiser of task ``t`` then also trains the
heads that ``extra_heads()`` names (a stored example of an earlier task answers with its own head).
``penalty`` returns a scalar the loss gets (``None``: nothing).  A strategy that sets
``task_gradient = True`` (Synaptic Intelligence) sees in ``after_backward`` the gradient of the
task's loss alone: the trainer then back-propagates the task loss and the activation penalties
separately.  ``grad_penalty`` adds the gradient of a penalty whose gradient is known in closed
form (the quadratic consolidation penalty, :math:`\\lambda\\Omega\\odot(\\theta-\\theta^*)`) to the
parameters' ``.grad`` with fused kernels.

``config()`` describes a strategy for run records and the result cache, by one rule: its class
name and every argument its constructor was called with **that differs from the argument's
default** (so a setting added later, with a default that keeps the old behaviour, leaves the
fingerprints of earlier runs alone), plus a digest of the code of any class in its MRO written
outside clutils (a user's subclass whose penalty changes is another run).  A function argument (a
custom importance closure) is described by its code and the values it captures, a tensor by a
digest of its values; an argument that cannot be described (an object whose ``repr`` is only its
address) makes ``train_stream`` refuse ``checkpoint_dir`` / ``cache_dir`` rather than risk
resuming a different run.  Settings changed after construction (``s.k = 5``) are not seen: pass
them to the constructor, or override ``config()``.  A strategy object serves one run: it keeps
that run's state, and ``train_stream`` refuses to start a second run with it.  A subclass that
defines ``__init__`` should call ``super().__init__()`` first, as every ``nn.Module`` does (one
that forgets is initialised as a module anyway).
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import types
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ._digest import class_code_digest, code_digest, tensor_digest
from .streams import Stream

__all__ = ["Strategy", "Naive", "Joint", "FreezeFeatures", "Compose", "BufferDict"]


def _describe(value: Any, depth: int = 0) -> Any:
    """A JSON-friendly description of a constructor argument (for run records and fingerprints).

    Numbers, strings, lists and dicts describe themselves; a tensor by its shape, dtype and a
    digest of its values; a function by its name, a digest of its code, and the values it
    captures (closure cells, defaults, the module-level data it reads), so two closures over
    different data differ.  What cannot be described (an object whose ``repr`` shows only its
    memory address) becomes ``{"undescribed": type}``; :func:`undescribed` lists those, and the
    trainer refuses to checkpoint or cache a run whose strategy holds one.
    """
    if depth > 6:
        return {"undescribed": f"{type(value).__name__} (nested too deeply)"}
    d = depth + 1
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_describe(v, d) for v in value]
    if isinstance(value, dict):
        return {str(k): _describe(v, d) for k, v in value.items()}
    if isinstance(value, Strategy):
        return value.config()
    if isinstance(value, Tensor):
        return {"tensor": list(value.shape), "dtype": str(value.dtype), "sha256": tensor_digest(value)}
    if isinstance(value, Stream):
        return {"stream": value.description, "content": value.digest()}
    if isinstance(value, np.ndarray):
        return _describe(torch.from_numpy(np.ascontiguousarray(value)), d)
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, (type, types.ModuleType)) or inspect.isbuiltin(value):
        return {"callable": _qualname(value)}
    if isinstance(value, functools.partial):
        return {"partial": _describe(value.func, d), "args": _describe(value.args, d),
                "keywords": _describe(value.keywords, d)}
    if inspect.ismethod(value):
        return {"method": _qualname(value), "self": _describe(value.__self__, d)}
    if inspect.isfunction(value):
        return _describe_function(value, d)
    if dataclasses.is_dataclass(value):
        return {"dataclass": _qualname(type(value)),
                **{f.name: _describe(getattr(value, f.name), d) for f in dataclasses.fields(value)}}
    if isinstance(value, nn.Module):
        return {"module": repr(value), "state": {k: _describe(v, d) for k, v in value.state_dict().items()}}
    text = repr(value)
    if " at 0x" in text:  # object.__repr__: differs from process to process, describes nothing
        return {"undescribed": _qualname(type(value))}
    return text


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def _describe_function(fn: types.FunctionType, depth: int) -> dict:
    out: dict[str, Any] = {"callable": _qualname(fn), "code": code_digest(fn.__code__)}
    if fn.__closure__:
        out["closure"] = {name: _describe(_cell(c), depth) for name, c in zip(fn.__code__.co_freevars, fn.__closure__)}
    if fn.__defaults__:
        out["defaults"] = _describe(fn.__defaults__, depth)
    if fn.__kwdefaults__:
        out["kwdefaults"] = _describe(fn.__kwdefaults__, depth)
    data = {n: fn.__globals__[n] for n in _global_names(fn.__code__) if n in fn.__globals__}
    data = {n: v for n, v in data.items()
            if not (callable(v) or isinstance(v, types.ModuleType))}  # data it reads; code is named above
    if data:
        out["globals"] = _describe(data, depth)
    return out


def _global_names(code: types.CodeType) -> list[str]:
    names = list(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            names += _global_names(c)
    return sorted(set(names))


def _cell(cell) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell (a name not bound yet)
        return None


def _same(value: Any, default: Any) -> bool:
    """``value`` is the default (compared by type and value, so ``1 == True`` does not count)."""
    return type(value) is type(default) and value == default


def undescribed(config: Any, where: str = "strategy") -> list[str]:
    """Where a :meth:`Strategy.config` holds something it could not describe (``[]``: nothing)."""
    if isinstance(config, dict):
        if set(config) == {"undescribed"}:
            return [f"{where}: a {config['undescribed']}"]
        return [u for k, v in config.items() for u in undescribed(v, f"{where}.{k}")]
    if isinstance(config, list):
        return [u for i, v in enumerate(config) for u in undescribed(v, f"{where}[{i}]")]
    return []


class Strategy(nn.Module):
    """Naive fine-tuning: train on each task in turn and nothing else (the base of every strategy)."""

    name = "naive"
    changes_data = False  # True for strategies that override train_data (at most one per Compose)
    task_gradient = False  # True: after_backward must see the gradient of the task's loss alone

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:  # record the outermost constructor call's arguments
            init = cls.__dict__["__init__"]
            sig = inspect.signature(init)

            @functools.wraps(init)
            def recorded(self, *args, **kw):
                if "_init_args" not in self.__dict__:  # the outermost constructor
                    bound = sig.bind(self, *args, **kw)
                    given = dict(list(bound.arguments.items())[1:])
                    defaults = {k: p.default for k, p in sig.parameters.items() if p.default is not p.empty}
                    object.__setattr__(self, "_init_args", {k: v for k, v in given.items()
                                                            if not (k in defaults and _same(v, defaults[k]))})
                    if "_modules" not in self.__dict__:  # a subclass that forgets super().__init__() still works
                        nn.Module.__init__(self)
                init(self, *args, **kw)

            cls.__init__ = recorded

    def train_data(self, stream: Stream, t: int) -> tuple[Tensor, Tensor, int | Tensor]:
        task = stream[t]
        return task.x_train, task.y_train, stream.head_of(t)

    def before_task(self, model: nn.Module, stream: Stream, t: int) -> None:
        pass

    def mix_batch(self, x: Tensor, y: Tensor, head: int | Tensor, t: int) -> tuple[Tensor, Tensor, int | Tensor]:
        """The batch task ``t`` trains on, from the ``(x, y, head)`` its data gives (default: unchanged)."""
        return x, y, head

    def extra_heads(self) -> list[int]:
        """Heads, beyond those of the task's own data, that the batches of ``mix_batch`` train (default: none)."""
        return []

    def penalty(self, model: nn.Module, t: int, hidden: list[Tensor]) -> Tensor | None:
        return None

    def after_backward(self, model: nn.Module, t: int) -> None:
        """Right after ``backward()``: ``.grad`` holds the loss's gradient (the task loss alone if any
        strategy of the run sets ``task_gradient``), no ``grad_penalty`` added yet."""

    def grad_penalty(self, model: nn.Module, t: int) -> None:
        """Add a closed-form penalty gradient to the parameters' ``.grad`` (before the optimiser step)."""

    def after_step(self, model: nn.Module, t: int) -> None:
        pass

    def after_task(self, model: nn.Module, stream: Stream, t: int) -> None:
        pass

    def config(self) -> dict:
        """The class, the constructor arguments that differ from their defaults, and the code of a user's subclass."""
        args = self.__dict__.get("_init_args", {})
        code = class_code_digest(self)
        return {"name": self.name, "class": type(self).__qualname__,
                **{k: _describe(v) for k, v in args.items() if k != "name"},
                **({"code": code} if code else {})}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k not in ("name", "class", "parts", "code"))


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
        seen: dict[int, Strategy] = {}
        for p in parts:
            for sub in p.modules():
                if isinstance(sub, Strategy) and not isinstance(sub, Compose):
                    if id(sub) in seen:
                        raise ValueError(
                            f"the same {type(sub).__name__} object appears twice in Compose: its penalty would "
                            f"count twice and it would learn twice per task. Use separate instances, e.g. "
                            f"Compose({type(sub).__name__}(...), {type(sub).__name__}(...)), or one only.")
                    seen[id(sub)] = sub
        data_changers = [p for p in parts if p.changes_data]
        if len(data_changers) > 1:
            raise ValueError(f"only one strategy may choose the training data, got {[p.name for p in data_changers]}.")
        self.parts = nn.ModuleList(parts)
        self.name = "+".join(p.name for p in parts)
        self.changes_data = bool(data_changers)
        self._data_part = next((i for i, p in enumerate(parts) if p.changes_data), 0)  # an index: no twin submodule
        self.task_gradient = any(p.task_gradient for p in parts)

    def train_data(self, stream, t):
        return self.parts[self._data_part].train_data(stream, t)

    def before_task(self, model, stream, t):
        for p in self.parts:
            p.before_task(model, stream, t)

    def mix_batch(self, x, y, head, t):
        for p in self.parts:
            x, y, head = p.mix_batch(x, y, head, t)
        return x, y, head

    def extra_heads(self):
        return sorted({h for p in self.parts for h in p.extra_heads()})

    @staticmethod
    def _sum(values):
        total = None
        for v in values:
            if v is not None:
                total = v if total is None else total + v
        return total

    def penalty(self, model, t, hidden):
        return self._sum(p.penalty(model, t, hidden) for p in self.parts)

    def after_backward(self, model, t):
        for p in self.parts:
            p.after_backward(model, t)

    def grad_penalty(self, model, t):
        for p in self.parts:
            p.grad_penalty(model, t)

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
