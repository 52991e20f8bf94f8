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

__all__ = ["FISHER_KINDS", "MAS_KINDS", "METHODS", "fisher_diagonal", "mas_importance", "hebbian_importance",
           "neuron_importance"]

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


def _sums_linear(model: nn.Module, x: Tensor, head: int, n_active: int | None, batch_size: int,
                 make_G: MakeG, reduce: str) -> dict[str, Tensor]:
    linears = _linear_modules(model)
    r = torch.square if reduce == "sq" else torch.abs
    dev = _device(model)
    sums = _zeros_like_params(model)
    seen: dict[nn.Module, tuple[Tensor, Tensor]] = {}

    def hook(mod, inputs, output):
        if mod in seen:
            raise _NotLinear("an nn.Linear layer is applied twice in one forward pass")
        if inputs[0].dim() != 2:
            raise _NotLinear("an nn.Linear layer sees inputs that are not (batch, features)")
        seen[mod] = (inputs[0], output)

    handles = [m.register_forward_hook(hook) for m in linears]
    try:
        for sl in _chunks(len(x), batch_size):
            seen.clear()
            logits = model(_input_chunk(x, sl, dev), head)
            out = logits[:, :n_active] if n_active is not None else logits
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


def _sums_func(model: nn.Module, x: Tensor, head: int, n_active: int | None, batch_size: int,
               make_G: MakeG, reduce: str) -> dict[str, Tensor]:
    """General route: per-sample gradients with ``torch.func.vmap(grad(...))`` (memory ~ batch_size x #params)."""
    from torch.func import functional_call, grad, vmap

    r = torch.square if reduce == "sq" else torch.abs
    dev = _device(model)
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def vjp_one(prm, xi, gi):  # <G_n, F(x_n)>, whose gradient is J_n^T G_n
        logits = functional_call(model, (prm, buffers), (xi.unsqueeze(0), head))[0]
        out = logits[:n_active] if n_active is not None else logits
        return (out * gi).sum()

    per_sample = vmap(grad(vjp_one), in_dims=(None, 0, 0))
    sums = _zeros_like_params(model)
    for sl in _chunks(len(x), batch_size):
        xb = x[sl].to(dev)
        with torch.no_grad():
            logits = model(xb, head)
        out = logits[:, :n_active] if n_active is not None else logits
        G = make_G(out, sl)
        for k in range(G.shape[0]):
            g = per_sample(params, xb, G[k])
            for n in sums:
                sums[n] += r(g[n]).sum(0)
    return sums


def _per_sample_sums(model: nn.Module, x: Tensor, head: int, n_active: int | None, batch_size: int,
                     make_G: MakeG, reduce: str, method: str) -> dict[str, Tensor]:
    _check_choice(method, METHODS, "method")
    if method != "func":
        try:
            return _sums_linear(model, x, head, n_active, batch_size, make_G, reduce)
        except _NotLinear as why:
            if method == "linear":
                raise ValueError(f"method='linear' needs a model made of nn.Linear layers, each used once per "
                                 f"forward pass ({why}); use method='auto' or 'func'.") from None
    return _sums_func(model, x, head, n_active, batch_size, make_G, reduce)


def _batch_grad_sums(model: nn.Module, x: Tensor, batch_size: int, batch_loss: Callable[[Tensor, slice], Tensor],
                     reduce: str) -> dict[str, Tensor]:
    """``sum_b w_b r(dL_b/dtheta)`` over batches b, w_b = B_b for r = square and 1 for r = abs."""
    r = torch.square if reduce == "sq" else torch.abs
    dev = _device(model)
    names, params = zip(*[(n, p) for n, p in model.named_parameters()])
    sums = _zeros_like_params(model)
    for sl in _chunks(len(x), batch_size):
        loss = batch_loss(x[sl].to(dev), sl)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        weight = (sl.stop - sl.start) if reduce == "sq" else 1
        for n, g in zip(names, grads):
            if g is not None:
                sums[n] += weight * r(g)
    return sums


def _active(logits: Tensor, n_active: int | None) -> Tensor:
    return logits[:, :n_active] if n_active is not None else logits


# --------------------------------------------------------------------------- Fisher
def fisher_diagonal(model: nn.Module, x: Tensor, y: Tensor | None = None, *, kind: str = "true", head: int = 0,
                    n_active: int | None = None, batch_size: int = 1024, generator: torch.Generator | None = None,
                    method: str = "auto") -> dict[str, Tensor]:
    r"""Diagonal of the Fisher information of ``p(y|x; theta)`` (the EWC importance).

    With ``p(c|x_n)`` the softmax of the first ``n_active`` logits of head ``head``:

    * ``"true"``       :math:`F=\frac1N\sum_n\sum_c p(c|x_n)\,(\partial_\theta\log p(c|x_n))^2`
      (expectation under the model's own predictive distribution);
    * ``"sampled"``    :math:`F=\frac1N\sum_n(\partial_\theta\log p(\hat y_n|x_n))^2`,
      :math:`\hat y_n\sim p(\cdot|x_n)` drawn with ``generator`` (a CPU generator; the
      uniforms are drawn on the CPU, so a seed gives the same labels on every device
      and for every ``batch_size``; ``None`` draws from PyTorch's global generator);
    * ``"empirical"``  the same with the true labels ``y``;
    * ``"batched"``    the square of the gradient :math:`\bar g_b=\frac1{B_b}\sum_{n\in b}g_n` of the
      *mean* cross-entropy of each mini-batch ``b`` of ``batch_size`` true-labelled
      samples, averaged over the batches (weighted by their sizes :math:`B_b`):
      :math:`F=\sum_b\frac{B_b}{N}\bar g_b^2`, the shortcut of several public
      implementations.  It is biased: per batch it is
      :math:`\frac1{B^2}(\sum_n g_n)^2 = \frac1{B^2}\sum_n g_n^2+\frac1{B^2}\sum_{n\neq m}g_ng_m`
      where the empirical Fisher has :math:`\frac1B\sum_n g_n^2`.  If per-sample
      gradients have mean :math:`\mu` and second moment :math:`s` (the empirical
      Fisher), its expectation over random batches is :math:`s/B+(1-1/B)\mu^2`:
      near a minimum of the loss (:math:`\mu\approx0`) about ``batch_size``
      times smaller than the Fisher (a :math:`\lambda` tuned with it is that much
      too large for the exact Fisher), and noisier.  ``batch_size=1`` gives the
      empirical Fisher.

    The first three are exact per-sample averages, computed without a loop over
    samples (see the module docstring; ``method`` picks ``"linear"`` (the fast
    route), ``"func"`` (``torch.func``) or ``"auto"``).  Returns a dict keyed
    like ``model.named_parameters()``; parameters that do not reach head
    ``head`` (other tasks' heads) get zeros.
    """
    _check_choice(kind, FISHER_KINDS, "Fisher estimator kind")
    if kind in ("empirical", "batched") and y is None:
        raise ValueError(f"the {kind!r} Fisher uses the true labels: pass y (or use kind='true' or 'sampled').")
    _check_inputs(model, x, batch_size, n_active, y if kind in ("empirical", "batched") else None)
    dev = _device(model)
    N = len(x)
    with _eval_mode(model):
        if kind == "batched":
            def batch_loss(xb, sl):
                return F.cross_entropy(_active(model(xb, head), n_active), y[sl].to(dev))
            sums = _batch_grad_sums(model, x, batch_size, batch_loss, "sq")
        else:
            u = None
            if kind == "sampled":  # one uniform per sample, drawn on the CPU: reproducible everywhere
                u = torch.rand(N, generator=generator, dtype=torch.float64)

            def make_G(out: Tensor, sl: slice) -> Tensor:
                p = torch.softmax(out.double(), dim=1)
                if kind == "true":  # sqrt(p_c) * (e_c - p): sum_c of squares = sum_c p_c (dlog p_c)^2
                    eye = torch.eye(p.shape[1], dtype=p.dtype, device=p.device)
                    G = p.sqrt().T.unsqueeze(2) * (eye.unsqueeze(1) - p.unsqueeze(0))  # (C, B, C)
                    return G.to(out.dtype)
                if kind == "sampled":
                    cdf = p.cumsum(1)
                    lab = torch.searchsorted(cdf, u[sl].to(p.device).unsqueeze(1)).squeeze(1)
                    lab = lab.clamp_(max=p.shape[1] - 1)
                else:
                    lab = y[sl].to(p.device)
                return (p - F.one_hot(lab, p.shape[1]).to(p.dtype)).to(out.dtype).unsqueeze(0)  # d CE / d logits

            sums = _per_sample_sums(model, x, head, n_active, batch_size, make_G, "sq", method)
    return {n: s / N for n, s in sums.items()}


# --------------------------------------------------------------------------- MAS
def mas_importance(model: nn.Module, x: Tensor, *, kind: str = "per_sample", head: int = 0,
                   n_active: int | None = None, batch_size: int = 1024, method: str = "auto") -> dict[str, Tensor]:
    r"""Memory Aware Synapses importance (Aljundi et al., ECCV 2018); needs no labels.

    * ``"per_sample"`` (the paper's definition), with ``F`` the logits of head ``head``:

      .. math:: \Omega = \frac1N\sum_{k=1}^N\left|\frac{\partial\lVert F(x_k)\rVert_2^2}{\partial\theta}\right|

      computed exactly without a loop over samples (for a linear layer the
      per-sample weight gradient is :math:`\delta_k a_k^\top`, whose absolute
      value is :math:`|\delta_k||a_k|^\top`, so the sum is :math:`|\delta|^\top|a|`).
    * ``"batch"`` (the batch-level shortcut of released implementations): the
      absolute value of the gradient of the squared norms *summed* over a
      mini-batch ``b`` of ``batch_size`` samples, summed over batches and divided
      by ``N`` (implementations that average the norms over the batch instead of
      summing them get this divided by the batch size):

      .. math:: \Omega^{(B)} = \frac1N\sum_b\left|\sum_{k\in b}
                \frac{\partial\lVert F(x_k)\rVert_2^2}{\partial\theta}\right|

      For ``batch_size=1`` it equals ``"per_sample"``; by the triangle inequality
      it is never larger, and it shrinks as batches grow (signs cancel inside a
      batch), so it depends on the batch size.
    """
    _check_choice(kind, MAS_KINDS, "MAS importance kind")
    _check_inputs(model, x, batch_size, n_active)
    N = len(x)
    with _eval_mode(model):
        if kind == "batch":
            def batch_loss(xb, sl):
                return _active(model(xb, head), n_active).square().sum()
            sums = _batch_grad_sums(model, x, batch_size, batch_loss, "abs")
        else:
            sums = _per_sample_sums(model, x, head, n_active, batch_size,
                                    lambda out, sl: (2 * out).unsqueeze(0), "abs", method)
    return {n: s / N for n, s in sums.items()}


def hebbian_importance(model: nn.Module, x: Tensor, *, head: int = 0, n_active: int | None = None,
                       batch_size: int = 1024) -> dict[str, Tensor]:
    r"""Local (Hebbian) MAS importance (Aljundi et al., 2018, Sec. 4.2) of an :class:`~clutils.models.MLP`.

    For the layer from pre-synaptic activations :math:`y_i` (its input) to
    post-synaptic activations :math:`y_j` (its output after the ReLU; the logits
    for the output head):

    .. math:: \Omega_{ij} = \frac1N\sum_{k=1}^N |y_i(x_k)\,y_j(x_k)|
              = \frac1N\,(|Y_\text{post}|^\top |Y_\text{pre}|)_{ji}

    A bias is a synapse from a constant pre-synaptic unit :math:`y_i=1`, so
    :math:`\Omega_{\text{bias},j} = \frac1N\sum_k |y_j(x_k)|`.  Only head
    ``head`` is used (other heads get zeros); ``n_active`` keeps the first
    ``n_active`` output units (the rows of the others are zero).
    """
    _check_inputs(model, x, batch_size, n_active)
    if not (hasattr(model, "layers") and hasattr(model, "heads")):
        raise ValueError("hebbian_importance needs an MLP-like model with .layers, .heads and "
                         "forward(x, head, return_hidden=True); build it with clutils.MLP.")
    dev = _device(model)
    ids = {id(p): n for n, p in model.named_parameters()}
    linears = [*model.layers, model.heads[head]]
    sums = _zeros_like_params(model)
    with _eval_mode(model), torch.no_grad():
        for sl in _chunks(len(x), batch_size):
            xb = x[sl].to(dev).flatten(1)
            logits, hidden = model(xb, head, return_hidden=True)
            out = logits.clone()
            if n_active is not None:
                out[:, n_active:] = 0
            acts = [xb, *hidden, out]
            for lin, pre, post in zip(linears, acts[:-1], acts[1:]):
                sums[ids[id(lin.weight)]] += post.abs().T @ pre.abs()
                if lin.bias is not None:
                    sums[ids[id(lin.bias)]] += post.abs().sum(0)
    return {n: s / len(x) for n, s in sums.items()}


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
