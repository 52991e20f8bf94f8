"""How long do the exact per-sample importance estimators take, compared with one training epoch?

On real MNIST (60,000 training images; set ``$CLUTILS_DATA`` or pass ``--root``):

* MLP 784-100-100-10: one epoch of ``train_stream`` (batch 128, SGD) vs the exact
  per-sample empirical and true Fisher diagonals over the 60,000 images
  (targets: empirical <= 2x the epoch, true <= 12x), plus the sampled and the
  batched (mini-batch-squared) Fisher for comparison;
* MLP 784-256-256 with a 2-way head (as in the MAS paper's split MNIST): one epoch
  at batch 200 vs per-sample MAS over the 60,000 images (target <= 2x), plus the
  batch and Hebbian variants;
* the cost of the penalty at every step: an epoch of the second task of a 2-task
  permuted MNIST with Naive, EWC (separate, online) and MAS.

Each time is the best of ``--repeat`` runs.  Run it alone (it uses every core):

    CLUTILS_DATA=/path/to/data flock /tmp/clbook-heavy.lock python benchmarks/bench_importance.py
"""
from __future__ import annotations

import argparse
import time

import torch

import clutils
from _data import mnist
from clutils.streams import Stream, Task
from clutils import fisher_diagonal, hebbian_importance, mas_importance


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn, dev, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        _sync(dev)
        t0 = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - t0)
    return min(times)


def epoch_time(make_model, stream, batch_size, dev, repeat) -> float:
    def one():
        clutils.seed_everything(0)
        cfg = clutils.TrainConfig(epochs=1, batch_size=batch_size, lr=0.01, optimizer="sgd")
        return clutils.train_stream(make_model(), stream, clutils.Naive(), cfg, device=dev, progress=False)

    return min(one().timings["train_s"][0] for _ in range(repeat))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=None, help="data folder (default: $CLUTILS_DATA)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--chunk-size", type=int, default=1024, help="samples per pass of the exact estimators (memory)")
    args = ap.parse_args()
    dev = clutils.resolve_device(args.device)
    ds = mnist(dev, root=args.root)
    print(f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{len(ds.y_train)} training images, best of {args.repeat}")

    # ---- 784-100-100-10, ten classes
    stream10 = clutils.permuted(ds, n_tasks=1, first_unpermuted=True)
    x, y = stream10[0].x_train, stream10[0].y_train
    ep = epoch_time(lambda: clutils.MLP(784, (100, 100), 10), stream10, 128, dev, args.repeat)
    clutils.seed_everything(0)
    model = clutils.MLP(784, (100, 100), 10).to(dev)
    bs = args.chunk_size
    rows = [("epoch, batch 128 (train_stream, SGD)", ep, None)]
    for label, kw, target in [
        ("Fisher empirical (exact per-sample)", dict(kind="empirical"), 2),
        ("Fisher true (exact per-sample, 10 classes)", dict(kind="true"), 12),
        ("Fisher sampled (exact per-sample)", dict(kind="sampled", generator=torch.Generator().manual_seed(0)), None),
        ("Fisher batched, batch 128 (biased)", dict(kind="batched", batch_size=128), None),
        ("Fisher batched, batch 1024 (biased)", dict(kind="batched", batch_size=1024), None),
    ]:
        kw = {"chunk_size": bs, **kw}
        t = best_time(lambda: fisher_diagonal(model, x, y, **kw), dev, args.repeat)
        rows.append((label, t, target))
    _report("MLP 784-100-100-10 on 60,000 MNIST images", rows)

    # ---- 784-256-256-2 (MAS paper's split-MNIST network), 2-way head
    task = Task(0, "even/odd", x, y % 2, stream10[0].x_test, stream10[0].y_test % 2, tuple(range(10)))
    stream2 = Stream("mnist-2way", "domain", [task], 784, 2, 1, {"stream": "mnist-2way"})
    ep2 = epoch_time(lambda: clutils.MLP(784, (256, 256), 2), stream2, 200, dev, args.repeat)
    clutils.seed_everything(0)
    model2 = clutils.MLP(784, (256, 256), 2).to(dev)
    rows = [("epoch, batch 200 (train_stream, SGD)", ep2, None)]
    for label, fn, target in [
        ("MAS per-sample (exact, the paper's)", lambda: mas_importance(model2, x, chunk_size=bs), 2),
        ("MAS batch, batch 200 (released code's)", lambda: mas_importance(model2, x, kind="batch", batch_size=200), None),
        ("MAS Hebbian (local)", lambda: hebbian_importance(model2, x, chunk_size=bs), None),
    ]:
        rows.append((label, best_time(fn, dev, args.repeat), target))
    _report("MLP 784-256-256-2 on 60,000 MNIST images", rows)

    # ---- what the penalty costs at every step: epoch of task 2 of a 2-task permuted MNIST, after consolidation
    stream = clutils.permuted(ds, n_tasks=2, seed=0)
    rows = []
    for label, make in [("Naive", clutils.Naive), ("EWC separate (true Fisher)", lambda: clutils.EWC(100.0)),
                        ("EWC online", lambda: clutils.EWC(100.0, mode="online", gamma=0.9)),
                        ("MAS", lambda: clutils.MAS(1.0))]:
        def second_epoch():
            clutils.seed_everything(0)
            cfg = clutils.TrainConfig(epochs=1, batch_size=128, lr=0.01)
            res = clutils.train_stream(clutils.MLP(784, (100, 100), 10), stream, make(), cfg, device=dev, progress=False)
            return res.timings["train_s"][1]
        rows.append((f"task-2 epoch, {label}", min(second_epoch() for _ in range(args.repeat)), None))
    _report("Penalty overhead, MLP 784-100-100-10, batch 128 (ratio to the Naive epoch)", rows)


def _report(title: str, rows) -> None:
    print(f"\n{title}")
    epoch = rows[0][1]
    for label, t, target in rows:
        ratio = t / epoch
        goal = "" if target is None else f"  target <= {target}x: {'met' if ratio <= target else 'MISSED'}"
        print(f"  {label:<44s} {t:7.3f} s  {ratio:5.2f}x epoch{goal}")


if __name__ == "__main__":
    main()
