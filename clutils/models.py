"""Models: a multi-layer perceptron and a small convolutional network, each with optional one-head-per-task output.

The MLP exposes every hidden layer's post-ReLU activations, because later
chapters regularise them (Selfless Sequential Learning) and measure neuron
importance from them.
"""
from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch
from torch import Tensor, nn

from ._checks import check_int, check_int_sequence

__all__ = ["MLP", "CNN", "ContinualModel", "check_model"]


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


class CNN(nn.Module):
    r"""A small convolutional network: ``conv -> ReLU -> 2x2 max-pool`` per entry of ``channels``, then one
    fully connected ReLU layer of ``hidden`` units and the head(s).

    Args:
        input_shape: ``(C, H, W)`` of one image, e.g. ``(1, 28, 28)`` for MNIST, ``(1, 8, 8)`` for digits.
        channels: output channels of the convolutions, e.g. ``(16, 32)``.
        hidden: units of the fully connected layer before the head.
        out_features: outputs of each head.
        n_heads: 1 for a shared head, or one head per task.
        kernel_size: odd size of the square kernels (padding keeps the map's size until the pool).

    The streams store images as flat vectors (``in_features = C * H * W``); ``forward`` takes those,
    or images already shaped ``(B, C, H, W)``, and reshapes to ``input_shape``.  The hidden list of
    ``forward(x, task, return_hidden=True)`` is ``[maps_1, ..., maps_L, h_fc]``: the pooled feature
    maps of every convolution (``(B, C_l, H_l, W_l)``) and the fully connected layer's activations,
    so an activation regulariser can choose its layers: ``SSL(..., layers=[len(channels)])``
    regularises the fully connected layer alone.
    """

    def __init__(self, input_shape: Sequence[int], channels: Sequence[int], hidden: int, out_features: int,
                 n_heads: int = 1, kernel_size: int = 3):
        super().__init__()
        shape = check_int_sequence(input_shape, "input_shape", example="(1, 28, 28)")
        if len(shape) != 3 or any(v < 1 for v in shape):
            raise ValueError(f"input_shape must be (channels, height, width) of one image, e.g. (1, 28, 28), got "
                             f"{tuple(input_shape)}.")
        channels = check_int_sequence(channels, "channels", example="(16, 32)")
        hidden, out_features = check_int(hidden, "hidden"), check_int(out_features, "out_features")
        n_heads, kernel_size = check_int(n_heads, "n_heads"), check_int(kernel_size, "kernel_size")
        if not channels or any(c < 1 for c in channels) or hidden < 1 or out_features < 1 or n_heads < 1:
            raise ValueError(f"channels must be non-empty and every size positive, got channels={list(channels)}, "
                             f"hidden={hidden}, out_features={out_features}, n_heads={n_heads}.")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (3, 5, ...) so padding keeps the map's size, got {kernel_size}.")
        h, w = shape[1], shape[2]
        for _ in channels:
            h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"{len(channels)} 2x2 pools shrink a {shape[1]}x{shape[2]} image to nothing; use "
                             f"fewer convolutions (at most {min(shape[1], shape[2]).bit_length() - 1}).")
        sizes = [shape[0], *channels]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, kernel_size, padding=kernel_size // 2)
                                   for a, b in zip(sizes[:-1], sizes[1:]))
        self.fc = nn.Linear(channels[-1] * h * w, hidden)
        self.heads = nn.ModuleList(nn.Linear(hidden, out_features) for _ in range(n_heads))
        self.input_shape = tuple(shape)
        self.channels = tuple(channels)
        self.in_features = shape[0] * shape[1] * shape[2]
        self.hidden = (hidden,)
        self.out_features = out_features
        self.n_heads = n_heads

    def features(self, x: Tensor) -> list[Tensor]:
        """The pooled maps of every convolution and the fully connected layer's activations."""
        h = x.reshape(len(x), *self.input_shape)
        hs = []
        for conv in self.convs:
            h = torch.max_pool2d(torch.relu(conv(h)), 2)
            hs.append(h)
        hs.append(torch.relu(self.fc(h.flatten(1))))
        return hs

    head = MLP.head

    def forward(self, x: Tensor, task: int | Tensor = 0, return_hidden: bool = False):
        hs = self.features(x)
        logits = self.head(hs[-1], task)
        return (logits, hs) if return_hidden else logits

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of the convolutions and the fully connected layer (shared by every task)."""
        return [*self.convs.parameters(), *self.fc.parameters()]

    def head_parameters(self, task: int) -> list[nn.Parameter]:
        return list(self.heads[task].parameters())

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, heads={self.n_heads}"
