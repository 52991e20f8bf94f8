r"""The exact per-sample gradient-statistics engine shared by EWC, MAS and Selfless Sequential Learning.

Every importance estimator of the book is an average over samples :math:`x_n` of a function of
the per-sample gradient

.. math::  g_n = J_n^\top G_n ,

with :math:`J_n` the Jacobian of sample :math:`n`'s logits with respect to the parameters and
:math:`G_n` a vector in logit space: :math:`p_n - e_{y_n}` for the cross-entropy (the Fisher),
:math:`2F(x_n)` for :math:`\lVert F(x_n)\rVert^2` (MAS).  :func:`per_sample_sums` returns

.. math::  S = \sum_n \sum_k r\big(J_n^\top G_{k,n}\big),\qquad r = (\cdot)^2 \text{ or } |\cdot| ,

for every parameter at once, with no Python loop over samples.

**Why no loop is needed.**  For an ``nn.Linear`` layer with input :math:`a_n` and output
gradient :math:`\delta_n` the per-sample weight gradient is the outer product
:math:`\delta_n a_n^\top`, so

.. math::  \sum_n g_n^{\odot 2} = (\delta^{\odot 2})^\top (a^{\odot 2}),\qquad
           \sum_n |g_n| = |\delta|^\top |a| ,

one matrix product per layer (and :math:`\sum_n r(\delta_n)` for the bias).  :math:`a` and
:math:`\delta` are captured with forward hooks and one ``torch.autograd.grad`` on the layer
outputs per vector :math:`G_k`.  Models that are not built of ``nn.Linear`` layers (or use a
layer twice) take the general route, ``torch.func.vmap(grad(...))`` (``method="func"``), which is
also the independent cross-check in the tests.  Both routes assume samples are processed
independently (true in eval mode without batch-statistics layers).

Memory: samples go through the model ``chunk_size`` at a time (moved to the model's device chunk
by chunk); ``chunk_size`` changes nothing but memory and speed.  The batch-level shortcuts of
released implementations (:func:`batch_grad_sums`) are different statistics: their
``chunk_size`` changes the result.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from ._checks import check_int
from .models import ContinualModel

__all__ = ["METHODS", "per_sample_sums", "batch_grad_sums", "check_inputs", "check_choice", "eval_mode", "active",
           "chunks", "zeros_like_params", "input_chunk", "model_device", "MakeG"]

METHODS = ("auto", "linear", "func")


def check_choice(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(repr(a) for a in allowed)}.")
    return value


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def check_inputs(model: nn.Module, x: Tensor, chunk_size: int, n_active: int | None, y: Tensor | None = None) -> None:
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError(f"x must be a tensor of samples with shape (N, features...), got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}.")
    if len(x) == 0:
        raise ValueError("x holds no samples; importance is a mean over samples and needs at least one.")
    check_int(chunk_size, "chunk_size", minimum=1)
    out = model.out_features if isinstance(model, ContinualModel) else None
    if n_active is not None:
        check_int(n_active, "n_active")
        if n_active < 1 or (out is not None and n_active > out):
            raise ValueError(f"n_active must be between 1 and the number of outputs ({out}), got {n_active}.")
    _check_x(model, x)
    if y is not None:
        _check_labels(y, len(x), n_active if n_active is not None else out)


def _check_x(model: nn.Module, x: Tensor) -> None:
    """Float inputs of the model's dtype and width, all finite (a NaN pixel makes every importance NaN)."""
    p = next(model.parameters(), None)
    if not x.is_floating_point():
        raise TypeError(f"x is {x.dtype}: importance needs float inputs like the training data (pixels in "
                        f"[0, 1]); convert with x.float() / 255 for raw bytes, or x.float().")
    if p is not None and x.dtype != p.dtype:
        raise TypeError(f"x is {x.dtype} but the model's parameters are {p.dtype}; convert with x.to({p.dtype}) "
                        f"(or the model with model.to({x.dtype})).")
    width = x[:1].flatten(1).shape[1]
    if isinstance(model, ContinualModel) and width != model.in_features:
        raise ValueError(f"x has {width} features per sample but the model takes {model.in_features}; "
                         f"give inputs of the stream the model was built for.")
    n_bad = int((~torch.isfinite(x)).sum())  # one pass over x, one host sync per importance call
    if n_bad:
        raise ValueError(f"x holds {n_bad} non-finite values (NaN or inf), which would make the importance NaN; "
                         f"clean the inputs (e.g. torch.nan_to_num) or drop those samples.")


def _check_labels(y: Tensor, n: int, n_classes: int | None) -> None:
    if not isinstance(y, Tensor) or y.dtype in (torch.bool,) or y.is_floating_point() or y.is_complex():
        raise TypeError(f"y must hold integer class labels (torch.int64), got "
                        f"{y.dtype if isinstance(y, Tensor) else type(y).__name__}; convert with y.long().")
    if y.dim() != 1 or len(y) != n:
        raise ValueError(f"y must hold one label per sample: x has {n} samples, y has shape {tuple(y.shape)}.")
    if n_classes is not None and len(y):
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= n_classes:
            raise ValueError(f"labels must lie in [0, {n_classes}) (the outputs in play), got labels from {lo} to "
                             f"{hi}; relabel them (a stream's y_train already is) or raise n_active.")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and gradients enabled inside; the model's previous mode restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        model.train(was_training)


def chunks(n: int, chunk_size: int) -> Iterator[slice]:
    for i in range(0, n, int(chunk_size)):
        yield slice(i, min(i + int(chunk_size), n))


def zeros_like_params(model: nn.Module) -> dict[str, Tensor]:
    return {name: torch.zeros_like(p, memory_format=torch.contiguous_format) for name, p in model.named_parameters()}


def input_chunk(x: Tensor, sl: slice, dev: torch.device) -> Tensor:
    # requires_grad on the input makes every layer output part of the graph even
    # when some parameters are frozen (FreezeFeatures), so their deltas exist.
    return x[sl].to(dev, non_blocking=True).detach().requires_grad_(True)


# --------------------------------------------------------------------------- per-sample engine
# make_G(out, sl) -> (K, B, n_active): K logit-space vectors G_{k,n} per sample.  The
# engine returns  sum_n sum_k r(J_n^T G_{k,n})  for every parameter, r = square or abs.
MakeG = Callable[[Tensor, slice], Tensor]


class _NotLinear(Exception):
    """The model cannot take the fast nn.Linear route."""


def _linear_modules(model: nn.Module) -> dict[nn.Module, tuple[str, str | None]]:
    """``{linear: (weight name, bias name)}``, or _NotLinear if some parameter is not in an nn.Linear."""
    found: dict[nn.Module, tuple[str, str | None]] = {}
    covered: set[str] = set()
    for mname, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            pre = f"{mname}." if mname else ""
            found[mod] = (pre + "weight", pre + "bias" if mod.bias is not None else None)
            covered.update(n for n in found[mod] if n is not None)
    missing = [n for n, _ in model.named_parameters() if n not in covered]
    if missing:
        raise _NotLinear(f"parameters outside nn.Linear layers: {missing[:3]}")
    return found


def _sums_linear(model: nn.Module, x: Tensor, head: int, n_active: int | None, chunk_size: int,
                 make_G: MakeG, reduce: str) -> dict[str, Tensor]:
    linears = _linear_modules(model)
    r = torch.square if reduce == "sq" else torch.abs
    dev = model_device(model)
    sums = zeros_like_params(model)
    seen: dict[nn.Module, tuple[Tensor, Tensor]] = {}

    def hook(mod, inputs, output):
        if mod in seen:
            raise _NotLinear("an nn.Linear layer is applied twice in one forward pass")
        if inputs[0].dim() != 2:
            raise _NotLinear("an nn.Linear layer sees inputs that are not (batch, features)")
        seen[mod] = (inputs[0], output)

    handles = [m.register_forward_hook(hook) for m in linears]
    try:
        for sl in chunks(len(x), chunk_size):
            seen.clear()
            logits = model(input_chunk(x, sl, dev), head)
            out = active(logits, n_active)
            mods = list(seen)
            zs = [seen[m][1] for m in mods]
            G = make_G(out.detach(), sl)
            S = [torch.zeros_like(z) for z in zs]  # sum_k r(delta_k), per sample and unit
            for k in range(G.shape[0]):
                deltas = torch.autograd.grad(out, zs, G[k], retain_graph=k < G.shape[0] - 1, allow_unused=True)
                for s, d in zip(S, deltas):
                    if d is not None:
                        s += r(d)
            for m, s in zip(mods, S):
                w_name, b_name = linears[m]
                sums[w_name] += s.T @ r(seen[m][0].detach())
                if b_name is not None:
                    sums[b_name] += s.sum(0)
    finally:
        for h in handles:
            h.remove()
        seen.clear()
    return sums


def _sums_func(model: nn.Module, x: Tensor, head: int, n_active: int | None, chunk_size: int,
               make_G: MakeG, reduce: str) -> dict[str, Tensor]:
    """General route: per-sample gradients with ``torch.func.vmap(grad(...))`` (memory ~ chunk_size x #params)."""
    from torch.func import functional_call, grad, vmap

    r = torch.square if reduce == "sq" else torch.abs
    dev = model_device(model)
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def vjp_one(prm, xi, gi):  # <G_n, F(x_n)>, whose gradient is J_n^T G_n
        logits = functional_call(model, (prm, buffers), (xi.unsqueeze(0), head))[0]
        out = logits[:n_active] if n_active is not None else logits
        return (out * gi).sum()

    per_sample = vmap(grad(vjp_one), in_dims=(None, 0, 0))
    sums = zeros_like_params(model)
    for sl in chunks(len(x), chunk_size):
        xb = x[sl].to(dev)
        with torch.no_grad():
            logits = model(xb, head)
        out = active(logits, n_active)
        G = make_G(out, sl)
        for k in range(G.shape[0]):
            g = per_sample(params, xb, G[k])
            for n in sums:
                sums[n] += r(g[n]).sum(0)
    return sums


def per_sample_sums(model: nn.Module, x: Tensor, head: int, n_active: int | None, chunk_size: int,
                    make_G: MakeG, reduce: str, method: str = "auto") -> dict[str, Tensor]:
    r"""For every parameter, :math:`S=\sum_n\sum_k r(J_n^\top G_{k,n})` with ``r`` = square (``reduce="sq"``) or abs.

    ``make_G(out, sl)`` gets the (detached) active logits of the samples ``x[sl]`` and returns the
    ``(K, B, n_active)`` logit-space vectors.  What it computes, written as a loop over samples::

        for n in range(N):
            out = model(x[n:n+1], head)[:, :n_active]
            for G in make_G(out.detach(), slice(n, n+1)):
                g = torch.autograd.grad((out * G).sum(), params)
                S += r(g)

    ``method``: ``"linear"`` (the outer-product identity), ``"func"`` (``torch.func``) or ``"auto"``.
    """
    check_choice(method, METHODS, "method")
    if method != "func":
        try:
            return _sums_linear(model, x, head, n_active, chunk_size, make_G, reduce)
        except _NotLinear as why:
            if method == "linear":
                raise ValueError(f"method='linear' needs a model made of nn.Linear layers, each used once per "
                                 f"forward pass ({why}); use method='auto' or 'func'.") from None
    return _sums_func(model, x, head, n_active, chunk_size, make_G, reduce)


def batch_grad_sums(model: nn.Module, x: Tensor, batch_size: int, batch_loss: Callable[[Tensor, slice], Tensor],
                    reduce: str) -> dict[str, Tensor]:
    """``sum_b w_b r(dL_b/dtheta)`` over consecutive batches b of ``batch_size`` samples (w_b = B_b for
    r = square, 1 for r = abs): the batch-level statistic of released implementations."""
    r = torch.square if reduce == "sq" else torch.abs
    dev = model_device(model)
    names, params = zip(*[(n, p) for n, p in model.named_parameters()])
    sums = zeros_like_params(model)
    for sl in chunks(len(x), batch_size):
        loss = batch_loss(x[sl].to(dev), sl)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        weight = (sl.stop - sl.start) if reduce == "sq" else 1
        for n, g in zip(names, grads):
            if g is not None:
                sums[n] += weight * r(g)
    return sums


def active(logits: Tensor, n_active: int | None) -> Tensor:
    """The first ``n_active`` logits (all of them for ``None``)."""
    return logits[:, :n_active] if n_active is not None else logits
