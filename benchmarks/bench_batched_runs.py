"""K runs trained at once in one process (stacked parameters, ``torch.func``) against K runs one after another.

A seed sweep trains K copies of the same small network (784-100-100-10, SGD, batch 128) on the
same data, each with its own initial weights and batch order.  At this size one step is launch- or
overhead-bound on a GPU, so stacking the K runs' parameters (``torch.func.stack_module_state``) and
taking every run's gradient in one ``vmap(grad(loss))`` call may turn K small steps into one large
one.  This script measures, for each K in ``--k``:

* ``sequential``: K models, each its own ``torch.optim.SGD``, stepped one after another;
* ``stacked``:    the same K runs, their parameters stacked, one vmapped gradient and one fused SGD
                  update (``torch._foreach_add_``) per step;

and prints the time per step of all K runs together, the speed-up (sequential / stacked), and the
largest difference between the two ways' parameters after the timed steps (the same arithmetic up to
float rounding, so ~1e-6, not 0).  On one CPU thread expect ~1x (each step is already compute-bound);
on a GPU, many times more for K >= 10 -- and if so, seed runs and sweeps should use it.

    CLUTILS_DATA=... python benchmarks/bench_batched_runs.py [--k 1 10 50] [--steps 100] [--device auto]
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, stack_module_state, vmap

import clutils as cl
from _data import mnist


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def batches(x: torch.Tensor, y: torch.Tensor, k: int, steps: int, batch: int, seed: int):
    """``steps`` index batches per run: (steps, k, batch), each run its own order."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(len(y), generator=g)[: steps * batch].view(steps, batch) for _ in range(k)], 1)
    return idx.to(x.device)


def sequential(models, x, y, idx, lr: float, device) -> float:
    opts = [torch.optim.SGD(m.parameters(), lr=lr) for m in models]
    _sync(device)
    t0 = time.perf_counter()
    for s in range(idx.shape[0]):
        for k, (m, opt) in enumerate(zip(models, opts)):
            b = idx[s, k]
            loss = F.cross_entropy(m(x[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    _sync(device)
    return time.perf_counter() - t0


def stacked(models, x, y, idx, lr: float, device) -> tuple[float, dict]:
    params, buffers = stack_module_state(models)
    params = {n: p.detach() for n, p in params.items()}
    skeleton = copy.deepcopy(models[0]).to("meta")

    def loss(p, b, xb, yb):
        return F.cross_entropy(functional_call(skeleton, (p, b), (xb,)), yb)

    step_grad = vmap(grad(loss))
    names = list(params)
    _sync(device)
    t0 = time.perf_counter()
    for s in range(idx.shape[0]):
        b = idx[s]  # (k, batch)
        g = step_grad(params, buffers, x[b], y[b])
        torch._foreach_add_([params[n] for n in names], [g[n] for n in names], alpha=-lr)
    _sync(device)
    return time.perf_counter() - t0, params


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, nargs="+", default=[1, 10, 50])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--synthetic", action="store_true", help="random tensors of MNIST's shapes (the times are the same)")
    args = ap.parse_args()
    device = cl.resolve_device(args.device)
    ds = mnist(device, args.synthetic)
    x, y = ds.x_train, ds.y_train
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}; MLP 784-100-100-10, "
          f"SGD lr {args.lr}, batch {args.batch}, {args.steps} timed steps per run")
    for k in args.k:
        torch.manual_seed(k)
        models = [cl.MLP(784, (100, 100), 10).to(device) for _ in range(k)]
        idx = batches(x, y, k, args.steps, args.batch, seed=k)
        warm = batches(x, y, k, 5, args.batch, seed=1000 + k)
        sequential([copy.deepcopy(m) for m in models], x, y, warm, args.lr, device)  # warm-up
        stacked([copy.deepcopy(m) for m in models], x, y, warm, args.lr, device)
        seq_models = [copy.deepcopy(m) for m in models]
        t_seq = sequential(seq_models, x, y, idx, args.lr, device)
        t_stk, p = stacked([copy.deepcopy(m) for m in models], x, y, idx, args.lr, device)
        diff = max((p[n][i] - dict(m.named_parameters())[n]).abs().max().item()
                   for i, m in enumerate(seq_models) for n in p)
        print(f"K={k:3d}: sequential {t_seq / args.steps * 1e3:8.3f} ms/step, stacked {t_stk / args.steps * 1e3:8.3f} "
              f"ms/step (all K runs), speed-up {t_seq / t_stk:6.2f}x; max |difference| of parameters {diff:.1e}")


if __name__ == "__main__":
    main()
