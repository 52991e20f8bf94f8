r"""How much each parameter (or neuron) matters to a task: the importance estimators.

Every estimator is an average over the samples ``x`` of a per-sample quantity,
computed without a Python loop over samples:

* :func:`fisher_diagonal` -- the diagonal of the Fisher information (EWC), four
  estimators ``"true"``, ``"sampled"``, ``"empirical"`` and ``"batched"``;
* :func:`mas_importance`  -- Memory Aware Synapses, the sensitivity of the squared
  norm of the output ``|dF^2/dtheta|`` (Aljundi et al., 2018);
* :func:`hebbian_importance` -- MAS's local (Hebbian) variant ``|y_pre * y_post|``;
* :func:`neuron_importance` -- the per-neuron version used by SNID/SLNID.

All of them put the model in eval mode while they run (and restore its mode),
leave no ``.grad`` on the parameters, work on any device (the data are moved to
the model's device chunk by chunk, ``batch_size`` samples at a time), and return
a dict keyed like ``model.named_parameters()`` (or, for neurons, a list).

**Fast exact route.**  Every estimator is a sum over samples of a function of the
per-sample gradient ``g_n = J_n^T G_n``, where ``J_n`` is the Jacobian of the
sample's logits and ``G_n`` the derivative of the per-sample quantity with
respect to the logits (``p - e_y`` for the cross-entropy, ``2F`` for
``||F||^2``).  For an ``nn.Linear`` layer with input ``a_n`` and output gradient
``delta_n`` the per-sample weight gradient is the outer product
``delta_n a_n^T``, so

.. math::  \sum_n g_n^{\odot 2} = (\delta^{\odot 2})^\top (a^{\odot 2}),\qquad
           \sum_n |g_n| = |\delta|^\top |a|,

one matrix product per layer (and ``sum_n delta_n^2`` for the bias).  ``a`` and
``delta`` are captured with forward hooks and ``torch.autograd.grad`` on the
layer outputs.  Models that are not built of ``nn.Linear`` layers (or that use a
layer twice) take the general route, ``torch.func.vmap(grad(...))``, which is
also the independent cross-check in the tests (``method="func"``).  Both routes
assume the samples are processed independently (true in eval mode without
batch-statistics layers).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["neuron_importance"]

FISHER_KINDS = ("true", "sampled", "empirical", "batched")
MAS_KINDS = ("per_sample", "batch")
METHODS = ("auto", "linear", "func")


# --------------------------------------------------------------------------- helpers
def _check_choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(repr(a) for a in allowed)}.")
    return value


def _device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _check_inputs(model: nn.Module, x: Tensor, batch_size: int, n_active: int | None, y: Tensor | None = None) -> None:
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a tensor of samples with shape (N, features...), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}.")
    if len(x) == 0:
        raise ValueError("x holds no samples; importance is a mean over samples and needs at least one.")
    if y is not None and (y.dim() != 1 or len(y) != len(x)):
        raise ValueError(f"y must hold one label per sample: x has {len(x)} samples, y has shape {tuple(y.shape)}.")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    out = getattr(model, "out_features", None)
    if n_active is not None and (n_active < 1 or (out is not None and n_active > out)):
        raise ValueError(f"n_active must be between 1 and the number of outputs ({out}), got {n_active}.")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and gradients enabled inside; the model's previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        model.train(was_training)


def _chunks(n: int, batch_size: int) -> Iterator[slice]:
    for i in range(0, n, int(batch_size)):
        yield slice(i, min(i + int(batch_size), n))


def _zeros_like_params(model: nn.Module) -> dict[str, Tensor]:
    return {name: torch.zeros_like(p, memory_format=torch.contiguous_format) for name, p in model.named_parameters()}


def _input_chunk(x: Tensor, sl: slice, dev: torch.device) -> Tensor:
    # requires_grad on the input makes every layer output part of the graph even
    # when some parameters are frozen (FreezeFeatures), so their deltas exist.
    return x[sl].to(dev, non_blocking=True).detach().requires_grad_(True)


# --------------------------------------------------------------------------- neuron importance
def neuron_importance(model: nn.Module, x: Tensor, *, head: int = 0, n_active: int | None = None,
                      batch_size: int = 1024) -> list[Tensor]:
    r"""Importance of every hidden neuron (SNID/SLNID, Aljundi et al., ICLR 2019).

    .. math::  \alpha_i = \frac{1}{N}\sum_{k=1}^{N}
               \left|\frac{\partial \lVert F(x_k)\rVert_2^2}{\partial h_i(x_k)}\right|

    with ``h`` the post-ReLU activations (``model(x, head, return_hidden=True)``)
    and ``F`` the logits of head ``head`` (the first ``n_active`` of them).  A
    neuron's activation on sample ``k`` only affects that sample's output, so one
    backward pass of ``sum_k ||F(x_k)||^2`` gives every per-sample derivative.

    Returns one vector per hidden layer, ``[alpha_1, ..., alpha_L]`` (on the
    model's device).
    """
    _check_inputs(model, x, batch_size, n_active)
    dev = _device(model)
    sums: list[Tensor] | None = None
    with _eval_mode(model):
        for sl in _chunks(len(x), batch_size):
            logits, hidden = model(_input_chunk(x, sl, dev), head, return_hidden=True)
            if not hidden:
                raise ValueError("the model has no hidden layer, so it has no neuron importance.")
            out = logits[:, :n_active] if n_active is not None else logits
            grads = torch.autograd.grad(out.square().sum(), hidden)
            if sums is None:
                sums = [torch.zeros(h.shape[1:], device=dev, dtype=h.dtype) for h in hidden]
            for s, g in zip(sums, grads):
                s += g.abs().sum(0)
    return [s / len(x) for s in sums]
