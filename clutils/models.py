"""Models: a multi-layer perceptron with optional one-head-per-task output.

The MLP exposes every hidden layer's post-ReLU activations, because later
chapters regularise them (Selfless Sequential Learning) and measure neuron
importance from them.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn

from ._checks import check_int, check_int_sequence

__all__ = ["MLP", "ContinualModel", "check_model"]


@runtime_checkable
class ContinualModel(Protocol):
    """What the trainer and the strategies need from a model (:class:`MLP` is one).

    ``model(x, task, return_hidden=False)`` gives the logits of head ``task`` (an int, or a long
    tensor of per-sample heads), and with ``return_hidden=True`` also the list of hidden
    activations that activation regularisers see.
    """

    n_heads: int
    in_features: int
    out_features: int

    def __call__(self, x: Tensor, task: int | Tensor = 0, return_hidden: bool = False): ...

    def features(self, x: Tensor) -> list[Tensor]: ...

    def head(self, h: Tensor, task: int | Tensor = 0) -> Tensor: ...

    def shared_parameters(self) -> list[nn.Parameter]: ...

    def head_parameters(self, task: int) -> list[nn.Parameter]: ...


def check_model(model: object) -> ContinualModel:
    """``model`` if it follows :class:`ContinualModel`, else a clear error naming what is missing."""
    if not isinstance(model, ContinualModel):
        wanted = ["n_heads", "in_features", "out_features", "features", "head", "shared_parameters",
                  "head_parameters"]
        missing = [a for a in wanted if not hasattr(model, a)]
        raise TypeError(f"{type(model).__name__} does not follow the model contract (clutils.ContinualModel): "
                        f"it lacks {missing}. Use clutils.MLP, or give your nn.Module these attributes and "
                        f"forward(x, task=0, return_hidden=False).")
    return model


class MLP(nn.Module):
    r"""Fully connected ReLU network  x -> h_1 -> ... -> h_L -> head_t(h_L).

    Args:
        in_features: input size (784 for MNIST, 64 for 8x8 digits).
        hidden: sizes of the hidden layers, e.g. ``(100, 100)``.
        out_features: outputs of each head.
        n_heads: 1 for a shared head, or one head per task (task-incremental).

    ``forward(x, task=0)`` returns the logits of head ``task``.  ``task`` may be
    an int or a long tensor of per-sample head indices (mixed-task batches, used
    by joint training).  ``forward(x, task, return_hidden=True)`` returns
    ``(logits, [h_1, ..., h_L])`` with the post-ReLU activations.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int, n_heads: int = 1):
        super().__init__()
        if not isinstance(hidden, (list, tuple)) and not (hasattr(hidden, "__len__") and hasattr(hidden, "__getitem__")
                                                          and not isinstance(hidden, str)):
            raise TypeError(f"hidden must be a sequence of layer sizes such as (100, 100) or () for none, got "
                            f"{hidden!r}; for one hidden layer of {hidden} units write MLP({in_features}, "
                            f"({hidden},), {out_features}).")
        n_heads = check_int(n_heads, "n_heads")
        in_features, out_features = check_int(in_features, "in_features"), check_int(out_features, "out_features")
        hidden = check_int_sequence(hidden, "hidden", example="(100, 100)")
        if n_heads < 1:
            raise ValueError(f"n_heads must be >= 1, got {n_heads}.")
        if in_features < 1 or out_features < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"layer sizes must be positive, got in={in_features}, hidden={list(hidden)}, out={out_features}.")
        sizes = [in_features, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.heads = nn.ModuleList(nn.Linear(sizes[-1], out_features) for _ in range(n_heads))
        self.in_features = in_features
        self.hidden = tuple(int(h) for h in hidden)
        self.out_features = out_features
        self.n_heads = n_heads

    def features(self, x: Tensor) -> list[Tensor]:
        """Post-ReLU activations of every hidden layer, ``[h_1, ..., h_L]``."""
        hs = []
        h = x.flatten(1)
        for layer in self.layers:
            h = torch.relu(layer(h))
            hs.append(h)
        return hs

    def head(self, h: Tensor, task: int | Tensor = 0) -> Tensor:
        """Apply head ``task`` (int, or per-sample long tensor) to the last hidden layer."""
        if isinstance(task, Tensor):
            if self.n_heads == 1:
                return self.heads[0](h)
            out = torch.stack([head(h) for head in self.heads], dim=1)  # (B, heads, out)
            return out[torch.arange(h.shape[0], device=h.device), task]
        if not 0 <= task < self.n_heads:
            raise IndexError(f"task {task} has no head: this model has {self.n_heads} head(s).")
        return self.heads[task](h)

    def forward(self, x: Tensor, task: int | Tensor = 0, return_hidden: bool = False):
        hs = self.features(x)
        last = hs[-1] if hs else x.flatten(1)
        logits = self.head(last, task)
        return (logits, hs) if return_hidden else logits

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of the hidden layers (shared by every task)."""
        return list(self.layers.parameters())

    def head_parameters(self, task: int) -> list[nn.Parameter]:
        return list(self.heads[task].parameters())

    def extra_repr(self) -> str:
        return f"heads={self.n_heads}"
