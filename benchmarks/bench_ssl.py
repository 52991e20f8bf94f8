"""Cost of the SLNID regulariser: time of one training step with and without it, in the same run.

MLP 784-128-128-10, batch 200, SGD with momentum 0.9 (the chapter's configuration).  The step is
the trainer's: forward with the hidden activations, cross-entropy, the strategy's penalty,
backward, optimiser step.  Variants, timed in interleaved rounds so that drifts of the machine
hit all of them alike:

* ``plain``       cross-entropy only;
* ``slnid``       + SLNID on both hidden layers (importance discount in place, as after task 1);
* ``mas``         + the MAS penalty (when ``clutils.penalties`` is available);
* ``mas+slnid``   + both.

Prints the median time per step of each and the ratios slnid / plain and mas+slnid / mas
(target <= 1.3).  Inputs are random images (the time of a dense step does not depend on the
pixel values).  On the CPU, the regularised model's activations drift towards zero and
subnormal floats appear, which slow every matrix product of its step; ``--flush-denormal``
measures all variants with subnormals treated as zero.  Run with nothing else heavy on the machine:

    python benchmarks/bench_ssl.py [--rounds 30] [--steps 50] [--device auto] [--flush-denormal]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

import clutils as cl
from clutils.inhibition import SSL


def make_variant(kind: str, model: torch.nn.Module, first_task: cl.Stream):
    """The strategy of a variant in the state it has after a first task (importances known)."""
    parts = []
    if "mas" in kind:
        from clutils.penalties import MAS

        parts.append(MAS(0.1))
    if "slnid" in kind:
        parts.append(SSL("slnid", 1e-3))
    strategy = cl.Compose(*parts) if parts else cl.Strategy()
    strategy.after_task(model, first_task, 0)
    return strategy


def steps(model, strategy, opt, x, y, n: int, batch: int, device) -> float:
    """Run ``n`` trainer steps; return seconds per step."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for k in range(n):
        i = (k * batch) % (len(y) - batch)
        logits, hidden = model(x[i:i + batch], 0, return_hidden=True)
        loss = F.cross_entropy(logits, y[i:i + batch])
        extra = strategy.penalty(model, 1, hidden)
        if extra is not None:
            loss = loss + extra
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None, help="also write the medians and ratios here")
    ap.add_argument("--flush-denormal", action="store_true",
                    help="treat subnormal floats as zero on the CPU, for every variant alike "
                         "(what TrainConfig(flush_denormal=True) does inside train_stream)")
    args = ap.parse_args()
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    device = cl.resolve_device(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(20 * args.batch, 784, generator=g).to(device)
    y = torch.randint(0, 10, (len(x),), generator=g).to(device)
    first_task = cl.Stream("random", "domain", [cl.Task(0, "random", x, y, x[:10], y[:10], tuple(range(10)))],
                           784, 10, 1)
    try:
        import clutils.penalties  # noqa: F401
        kinds = ["plain", "slnid", "mas", "mas+slnid"]
    except ImportError:
        kinds = ["plain", "slnid"]
    runs = {}
    for kind in kinds:
        cl.seed_everything(0)
        model = cl.MLP(784, (args.hidden, args.hidden), 10).to(device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        runs[kind] = (model, make_variant(kind, model, first_task), opt)
    for kind, (m, s, o) in runs.items():  # warm-up
        steps(m, s, o, x, y, 3 * args.steps, args.batch, device)
    times = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in (kinds if r % 2 == 0 else kinds[::-1]):
            m, s, o = runs[kind]
            times[kind].append(steps(m, s, o, x, y, args.steps, args.batch, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"device {device}, torch threads {torch.get_num_threads()}, MLP 784-{args.hidden}-{args.hidden}-10, "
          f"batch {args.batch}, {args.rounds} rounds x {args.steps} steps, flush_denormal={args.flush_denormal}")
    for k in kinds:
        print(f"  {k:10s} {1e3 * med[k]:7.3f} ms/step")
    ratios = {"slnid/plain": med["slnid"] / med["plain"]}
    if "mas" in med:
        ratios["mas+slnid/mas"] = med["mas+slnid"] / med["mas"]
        ratios["mas+slnid/plain"] = med["mas+slnid"] / med["plain"]
    for k, v in ratios.items():
        print(f"  ratio {k:16s} {v:.3f}  ({'meets' if v <= 1.3 else 'misses'} the 1.3x target)" if "/plain" not in k
              or k == "slnid/plain" else f"  ratio {k:16s} {v:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "ms_per_step": {k: 1e3 * v for k, v in med.items()},
                       "ratios": ratios}, f, indent=1)


if __name__ == "__main__":
    main()
