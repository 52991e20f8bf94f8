"""Cost of a strategy's training step against the plain step, in the same run.

One ``clutils.train_step`` (forward with the hidden activations, cross-entropy, the strategy's
penalties, backward, optimiser step) per variant, on the same batches, timed in interleaved rounds
so that drifts of the machine hit all variants alike:

* ``plain``        no penalty (``Naive``);
* ``ewc-separate`` EWC after ``--tasks`` consolidated tasks (one merged quadratic per parameter);
* ``ewc-online``   online EWC;
* ``mas``          MAS;
* ``slnid``        SLNID on both hidden layers (importance discount in place);
* ``mas+slnid``    both.

Prints the median time per step and the ratio to ``plain``; targets: a consolidation step (EWC or
MAS, any number of tasks) <= 1.15x plain for 784-100-100-10 at batch 128 (the default here).
Inputs are random images (a dense step's time does not depend on pixel values).  ``--flush-denormal``
treats subnormal floats as zero (SLNID drives activations towards zero; on CPUs subnormal
arithmetic is slow).  Run with nothing else heavy on the machine:

    python benchmarks/bench_step.py [--hidden 100 100] [--batch 128] [--tasks 5] [--rounds 30] [--device auto]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import clutils as cl

VARIANTS = {
    "plain": lambda: cl.Naive(),
    "ewc-separate": lambda: cl.EWC(10.0, n_samples=2000),
    "ewc-online": lambda: cl.EWC(10.0, mode="online", gamma=0.9, n_samples=2000),
    "mas": lambda: cl.MAS(0.1, n_samples=2000),
    "slnid": lambda: cl.SSL("slnid", 1e-3, importance_samples=2000),
    "mas+slnid": lambda: cl.Compose(cl.MAS(0.1, n_samples=2000), cl.SSL("slnid", 1e-3, importance_samples=2000)),
}


def prepared(name: str, model: torch.nn.Module, stream: cl.Stream, tasks: int) -> cl.Strategy:
    """The variant's strategy as it is after ``tasks`` tasks (importances and anchors in place)."""
    strategy = VARIANTS[name]().to(stream[0].x_train.device)
    for t in range(tasks):
        with torch.no_grad():
            for p in model.parameters():  # a little movement between tasks, so anchors differ
                p.add_(1e-3 * torch.randn_like(p))
        strategy.after_task(model, stream, t)
    return strategy


def time_steps(model, strategy, opt, x, y, n: int, batch: int, device) -> float:
    """Seconds per ``train_step`` over ``n`` steps (one sync at the end), as ``train_stream`` calls it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for k in range(n):
        i = (k * batch) % (len(y) - batch)
        cl.train_step(model, opt, strategy, x[i:i + batch], y[i:i + batch], head=0, n_active=10, t=1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, nargs="+", default=[100, 100])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--tasks", type=int, default=5, help="tasks consolidated before timing")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--flush-denormal", action="store_true")
    ap.add_argument("--json", help="also write the medians here")
    args = ap.parse_args()
    device = cl.resolve_device(args.device)
    torch.set_flush_denormal(args.flush_denormal)
    g = torch.Generator().manual_seed(0)
    x28 = torch.rand(20_000, 784, generator=g).to(device)
    y = torch.randint(0, 10, (20_000,), generator=g).to(device)
    # the importance pass needs a stream: tasks of random images (only their inputs matter here)
    stream = cl.Stream("random", "domain", [cl.Task(t, f"r{t}", x28[:4000], y[:4000], x28[:100], y[:100], tuple(range(10)))
                                            for t in range(args.tasks)], 784, 10, 1, {})
    runs = {}
    for name in args.variants:
        torch.manual_seed(0)
        model = cl.MLP(784, tuple(args.hidden), 10).to(device)
        strategy = prepared(name, model, stream, args.tasks if name != "plain" else 0)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        time_steps(model, strategy, opt, x28, y, 20, args.batch, device)  # warm-up
        runs[name] = (model, strategy, opt)
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (model, strategy, opt) in runs.items():
            times[name].append(time_steps(model, strategy, opt, x28, y, args.steps, args.batch, device))
    med = {name: statistics.median(v) for name, v in times.items()}
    print(f"device {device}, threads {torch.get_num_threads()}, MLP 784-{'-'.join(map(str, args.hidden))}-10, "
          f"batch {args.batch}, {args.tasks} tasks consolidated, flush_denormal={args.flush_denormal}")
    for name, v in med.items():
        ratio = v / med["plain"] if "plain" in med else float("nan")
        print(f"{name:13s} {v * 1e3:7.3f} ms/step   {ratio:5.2f}x plain")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"median_s": med, "args": vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()
