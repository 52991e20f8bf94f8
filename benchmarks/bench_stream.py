"""Memory and speed of lazily permuted streams (images once + one permutation per task).

1. Memory: build a 100-task permuted MNIST stream and report the bytes of the distinct tensor
   storages it holds beyond the dataset's own tensors (target < 100 MB; one permuted copy per
   task, the old form, would hold 100 x 70000 x 784 x 4 B = 20.4 GiB), plus the process's
   resident-memory growth.
2. Speed: the same naive run (MLP 784-100-100-10, batch 128, SGD, one epoch per task) on a
   lazy stream and on the materialised form of the same stream, interleaved, in this one process.
   Reports the median time per training step of each and their ratio (target <= 1.05), the
   whole run's wall time (permuting on read and evaluation included), and checks that both give
   the same accuracy matrix bit for bit.  The steps cost the same (the trainer indexes a plain tensor
   either way); the whole run pays for permuting each task's training set once when it is read and
   each test set at every evaluation (about 0.13 s and 0.02 s for MNIST on one CPU thread).

Measured (2-core shared CPU, 1 thread, 3 tasks, 5 repeats): 100-task stream adds 0.60 MB (20.4 GiB
before); step 1.183 vs 1.163 ms (ratio 1.017); whole run 2.49 vs 1.90 s (1.31x, one epoch per task).

Run with nothing else heavy on the machine:

    CLUTILS_DATA=/path/to/data OMP_NUM_THREADS=1 python benchmarks/bench_stream.py [--tasks 3] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import clutils as cl


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def materialised(stream: cl.Stream) -> cl.Stream:
    """One permuted copy of the images per task (the form before lazy streams)."""
    tasks = [cl.Task(t.id, t.name, t.x_train.clone(), t.y_train.clone(), t.x_test.clone(), t.y_test.clone(), t.classes)
             for t in stream]
    return cl.Stream(stream.name, stream.scenario, tasks, stream.n_features, stream.n_outputs, stream.n_heads,
                     dict(stream.description))


def run(stream: cl.Stream, device: torch.device, seed: int = 0) -> tuple[float, float, cl.RunResult]:
    cl.seed_everything(seed)
    model = cl.MLP(stream.n_features, (100, 100), stream.n_outputs)
    cfg = cl.TrainConfig(epochs=1, batch_size=128, lr=0.01, seed=seed)
    t0 = time.perf_counter()
    res = cl.train_stream(model, stream, cfg=cfg, device=device, progress=False)
    wall = time.perf_counter() - t0
    steps = sum(-(-t.n_train // cfg.batch_size) for t in stream)
    return sum(res.timings["train_s"]) / steps, wall, res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--build-tasks", type=int, default=100)
    ap.add_argument("--tasks", type=int, default=3, help="tasks of the timed runs")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = cl.resolve_device(args.device)

    ds = cl.load_dataset(args.dataset)
    base = sum(x.untyped_storage().nbytes() for x in (ds.x_train, ds.y_train, ds.x_test, ds.y_test))
    r0 = rss_mb()
    t0 = time.perf_counter()
    big = cl.permuted(ds, n_tasks=args.build_tasks)
    build_s = time.perf_counter() - t0
    added = big.storage_bytes() - base
    old = args.build_tasks * (ds.x_train.numel() + ds.x_test.numel()) * 4
    print(f"{args.build_tasks}-task permuted {args.dataset}: built in {build_s:.3f} s, adds {added / 2**20:.2f} MB "
          f"of tensor storage beyond the dataset ({base / 2**20:.0f} MB), RSS {rss_mb() - r0:+.1f} MB; "
          f"one copy per task would hold {old / 2**30:.1f} GiB")
    t0 = time.perf_counter()
    cl.evaluate(cl.MLP(ds.n_features, (100, 100), big.n_outputs), big, len(big) - 1)
    memo = big[0]._memo
    scratch = sum(o.numel() * o.element_size() for _, _, o in memo.scratch.values())
    print(f"evaluating all {len(big)} test sets once: {time.perf_counter() - t0:.2f} s; the evaluation copies kept "
          f"hold {memo.used() / 2**20:.0f} MB (budget {memo.budget / 2**20:.0f} MB) + one reused buffer of "
          f"{scratch / 2**20:.0f} MB, whatever the number of tasks")
    del big

    lazy = cl.permuted(ds, n_tasks=args.tasks)
    mat = materialised(lazy)
    print(f"device {device}, threads {torch.get_num_threads()}, {args.tasks} tasks x {lazy[0].n_train} samples, "
          f"MLP {ds.n_features}-100-100-{lazy.n_outputs}, batch 128, {args.repeats} repeats interleaved")
    run(lazy, device)  # warm-up
    step = {"lazy": [], "materialised": []}
    wall = {"lazy": [], "materialised": []}
    results = {}
    for _ in range(args.repeats):
        for name, s in (("lazy", lazy), ("materialised", mat)):
            st, w, res = run(s, device)
            step[name].append(st)
            wall[name].append(w)
            results[name] = res
    same = np.array_equal(results["lazy"].R, results["materialised"].R)
    for name in step:
        print(f"{name:>12}: step median {statistics.median(step[name]) * 1e3:.3f} ms "
              f"(min {min(step[name]) * 1e3:.3f}), whole run median {statistics.median(wall[name]):.2f} s")
    ratio = statistics.median(step["lazy"]) / statistics.median(step["materialised"])
    wratio = statistics.median(wall["lazy"]) / statistics.median(wall["materialised"])
    print(f"step time lazy / materialised: {ratio:.3f} (target <= 1.05); whole run {wratio:.3f}; "
          f"accuracy matrices identical: {same}")


if __name__ == "__main__":
    main()
