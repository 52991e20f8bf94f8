r"""Chapter 4: Selfless Sequential Learning -- regularisers on a layer's *activations* (Aljundi et al., ICLR 2019).

Each function takes the post-ReLU activations ``h`` of one layer for a batch,
an ``M x N`` matrix (M samples, N neurons), and returns a scalar.  The
co-activation regularisers share one form,

.. math::

    R(H) = \frac{1}{M} \sum_{m=1}^{M} \sum_{i \ne j} W_{ij}\, h_i^m h_j^m
         = \frac{1}{M} \sum_{i,j} W_{ij} (H^\top H)_{ij},

with a weight matrix ``W`` that has a zero diagonal:

* SNI   (sparse coding through neural inhibition):      ``W_ij = 1``;
* SLNI  (... *local* neural inhibition):                ``W_ij = exp(-(i-j)^2 / (2 sigma^2))``, ``sigma = N/6``;
* SNID / SLNID (... with neuron importance discounting): the above times
  ``exp(-(alpha_i + alpha_j))`` (the paper, ``discount="sum"``) or
  ``exp(-max(alpha_i, alpha_j))`` (the authors' released code, ``discount="max"``),
  with ``alpha_i`` the importance of neuron ``i`` for the earlier tasks.

Normalisation, as in the paper and the authors' code: the mean over the M
samples of the batch (``H^T H / M``), summed over neuron pairs (not divided by
N), and summed over the regularised layers; the strategy multiplies the sum by
``lambda_SSL``.  Both discounts equal 1 for unimportant neurons and shrink the
penalty of pairs that involve an important neuron, so important neurons may keep
firing together; "sum" discounts a pair of two important neurons more strongly
(``e^{-a_i} e^{-a_j}`` against ``min(e^{-a_i}, e^{-a_j})``), and the two agree when
one of the two importances is zero.

The two baselines of the paper: L1-Rep (an L1 penalty on the activations) and
DeCov (Cogswell et al., 2016), which penalises the *centred* covariance.

:func:`neuron_importance` gives the :math:`\alpha_i` of the discounted forms; :class:`SSL` applies
any regulariser as a :class:`~clutils.strategies.Strategy`; compose it with a consolidation
penalty: ``Compose(MAS(0.1), SSL("slnid", 1e-3))``.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
from torch import Tensor, nn

from .streams import Stream
from ._checks import check_int
from .consolidation import check_lam
from .models import MLP, check_model
from .per_sample import active, check_choice, check_inputs, chunks, eval_mode, input_chunk, model_device
from .strategies import BufferDict, Strategy

__all__ = ["METHODS", "DISCOUNTS", "gaussian_neighbourhood", "importance_discount", "coactivation",
           "sni", "slni", "l1_rep", "decov", "l1_param", "neuron_importance", "mean_activation", "active_neurons", "SSL"]

METHODS = ("none", "l1", "decov", "sni", "slni", "snid", "slnid", "l1_param")
NEURON_IMPORTANCE_KINDS = ("per_sample", "batch")
DISCOUNTS = ("sum", "max")


def _check_h(h: Tensor) -> Tensor:
    if not isinstance(h, Tensor) or h.ndim != 2:
        shape = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
        raise ValueError(f"activations must be a 2-D tensor (samples x neurons), got {shape}; "
                         f"flatten each sample's activations first (h.flatten(1)).")
    if h.shape[0] == 0:
        raise ValueError("activations have zero samples; the regulariser is a mean over the batch.")
    return h


@functools.lru_cache(maxsize=64)
def _gaussian_cached(n: int, sigma: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    idx = torch.arange(n, device=device, dtype=torch.float64)
    if math.isinf(sigma):
        w = torch.ones(n, n, device=device, dtype=torch.float64)
    else:
        w = torch.exp(-(idx[:, None] - idx[None, :]) ** 2 / (2.0 * sigma ** 2))
    w.fill_diagonal_(0.0)
    return w.to(dtype)


def gaussian_neighbourhood(n: int, sigma: float | None = None, device: str | torch.device = "cpu",
                           dtype: torch.dtype = torch.float32) -> Tensor:
    r"""Lateral-inhibition weights ``W_ij = exp(-(i-j)^2 / (2 sigma^2))`` for ``i != j``, ``W_ii = 0``.

    ``sigma=None`` means ``n/6`` (the paper's choice); ``sigma=math.inf`` gives all ones off the
    diagonal (SNI).  The ``n x n`` matrix is computed once per ``(n, sigma, device, dtype)`` and
    cached on the device: treat it as read-only.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"the layer width n must be a positive integer, got {n!r}.")
    sigma = n / 6.0 if sigma is None else float(sigma)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0 (or math.inf for SNI), got {sigma}.")
    return _gaussian_cached(int(n), sigma, torch.device(device), dtype)


def importance_discount(alpha: Tensor, discount: str = "sum") -> Tensor:
    r"""Pairwise discount ``D_ij = exp(-(alpha_i + alpha_j))`` ("sum", paper) or ``exp(-max(alpha_i, alpha_j))`` ("max", authors' code)."""
    if discount not in DISCOUNTS:
        raise ValueError(f"unknown discount {discount!r}; choose 'sum' (the paper, exp(-(a_i+a_j))) "
                         f"or 'max' (the authors' code, exp(-max(a_i, a_j))).")
    if not isinstance(alpha, Tensor) or alpha.ndim != 1:
        raise ValueError(f"neuron importance alpha must be a 1-D tensor with one value per neuron, "
                         f"got {tuple(alpha.shape) if isinstance(alpha, Tensor) else type(alpha).__name__}.")
    if not bool(torch.isfinite(alpha).all()) or bool((alpha < 0).any()):
        raise ValueError("neuron importance alpha must be finite and >= 0 (it is a mean absolute gradient).")
    if discount == "sum":
        d = torch.exp(-alpha)
        return d[:, None] * d[None, :]
    return torch.exp(-torch.maximum(alpha[:, None], alpha[None, :]))


def _weights(n: int, sigma: float, alpha: Tensor | None, discount: str, like: Tensor) -> Tensor:
    """Full weight matrix W (zero diagonal) for a layer of width ``n``, on ``like``'s device and dtype."""
    w = gaussian_neighbourhood(n, sigma, like.device, like.dtype)
    if alpha is not None:
        if alpha.shape != (n,):
            raise ValueError(f"alpha has shape {tuple(alpha.shape)} but the layer has {n} neurons; "
                             f"give one importance per neuron.")
        w = w * importance_discount(alpha.to(device=like.device, dtype=like.dtype), discount)
        # exp(-(a_i + a_j)) underflows to subnormal numbers for important neurons (a ~ 50 and more);
        # a matrix product with subnormals runs ~50x slower on CPUs, and they weigh < 1e-38: make them 0.
        w = torch.where(w < torch.finfo(w.dtype).tiny, torch.zeros((), dtype=w.dtype, device=w.device), w)
    return w


class _Coactivation(torch.autograd.Function):
    """``c * sum_l <H_l W_l, H_l>`` with the gradient ``2 c H_l W_l`` (each ``W_l`` symmetric), reusing the forward products.

    All layers go through one call, so a training step pays the autograd bookkeeping once.
    """

    @staticmethod
    def forward(ctx, c: float, *hw_pairs: Tensor) -> Tensor:
        hs, ws = hw_pairs[0::2], hw_pairs[1::2]
        prods = [torch.mm(h, w) for h, w in zip(hs, ws)]
        ctx.save_for_backward(*prods)
        ctx.c = c
        out = torch.dot(prods[0].reshape(-1), hs[0].reshape(-1))
        for p, h in zip(prods[1:], hs[1:]):
            out = out + torch.dot(p.reshape(-1), h.reshape(-1))
        return out * c

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        k = grad * (2.0 * ctx.c)
        out: list[Tensor | None] = [None]
        for p in ctx.saved_tensors:
            out += [p * k, None]
        return tuple(out)


def _coactivation(hs: Sequence[Tensor], ws: Sequence[Tensor], c: float) -> Tensor:
    """Unchecked ``c * sum_l <H_l W_l, H_l>`` for symmetric, constant ``W_l`` (the training step's fast path)."""
    return _Coactivation.apply(c, *(t for pair in zip(hs, ws) for t in pair))


def coactivation(h: Tensor, w: Tensor) -> Tensor:
    r"""``R = (1/M) sum_m sum_{i,j} W_ij h_i^m h_j^m`` for a symmetric weight matrix ``W`` (zero diagonal for SNI-style penalties).

    Computed as ``<H W, H> / M``: one ``M x N x N`` product; the gradient ``dR/dH = 2 H W / M``
    reuses it, so the backward pass costs one elementwise product.  ``W`` is a constant (no
    gradient flows to it).
    """
    _check_h(h)
    if w.shape != (h.shape[1], h.shape[1]):
        raise ValueError(f"weights of shape {tuple(w.shape)} do not match {h.shape[1]} neurons.")
    if not torch.equal(w, w.t()):
        raise ValueError("the weight matrix must be symmetric (W_ij = W_ji); use (W + W.T) / 2.")
    return _coactivation([h], [w.detach()], 1.0 / h.shape[0])


def sni(h: Tensor, alpha: Tensor | None = None, discount: str = "sum") -> Tensor:
    r"""SNI (``alpha=None``) or SNID: ``R = (1/M) sum_m sum_{i != j} D_ij h_i^m h_j^m``, ``D_ij = exp(-(alpha_i+alpha_j))`` (or ``exp(-max)``)."""
    _check_h(h)
    return coactivation(h, _weights(h.shape[1], math.inf, alpha, discount, h))


def slni(h: Tensor, sigma: float | None = None, alpha: Tensor | None = None, discount: str = "sum") -> Tensor:
    r"""SLNI (``alpha=None``) or SLNID: ``R = (1/M) sum_m sum_{i != j} exp(-(i-j)^2/(2 sigma^2)) D_ij h_i^m h_j^m``, ``sigma = N/6`` by default."""
    _check_h(h)
    return coactivation(h, _weights(h.shape[1], sigma, alpha, discount, h))


def l1_rep(h: Tensor) -> Tensor:
    r"""L1-Rep: ``R = (1/M) sum_m sum_i |h_i^m|`` (mean over samples, sum over neurons)."""
    _check_h(h)
    return h.abs().sum() / h.shape[0]


def decov(h: Tensor) -> Tensor:
    r"""DeCov (Cogswell et al., 2016): ``R = 1/2 (||C||_F^2 - ||diag C||^2)``, ``C = (1/M) sum_m (h^m - mu)(h^m - mu)^T``."""
    _check_h(h)
    hc = h - h.mean(0, keepdim=True)
    c = torch.mm(hc.t(), hc) / h.shape[0]
    return 0.5 * (c.pow(2).sum() - torch.diagonal(c).pow(2).sum())


def l1_param(model: nn.Module) -> Tensor:
    r"""L1-Param: :math:`\sum_l \lVert W_l\rVert_1` over the weight matrices of the hidden layers (not the
    biases, not the output layer) -- sparse *parameters*, the baseline against which the paper tests its
    claim that sparse *representations* are what leaves room for later tasks."""
    ws = [p for p in check_model(model).shared_parameters() if p.ndim > 1]  # weights, not biases
    return sum(w.abs().sum() for w in ws)


def _check_importance_kind(kind: str, batch_size, what: str) -> None:
    """A known neuron importance kind; the "batch" kind needs ``batch_size`` (named ``what``), an integer >= 1."""
    check_choice(kind, NEURON_IMPORTANCE_KINDS, "neuron importance kind")
    if kind == "batch" and (batch_size is None or isinstance(batch_size, bool) or not isinstance(batch_size, int)
                            or batch_size < 1):
        raise ValueError(f"the 'batch' neuron importance is a statistic of mini-batches: pass {what}, an integer "
                         f">= 1 (the authors' code uses 200 on MNIST), got {batch_size!r}.")


def neuron_importance(model: nn.Module, x: Tensor, *, head: int = 0, n_active: int | None = None,
                      chunk_size: int = 1024, kind: str = "per_sample", batch_size: int | None = None) -> list[Tensor]:
    r"""Importance of every hidden neuron (SNID/SLNID, Aljundi et al., ICLR 2019).

    * ``"per_sample"`` (the paper), with ``h`` the post-ReLU activations
      (``model(x, head, return_hidden=True)``) and ``F`` the logits of head ``head`` (the first
      ``n_active`` of them):

      .. math::  \alpha_i = \frac{1}{N}\sum_{k=1}^{N}
                 \left|\frac{\partial \lVert F(x_k)\rVert_2^2}{\partial h_i(x_k)}\right|

      A neuron's activation on sample ``k`` only affects that sample's output, so one backward pass
      of ``sum_k ||F(x_k)||^2`` gives every per-sample derivative.
    * ``"batch"`` (the authors' released code, a backward hook on the ReLU): the derivative with
      respect to the pre-activation ``z_i`` (zero where the neuron is off), *summed* over a
      mini-batch ``b`` of ``batch_size`` inputs before the absolute value, summed over batches, over ``N``:

      .. math::  \alpha^{(B)}_i = \frac{1}{N}\sum_b\left|\sum_{k\in b}
                 \frac{\partial \lVert F(x_k)\rVert_2^2}{\partial z_i(x_k)}\right|

      Never larger than ``"per_sample"`` (the gate and the triangle inequality both shrink it).

    Returns one vector per hidden layer, ``[alpha_1, ..., alpha_L]`` (on the model's device).  A
    convolutional layer's neurons are its flattened units (channel x position), the same units the
    activation penalties regularise.
    """
    _check_importance_kind(kind, batch_size, "batch_size")
    if kind == "batch":
        chunk_size = batch_size  # one pass per mini-batch: the sum inside |.| runs over exactly that batch
    check_inputs(model, x, chunk_size, n_active)
    dev = model_device(model)
    sums: list[Tensor] | None = None
    with eval_mode(model):
        for sl in chunks(len(x), chunk_size):
            logits, hidden = model(input_chunk(x, sl, dev), head, return_hidden=True)
            if not hidden:
                raise ValueError("the model has no hidden layer, so it has no neuron importance.")
            grads = torch.autograd.grad(active(logits, n_active).square().sum(), hidden)
            # a convolutional layer's neurons are its flattened units (channel x position), as the penalty sees them
            grads, hidden = [g.flatten(1) for g in grads], [h.flatten(1) for h in hidden]
            if sums is None:
                sums = [torch.zeros(h.shape[1:], device=dev, dtype=h.dtype) for h in hidden]
            for s, g, h in zip(sums, grads, hidden):
                if kind == "batch":
                    s += (g * (h > 0)).sum(0).abs()  # through the ReLU's gate, then |sum over the batch|
                else:
                    s += g.abs().sum(0)
    return [s / len(x) for s in sums]


@torch.no_grad()
def mean_activation(model: nn.Module, x: Tensor, batch_size: int = 10_000) -> list[Tensor]:
    r"""Mean activation of every hidden neuron over the inputs ``x``: ``a_i = (1/M) sum_m h_i^m``, one tensor per layer."""
    was_training = model.training
    model.eval()
    sums = None
    for i in range(0, len(x), batch_size):
        hs = model.features(x[i:i + batch_size])
        s = [h.sum(0, dtype=torch.float64) for h in hs]
        sums = s if sums is None else [a + b for a, b in zip(sums, s)]
    model.train(was_training)
    return [s.div(len(x)).to(x.dtype) for s in sums]


def active_neurons(mean_act: Tensor, rel_tol: float = 0.05) -> Tensor:
    r"""Which neurons are *active*: ``a_i >= rel_tol * max_j a_j`` (a boolean mask); the others are free for later tasks."""
    if mean_act.ndim != 1:
        raise ValueError(f"give the mean activations of one layer (1-D), got shape {tuple(mean_act.shape)}.")
    if not 0 <= rel_tol < 1:
        raise ValueError(f"rel_tol must be in [0, 1), got {rel_tol}.")
    top = mean_act.max()
    if top <= 0:
        return torch.zeros_like(mean_act, dtype=torch.bool)
    return mean_act >= rel_tol * top


def _n_hidden(model: nn.Module) -> int:
    """How many hidden layers ``model`` exposes (an MLP's ``hidden``, else one probe through ``features``)."""
    model = check_model(model)
    if isinstance(model, MLP):
        return len(model.hidden)
    p = next(model.parameters(), None)
    with torch.no_grad(), eval_mode(model):  # eval mode, two inputs: BatchNorm needs more than one value per channel
        x = torch.zeros(2, model.in_features, device=p.device if p is not None else "cpu",
                        dtype=p.dtype if p is not None else torch.float32)
        return len(model.features(x))


class SSL(Strategy):
    r"""Selfless Sequential Learning: add ``lam * sum_layers R(h_l)`` to the loss at every step.

    Args:
        method: ``"l1"`` (L1-Rep), ``"decov"``, ``"sni"``, ``"slni"``, ``"snid"``, ``"slnid"``, or
            ``"none"`` (no regulariser; a named baseline).
        lam: ``lambda_SSL >= 0``.
        sigma_frac: ``sigma = sigma_frac * N`` for the local methods (``1/6`` in the paper).
        discount: ``"sum"`` (paper) or ``"max"`` (authors' code) for SNID / SLNID.
        layers: indices of the hidden layers to regularise (``None``: all of them).
        importance_samples: how many of each task's training inputs estimate the neuron
            importance (``None``: all).
        importance_kind: ``"per_sample"`` (the paper) or ``"batch"`` (the authors' code, with
            ``importance_batch_size``), see :func:`neuron_importance`.

    ``method="l1_param"`` is not a representation regulariser: it adds ``lam * sum_l |W_l|_1`` over
    the hidden layers' weights (:func:`l1_param`), the paper's sparse-*parameter* baseline.

    For SNID / SLNID, after every task the importance of each neuron on that task's training
    inputs, ``alpha_i = mean_x |d ||F(x)||^2 / d h_i|`` (:func:`neuron_importance`), is *added* to
    the importance accumulated so far (the buffers ``alpha.layer<l>``); during the first task
    ``alpha = 0`` and the penalty is plain SNI / SLNI.  The weight matrix of each layer is built
    once per task.
    """

    name = "ssl"

    def __init__(self, method: str = "slnid", lam: float = 1e-3, *, sigma_frac: float = 1 / 6,
                 discount: str = "sum", layers: Sequence[int] | None = None,
                 importance_samples: int | None = None, chunk_size: int = 1024,
                 importance_kind: str = "per_sample", importance_batch_size: int | None = None):
        super().__init__()
        key = str(method).lower().replace("-", "_")
        key = {"l1_rep": "l1", "l1rep": "l1", "no_reg": "none", "noreg": "none"}.get(key, key)
        if key not in METHODS:
            raise ValueError(f"unknown SSL method {method!r}; choose one of {', '.join(METHODS)}.")
        lam = check_lam(lam, "lam (lambda_SSL)")
        if not (isinstance(sigma_frac, (int, float)) and sigma_frac > 0):
            raise ValueError(f"sigma_frac must be > 0 (sigma = sigma_frac * layer width), got {sigma_frac!r}.")
        if discount not in DISCOUNTS:
            raise ValueError(f"unknown discount {discount!r}; choose 'sum' (paper) or 'max' (authors' code).")
        if layers is not None and (len(layers) == 0 or any(int(l) != l or l < 0 for l in layers)):
            raise ValueError(f"layers must be None (all hidden layers) or non-empty indices >= 0, got {layers!r}.")
        if importance_samples is not None:
            importance_samples = check_int(importance_samples, "importance_samples (None: all)", minimum=1)
        self.method, self.lam, self.sigma_frac, self.discount = key, float(lam), float(sigma_frac), discount
        self.layers = None if layers is None else [int(l) for l in layers]
        self.importance_samples, self.chunk_size = importance_samples, check_int(chunk_size, "chunk_size", minimum=1)
        _check_importance_kind(importance_kind, importance_batch_size, "importance_batch_size")
        self.importance_kind, self.importance_batch_size = importance_kind, importance_batch_size
        self.name = key
        self.alpha = BufferDict()  # accumulated neuron importance: "layer0", "layer1", ...
        self._w: dict[int, Tensor] = {}  # per-layer weight matrices, rebuilt when alpha changes

    @property
    def uses_importance(self) -> bool:
        return self.method in ("snid", "slnid")

    def before_task(self, model: nn.Module, stream: Stream, t: int) -> None:
        """Check, before the task trains, that the layers to regularise exist."""
        n_layers = _n_hidden(model)
        if n_layers == 0 and self.method != "none":
            raise ValueError(f"SSL regularises hidden activations but the model has no hidden layer "
                             f"({type(model).__name__} with hidden=()); give it at least one, e.g. "
                             f"MLP({model.in_features}, (100,), ...), or train without SSL.")
        self._layer_ids(n_layers)

    def _layer_ids(self, n_layers: int) -> list[int]:
        ids = list(range(n_layers)) if self.layers is None else self.layers
        bad = [l for l in ids if l >= n_layers]
        if bad:
            raise ValueError(f"SSL layers {bad} do not exist: the model has {n_layers} hidden layer(s) "
                             f"(indices 0..{n_layers - 1}).")
        return ids

    def pair_weights(self, l: int, h: Tensor) -> Tensor:
        """The (N, N) pair weights the penalty puts on layer ``l`` for activations ``h`` of N neurons: the
        Gaussian neighbourhood times the importance discount (kept until the importance changes)."""
        w = self._w.get(l)
        if w is None or w.device != h.device or w.dtype != h.dtype or w.shape[0] != h.shape[1]:
            n = h.shape[1]
            sigma = math.inf if self.method in ("sni", "snid") else self.sigma_frac * n
            alpha = self.alpha[f"layer{l}"] if (self.uses_importance and f"layer{l}" in self.alpha) else None
            w = _weights(n, sigma, alpha, self.discount, h)
            self._w[l] = w
        return w

    def _sum(self, hidden: list[Tensor], scale: float) -> Tensor | None:
        """``scale * sum_l R(h_l)`` over the regularised layers."""
        if self.method in ("none", "l1_param"):
            return None
        hs = [hidden[l].flatten(1) for l in self._layer_ids(len(hidden))]
        for h in hs:
            _check_h(h)
        if self.method == "l1":
            return scale * sum(l1_rep(h) for h in hs)
        if self.method == "decov":
            return scale * sum(decov(h) for h in hs)
        ws = [self.pair_weights(l, h) for l, h in zip(self._layer_ids(len(hidden)), hs)]
        return _coactivation(hs, ws, scale / hs[0].shape[0])

    def regulariser(self, hidden: list[Tensor]) -> Tensor | None:
        """``sum_l R(h_l)`` over the regularised layers (without ``lam``)."""
        return self._sum(hidden, 1.0)

    def penalty(self, model: nn.Module, t: int, hidden: list[Tensor]) -> Tensor | None:
        """``lam * sum_l R(h_l)``: the regulariser of the batch's hidden activations (L1-Param: of the weights)."""
        if self.method == "l1_param":
            return self.lam * l1_param(model)
        return self._sum(hidden, self.lam)

    @torch.no_grad()
    def after_task(self, model: nn.Module, stream: Stream, t: int) -> None:
        if not self.uses_importance:
            return
        x = stream[t].x_train
        if self.importance_samples is not None:
            x = x[: self.importance_samples]
        with torch.enable_grad():
            new = neuron_importance(model, x, head=stream.head_of(t), n_active=stream.active_outputs(t),
                                    chunk_size=self.chunk_size, kind=self.importance_kind,
                                    batch_size=self.importance_batch_size)
        for l, a in enumerate(new):
            key = f"layer{l}"
            self.alpha[key] = a.detach().clone() if key not in self.alpha else self.alpha[key] + a.detach()
        self._w.clear()

    def _apply(self, fn, *args, **kwargs):  # .to(device): rebuild the weight matrices from the moved alpha
        self._w.clear()
        return super()._apply(fn, *args, **kwargs)
