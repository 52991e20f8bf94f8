r"""Chapter 2: Elastic Weight Consolidation (Kirkpatrick et al., 2017).

Bayes' rule over tasks, :math:`\log p(\theta|A,B)=\log p(B|\theta)+\log p(\theta|A)-\log p(B|A)`,
with the posterior after task A approximated by a Gaussian around its optimum :math:`\theta^*`
(the Laplace approximation) whose precision is the Fisher information :math:`F`, gives the
penalty of training task B:

.. math:: \mathcal{L}(\theta) = \mathcal{L}_B(\theta) + \sum_i \frac{\lambda}{2} F_i\,(\theta_i-\theta^*_i)^2 .

:func:`fisher_diagonal` estimates :math:`F` (four ways); :class:`EWC` is the strategy, with the
quadratic penalty of :mod:`clutils.consolidation` in its ``"separate"`` (one penalty per past
task) or ``"online"`` (Schwarz et al., 2018) form.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .consolidation import Consolidation, check_sampling, task_inputs
from . import seeds
from .streams import Stream
from .per_sample import (active, batch_grad_sums, check_choice, check_inputs, eval_mode, model_device,
                         per_sample_sums)

__all__ = ["FISHER_KINDS", "fisher_diagonal", "EWC"]

FISHER_KINDS = ("true", "sampled", "empirical", "batched", "predicted")


def fisher_diagonal(model: nn.Module, x: Tensor, y: Tensor | None = None, *, kind: str = "true", head: int = 0,
                    n_active: int | None = None, chunk_size: int = 1024, batch_size: int | None = None,
                    generator: torch.Generator | None = None,
                    method: str = "auto") -> dict[str, Tensor]:
    r"""Diagonal of the Fisher information of ``p(y|x; theta)`` (the EWC importance).

    With ``p(c|x_n)`` the softmax of the first ``n_active`` logits of head ``head``:

    * ``"true"``       :math:`F=\frac1N\sum_n\sum_c p(c|x_n)\,(\partial_\theta\log p(c|x_n))^2`
      (expectation under the model's own predictive distribution);
    * ``"sampled"``    :math:`F=\frac1N\sum_n(\partial_\theta\log p(\hat y_n|x_n))^2`,
      :math:`\hat y_n\sim p(\cdot|x_n)` drawn with ``generator`` (a CPU generator; the
      uniforms are drawn on the CPU, so a seed gives the same labels on every device
      and for every ``chunk_size``; ``None`` draws from PyTorch's global generator);
    * ``"empirical"``  the same with the true labels ``y``;
    * ``"predicted"``  the same with the model's most probable label :math:`\arg\max_c p(c|x_n)` (the
      estimator of Hsu et al.'s code, GT-RIPL/Continual-Learning-Benchmark; it equals the true Fisher
      only where the model is certain, and leaves out every other class's term);
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

    What the exact kinds compute, written as a loop over samples (``params`` the model's
    parameters, ``y_n`` the true label for ``"empirical"``, a draw from ``p`` for ``"sampled"``, the
    arg-max of ``p`` for ``"predicted"``)::

        F = [zeros_like(p) for p in params]
        for x_n, y_n in zip(x, y):
            logp = log_softmax(model(x_n[None], head)[0, :n_active])
            if kind == "true":
                for c in range(len(logp)):
                    g = torch.autograd.grad(logp[c], params, retain_graph=True)
                    F = [f + logp[c].exp() * gi ** 2 for f, gi in zip(F, g)]
            else:
                g = torch.autograd.grad(logp[y_n], params)
                F = [f + gi ** 2 for f, gi in zip(F, g)]
        F = [f / N for f in F]

    All but ``"batched"`` are computed that exactly but without the loop (:mod:`clutils.per_sample`;
    ``method`` picks ``"linear"``, ``"func"`` or ``"auto"``), ``chunk_size`` samples per pass.
    Returns a dict keyed like ``model.named_parameters()``; parameters that do not reach head
    ``head`` (other tasks' heads) get zeros.
    """
    check_choice(kind, FISHER_KINDS, "Fisher estimator kind")
    if kind in ("empirical", "batched") and y is None:
        raise ValueError(f"the {kind!r} Fisher uses the true labels: pass y (or use kind='true' or 'sampled').")
    if kind == "batched" and batch_size is None:
        raise ValueError("the 'batched' Fisher is a statistic of mini-batches: pass batch_size (e.g. the training "
                         "batch size, 128).")
    check_inputs(model, x, chunk_size, n_active, y if kind in ("empirical", "batched") else None)
    dev = model_device(model)
    N = len(x)
    with eval_mode(model):
        if kind == "batched":
            def batch_loss(xb, sl):
                return F.cross_entropy(active(model(xb, head), n_active), y[sl].to(dev))
            sums = batch_grad_sums(model, x, batch_size, batch_loss, "sq")
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
                elif kind == "predicted":
                    lab = p.argmax(1)
                else:
                    lab = y[sl].to(p.device)
                return (p - F.one_hot(lab, p.shape[1]).to(p.dtype)).to(out.dtype).unsqueeze(0)  # d CE / d logits

            sums = per_sample_sums(model, x, head, n_active, chunk_size, make_G, "sq", method)
    return {n: s / N for n, s in sums.items()}


class EWC(Consolidation):
    r"""Elastic Weight Consolidation: :math:`\Omega` = the Fisher diagonal of :func:`fisher_diagonal`.

    Penalty :math:`\frac\lambda2\sum_i F_i(\theta_i-\theta^*_i)^2` (the paper's convention).

    Args:
        lam: :math:`\lambda`.
        fisher: ``"true"``, ``"sampled"``, ``"empirical"``, ``"batched"`` or ``"predicted"`` (the arg-max label).
        mode, gamma: ``"separate"``, or ``"online"`` with decay :math:`\gamma` (online EWC).
        n_samples: compute the Fisher on a seeded subsample of the task's training inputs.
        batch_size: the mini-batch size of the ``"batched"`` estimator (a statistic: it changes the result).
        chunk_size: samples per forward pass of the exact estimators (memory only).
        seed: seeds the subsample and the labels of ``"sampled"``.
    """

    name = "ewc"

    def __init__(self, lam: float, *, fisher: str = "true", mode: str = "separate", gamma: float = 1.0,
                 n_samples: int | None = None, batch_size: int | None = None, chunk_size: int = 1024,
                 seed: int = 0):
        check_choice(fisher, FISHER_KINDS, "Fisher estimator")
        check_sampling(n_samples, batch_size=batch_size, chunk_size=chunk_size)
        if fisher == "batched" and batch_size is None:
            raise ValueError("EWC(fisher='batched') needs batch_size: the estimator is a statistic of mini-batches "
                             "of that size (e.g. the training batch size).")
        super().__init__(lam, mode=mode, gamma=gamma)
        self.fisher, self.n_samples, self.batch_size, self.chunk_size, self.seed = (
            fisher, n_samples, batch_size, chunk_size, int(seed))

    def importance(self, model: nn.Module, stream: Stream, t: int) -> dict[str, Tensor]:
        """:math:`F^{(t)}`: the Fisher diagonal on task ``t``'s training inputs, through its own head."""
        x, y = task_inputs(stream, t, self.n_samples, self.seed)
        gen = seeds.generator(seeds.label_sampling_seed(self.seed, t))
        return fisher_diagonal(model, x, y, kind=self.fisher, head=stream.head_of(t),
                               n_active=stream.active_outputs(t), chunk_size=self.chunk_size,
                               batch_size=self.batch_size, generator=gen)
