r"""Chapter 3: Memory Aware Synapses (Aljundi et al., ECCV 2018).

A parameter matters if changing it changes what the network *outputs*, whatever the label.
With :math:`F(x)` the network's output (the logits of the task's head), MAS measures the
sensitivity of its squared norm to every parameter, averaged over unlabelled inputs:

.. math:: \Omega_i = \frac1N\sum_{k=1}^N\left|\frac{\partial\lVert F(x_k)\rVert_2^2}{\partial\theta_i}\right| ,

accumulates it over tasks, :math:`\Omega\leftarrow\Omega+\Omega^{(t)}`, and trains the next task
with :math:`\mathcal L_B(\theta)+\lambda\sum_i\Omega_i(\theta_i-\theta^*_i)^2` (no 1/2).  Its local
(Hebbian) form, :math:`\Omega_{ij}=\frac1N\sum_k|y_i(x_k)\,y_j(x_k)|`, needs no gradient at all.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .consolidation import Consolidation, check_sampling, task_inputs
from .streams import Stream
from .models import MLP
from .per_sample import (active, batch_grad_sums, check_choice, check_inputs, chunks, eval_mode, model_device,
                         per_sample_sums, zeros_like_params)

__all__ = ["MAS_KINDS", "mas_importance", "hebbian_importance", "MAS"]

MAS_KINDS = ("per_sample", "batch")


def mas_importance(model: nn.Module, x: Tensor, *, kind: str = "per_sample", head: int = 0,
                   n_active: int | None = None, chunk_size: int = 1024, batch_size: int | None = None,
                   method: str = "auto") -> dict[str, Tensor]:
    r"""Memory Aware Synapses importance; needs no labels.

    * ``"per_sample"`` (the paper's definition), with ``F`` the first ``n_active`` logits of head ``head``:

      .. math:: \Omega = \frac1N\sum_{k=1}^N\left|\frac{\partial\lVert F(x_k)\rVert_2^2}{\partial\theta}\right|

      What it computes, written as a loop over samples::

          omega = [zeros_like(p) for p in params]
          for x_k in x:
              out = model(x_k[None], head)[0, :n_active]
              g = torch.autograd.grad(out.square().sum(), params)
              omega = [o + gi.abs() for o, gi in zip(omega, g)]
          omega = [o / N for o in omega]

      computed exactly without the loop (for a linear layer the per-sample weight gradient is
      :math:`\delta_k a_k^\top`, whose absolute value is :math:`|\delta_k||a_k|^\top`, so the sum is
      :math:`|\delta|^\top|a|`; see :mod:`clutils.per_sample`), ``chunk_size`` samples per pass.
    * ``"batch"`` (the batch-level shortcut of released implementations): the absolute value of
      the gradient of the squared norms *summed* over a mini-batch ``b`` of ``batch_size``
      samples, summed over batches and divided by ``N`` (implementations that average the norms
      over the batch instead get this divided by the batch size):

      .. math:: \Omega^{(B)} = \frac1N\sum_b\left|\sum_{k\in b}
                \frac{\partial\lVert F(x_k)\rVert_2^2}{\partial\theta}\right|

      For ``batch_size=1`` it equals ``"per_sample"``; by the triangle inequality it is never
      larger, and it shrinks as batches grow (signs cancel inside a batch).
    """
    check_choice(kind, MAS_KINDS, "MAS importance kind")
    if kind == "batch" and batch_size is None:
        raise ValueError("the 'batch' MAS importance is a statistic of mini-batches: pass batch_size "
                         "(the released code uses 200 on MNIST).")
    check_inputs(model, x, chunk_size, n_active)
    N = len(x)
    with eval_mode(model):
        if kind == "batch":
            def batch_loss(xb, sl):
                return active(model(xb, head), n_active).square().sum()
            sums = batch_grad_sums(model, x, batch_size, batch_loss, "abs")
        else:
            sums = per_sample_sums(model, x, head, n_active, chunk_size,
                                   lambda out, sl: (2 * out).unsqueeze(0), "abs", method)
    return {n: s / N for n, s in sums.items()}


def hebbian_importance(model: MLP, x: Tensor, *, head: int = 0, n_active: int | None = None,
                       chunk_size: int = 1024) -> dict[str, Tensor]:
    r"""Local (Hebbian) MAS importance (Aljundi et al., 2018, Sec. 4.2) of a :class:`~clutils.models.MLP`.

    For the layer from pre-synaptic activations :math:`y_i` (its input) to post-synaptic
    activations :math:`y_j` (its output after the ReLU; the logits for the output head):

    .. math:: \Omega_{ij} = \frac1N\sum_{k=1}^N |y_i(x_k)\,y_j(x_k)|
              = \frac1N\,(|Y_\text{post}|^\top |Y_\text{pre}|)_{ji}

    A bias is a synapse from a constant pre-synaptic unit :math:`y_i=1`, so
    :math:`\Omega_{\text{bias},j} = \frac1N\sum_k |y_j(x_k)|`.  Only head ``head`` is used (other
    heads get zeros); ``n_active`` keeps the first ``n_active`` output units.
    """
    check_inputs(model, x, chunk_size, n_active)
    if not isinstance(model, MLP):
        raise TypeError(f"hebbian_importance needs a clutils.MLP (it pairs each nn.Linear layer with its input and "
                        f"output activations), got {type(model).__name__}.")
    dev = model_device(model)
    ids = {id(p): n for n, p in model.named_parameters()}
    linears = [*model.layers, model.heads[head]]
    sums = zeros_like_params(model)
    with eval_mode(model), torch.no_grad():
        for sl in chunks(len(x), chunk_size):
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


class MAS(Consolidation):
    r"""Memory Aware Synapses: :math:`\Omega` from :func:`mas_importance` (or :func:`hebbian_importance`).

    ``kind``: ``"per_sample"`` (the paper's definition), ``"batch"`` (the released code's,
    a statistic of mini-batches of ``batch_size``), or ``"hebbian"``.  ``mode="online"`` (the
    paper's): :math:`\Omega` accumulates over tasks with the anchor at the latest parameters
    (:math:`\gamma=1`); ``mode="separate"`` keeps one quadratic per past task, as EWC does.  The
    paper's penalty is :math:`\lambda\sum_i\Omega_i(\theta_i-\theta^*_i)^2` without the 1/2, so
    ``MAS(lam)`` uses :math:`2\lambda` in the shared :math:`\frac\lambda2` form: ``lam`` is the paper's :math:`\lambda`.
    """

    name = "mas"
    KINDS = (*MAS_KINDS, "hebbian")

    def __init__(self, lam: float, *, kind: str = "per_sample", mode: str = "online", n_samples: int | None = None,
                 batch_size: int | None = None, chunk_size: int = 1024, seed: int = 0):
        check_choice(kind, self.KINDS, "MAS importance kind")
        check_sampling(n_samples, batch_size=batch_size, chunk_size=chunk_size)
        if kind == "batch" and batch_size is None:
            raise ValueError("MAS(kind='batch') needs batch_size: the importance is a statistic of mini-batches "
                             "of that size (the released code uses 200).")
        super().__init__(lam, mode=mode, gamma=1.0, lam_scale=2.0)
        self.kind, self.n_samples, self.batch_size, self.chunk_size, self.seed = (
            kind, n_samples, batch_size, chunk_size, int(seed))

    def importance(self, model: nn.Module, stream: Stream, t: int) -> dict[str, Tensor]:
        r""":math:`\Omega^{(t)}` on task ``t``'s training inputs (their labels are not used)."""
        x, _ = task_inputs(stream, t, self.n_samples, self.seed)
        kw = dict(head=stream.head_of(t), n_active=stream.active_outputs(t), chunk_size=self.chunk_size)
        if self.kind == "hebbian":
            return hebbian_importance(model, x, **kw)
        return mas_importance(model, x, kind=self.kind, batch_size=self.batch_size, **kw)
