"""A whole continual-learning run side by side: a hand-written PyTorch loop, clutils, and Avalanche.

The same run three ways, in one process, on the same data: permuted MNIST (10 tasks by default),
MLP 784-100-100-10, SGD (lr 0.1), batch 128, one epoch per task, and after every task an evaluation
of every task's test set (the accuracy matrix R).

* ``hand``     the loop every tutorial writes, on materialised tensors (one permuted copy of the
               images per task, built before the clock starts): shuffle, slice, step; then
               ``model(x_test)`` on each test set under ``torch.inference_mode``.
* ``clutils``  ``clutils.train_stream`` on a lazy permuted stream (images once, one permutation per
               task): what the book runs.
* ``avalanche``  Avalanche's ``Naive`` strategy with its default evaluation plugin on the same
               tensors (only when ``avalanche-lib`` is installed: ``pip install avalanche-lib``; never a
               dependency of the book).

Prints, per variant, the median over ``--repeats`` interleaved repeats of the training time and of
the evaluation time (all evaluations of the run together), and the ratios to the hand loop.  Targets
(issue 25): clutils' training <= 1.05x and evaluation <= 1.2x the hand loop.  Run with nothing else
heavy on the machine:

    CLUTILS_DATA=/path/to/data OMP_NUM_THREADS=1 python benchmarks/bench_whole_run.py [--tasks 10] [--repeats 3]
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import torch
import torch.nn.functional as F

import clutils as cl
from _data import mnist


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def hand(tasks: list[tuple], device: torch.device, seed: int, lr: float, batch: int) -> tuple[float, float]:
    """Train and evaluate on materialised ``(x_train, y_train, x_test, y_test)`` tensors; (train s, eval s)."""
    torch.manual_seed(seed)
    model = cl.MLP(784, (100, 100), 10).to(device)
    train_s = eval_s = 0.0
    for x, y, _, _ in tasks:
        _sync(device)
        t0 = time.perf_counter()
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        order = torch.randperm(len(y), device=device)
        for i in range(0, len(y), batch):
            idx = order[i:i + batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(device)
        t1 = time.perf_counter()
        with torch.inference_mode():
            model.eval()
            accs = [(model(xt).argmax(1) == yt).float().mean() for _, _, xt, yt in tasks]
            torch.stack(accs).cpu()
            model.train()
        t2 = time.perf_counter()
        train_s, eval_s = train_s + t1 - t0, eval_s + t2 - t1
    return train_s, eval_s


def ours(stream: cl.Stream, device: torch.device, seed: int, lr: float, batch: int) -> tuple[float, float]:
    cl.seed_everything(seed)
    model = cl.MLP(784, (100, 100), 10)
    res = cl.train_stream(model, stream, cfg=cl.TrainConfig(epochs=1, batch_size=batch, lr=lr, seed=seed),
                          device=device, progress=False)
    return sum(res.timings["train_s"]), sum(res.timings["eval_s"])


def avalanche(tasks: list[tuple], device: torch.device, seed: int, lr: float, batch: int) -> tuple[float, float]:
    """Avalanche's Naive strategy on the same tensors (its default loggers off, its evaluation on)."""
    from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
    from avalanche.benchmarks.utils.classification_dataset import _make_taskaware_tensor_classification_dataset
    from avalanche.training.supervised import Naive
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.evaluation.metrics import accuracy_metrics

    def ds(x, y):  # Avalanche's own wrapper of tensors (task label 0)
        return _make_taskaware_tensor_classification_dataset(x.cpu(), y.cpu(), task_labels=0)

    bm = benchmark_from_datasets(train=[ds(x, y) for x, y, _, _ in tasks], test=[ds(xt, yt) for _, _, xt, yt in tasks])
    torch.manual_seed(seed)
    model = cl.MLP(784, (100, 100), 10).to(device)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=lr),
                     criterion=torch.nn.CrossEntropyLoss(), train_mb_size=batch, train_epochs=1,
                     eval_mb_size=10_000, device=device,
                     evaluator=EvaluationPlugin(accuracy_metrics(experience=True), loggers=[]))
    train_s = eval_s = 0.0
    for exp in bm.train_stream:
        t0 = time.perf_counter()
        strategy.train(exp)
        t1 = time.perf_counter()
        strategy.eval(bm.test_stream)
        t2 = time.perf_counter()
        train_s, eval_s = train_s + t1 - t0, eval_s + t2 - t1
    return train_s, eval_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--synthetic", action="store_true", help="random tensors of MNIST's shapes (the times are the same)")
    ap.add_argument("--no-avalanche", action="store_true", help="skip Avalanche even when it is installed")
    args = ap.parse_args()
    device = cl.resolve_device(args.device)
    stream = cl.make_stream("permuted", mnist(device, args.synthetic), n_tasks=args.tasks)
    tasks = [(t.x_train.clone(), t.y_train.clone(), t.x_test.clone(), t.y_test.clone()) for t in stream]
    variants = {"hand": lambda s: hand(tasks, device, s, args.lr, args.batch),
                "clutils": lambda s: ours(stream, device, s, args.lr, args.batch)}
    if not args.no_avalanche and importlib.util.find_spec("avalanche") is not None:
        variants["avalanche"] = lambda s: avalanche(tasks, device, s, args.lr, args.batch)
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}; permuted MNIST, "
          f"{args.tasks} tasks, MLP 784-100-100-10, SGD lr {args.lr}, batch {args.batch}, one epoch per task, "
          f"{args.repeats} interleaved repeats" + ("" if "avalanche" in variants else "; Avalanche not installed"))
    for run in variants.values():  # warm-up: allocator, kernels, the lazy stream's first permutations
        run(100)
    times = {k: ([], []) for k in variants}
    for r in range(args.repeats):
        for k, run in variants.items():
            tr, ev = run(r)
            times[k][0].append(tr)
            times[k][1].append(ev)
    med = {k: (statistics.median(a), statistics.median(b)) for k, (a, b) in times.items()}
    h_tr, h_ev = med["hand"]
    for k, (tr, ev) in med.items():
        print(f"{k:>10}: train {tr:7.2f} s ({tr / h_tr:5.2f}x hand)   evaluation {ev:7.2f} s ({ev / h_ev:5.2f}x hand)")


if __name__ == "__main__":
    main()
