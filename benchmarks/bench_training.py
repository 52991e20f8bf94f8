"""Throughput of clutils' trainer against a minimal hand-written PyTorch loop, on the same tensors.

Naive fine-tuning on permuted MNIST (10 tasks, MLP 784-100-100-10, batch 128, SGD, one epoch per
task).  Prints samples/s for both, their ratio (target >= 0.9), and the time to evaluate all ten
test sets after a task (target <= 0.5 s).  Run with nothing else heavy on the machine:

    CLUTILS_DATA=/path/to/data python benchmarks/bench_training.py [--tasks 10] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import clutils as cl


def hand_loop(stream, device, seed: int, batch_size: int = 128, lr: float = 0.01) -> float:
    """The loop every tutorial writes: shuffle, slice, forward, loss, backward, step. Returns seconds."""
    torch.manual_seed(seed)
    model = cl.MLP(784, (100, 100), 10).to(device)
    t0 = time.perf_counter()
    for task in stream:
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        x, y = task.x_train, task.y_train
        order = torch.randperm(len(y)).to(device)
        for i in range(0, len(y), batch_size):
            idx = order[i:i + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def clutils_run(stream, device, seed: int, batch_size: int = 128, lr: float = 0.01):
    cl.seed_everything(seed)
    model = cl.MLP(784, (100, 100), 10)
    res = cl.train_stream(model, stream, cfg=cl.TrainConfig(epochs=1, batch_size=batch_size, lr=lr, seed=seed),
                          device=device, progress=False)
    return sum(res.timings["train_s"]), res.timings["eval_s"], res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = cl.resolve_device(args.device)
    stream = cl.make_stream("permuted", "mnist", n_tasks=args.tasks, device=device)
    n = sum(t.n_train for t in stream)
    print(f"device {device}, threads {torch.get_num_threads()}, {args.tasks} tasks, {n} training samples per run")
    clutils_run(stream, device, 0)  # warm-up (allocator, kernels)
    hand, ours, evals = [], [], []
    for r in range(args.repeats):  # interleaved, so drifts of the machine hit both alike
        hand.append(hand_loop(stream, device, r))
        t, e, _ = clutils_run(stream, device, r)
        ours.append(t)
        evals += e
    h, o = statistics.median(hand), statistics.median(ours)
    print(f"hand-written loop : {n / h:10.0f} samples/s  ({h:.2f} s per run)")
    print(f"clutils trainer   : {n / o:10.0f} samples/s  ({o:.2f} s per run)")
    print(f"ratio clutils/hand: {h / o:.3f}  (target >= 0.9)")
    print(f"evaluate all {args.tasks} test sets after a task: median {statistics.median(evals):.3f} s, "
          f"max {max(evals):.3f} s  (target <= 0.5 s)")


if __name__ == "__main__":
    main()
