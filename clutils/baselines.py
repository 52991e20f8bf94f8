r"""Naive continual learners that need no new strategy: a separate model per task, and what each baseline stores.

``separate_models`` trains a fresh model on each task and assembles the accuracy matrix
as if the models formed one learner that picks model ``j`` for task ``j`` (so it needs the
task identity at test time):

.. math::  R[i, j] = \begin{cases} a_j & j \le i \ \text{(model j after training task j)} \\
                                   b_j & j > i \ \text{(model j still at its random initialisation)} \end{cases}

Forgetting and backward transfer are therefore exactly zero; the price is memory, ``T`` models.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from torch import nn

from .streams import Stream, Task
from .models import check_model
from .results import RunResult
from .strategies import Naive
from .runs import train_stream
from .training import TrainConfig, evaluate, resolve_device

__all__ = ["separate_models", "memory_cost", "count_parameters", "BASELINES"]

BASELINES = ("naive", "freeze", "separate", "joint")


def count_parameters(model: nn.Module) -> int:
    """Number of scalars in the model's parameters."""
    return sum(p.numel() for p in model.parameters())


def _single_task_stream(stream: Stream, j: int) -> Stream:
    t = stream[j]
    task = Task(0, t.name, t.x_train, t.y_train, t.x_test, t.y_test, t.classes)
    return Stream(f"{stream.name}[{j}]", "domain", [task], stream.n_features, stream.n_outputs, 1,
                  {**stream.description, "task": j})


def separate_models(make_model: Callable[[], nn.Module], stream: Stream, cfg: TrainConfig | None = None, *,
                    device: str = "auto", progress: bool = False,
                    cache_dir: str | Path | None = None, keep_model: bool = False) -> RunResult:
    """Train one fresh model per task (``make_model()`` builds it: one head of ``stream.n_outputs``).

    Models are built in task order before any training, so a seeded caller gets the same
    models every time.  Returns a :class:`RunResult` whose ``R`` has the structure above;
    ``extras["n_parameters"]`` holds the parameters of all the models together.
    ``cache_dir``: each model's one-task run goes through the result cache of :func:`train_stream`
    (fingerprinted by its task, initial weights and settings), so a repeated call trains nothing;
    ``keep_model`` keeps each model's weights there too (records alone by default, as sweeps do).
    """
    cfg = cfg or TrainConfig()
    if stream.scenario == "class":
        raise ValueError("a separate model per task needs the task identity at test time to pick the model, "
                         "and class-incremental streams do not give it; build the stream with scenario='task' "
                         "or 'domain' (labels numbered inside each task).")
    cfg.validate(len(stream))
    dev = resolve_device(device)
    models = [make_model() for _ in range(len(stream))]
    for m in models:
        if check_model(m).n_heads != 1:
            raise ValueError(f"make_model must build single-head models (one model per task), got {m.n_heads} heads.")
    subs = [_single_task_stream(stream, j) for j in range(len(stream))]
    init_acc, final_acc, timings = [], [], {"train_s": [], "eval_s": []}
    for j, (m, sub) in enumerate(zip(models, subs)):
        m.to(dev)
        init_acc.append(evaluate(m, sub.to(dev), 0, cfg.eval_batch_size)[0])
        cfg_j = dataclasses.replace(cfg, epochs=cfg.epochs_for(j), eval_every_epoch=False)
        r = train_stream(m, sub, Naive(), cfg_j, device=dev, progress=progress, cache_dir=cache_dir,
                         keep_model=keep_model)
        final_acc.append(r.acc[0][0])
        timings["train_s"] += r.timings["train_s"]
        timings["eval_s"] += r.timings["eval_s"]
    T = len(stream)
    R = [[final_acc[j] if j <= i else init_acc[j] for j in range(T)] for i in range(T)]
    timings["total_s"] = float(sum(timings["train_s"]) + sum(timings["eval_s"]))
    timings["device"] = str(dev)
    config = {"stream": stream.description, "model": repr(models[0]), "strategy": {"name": "separate"},
              "train": cfg.to_dict()}
    return RunResult(config=config, acc=R, timings=timings,
                     extras={"n_parameters": sum(count_parameters(m) for m in models), "random_init_acc": init_acc})


def memory_cost(method: str, model: nn.Module, stream: Stream) -> dict:
    """What a baseline keeps after the whole stream: parameters stored and training examples stored.

    * ``naive`` and ``freeze``: one model (``model``, with all its heads);
    * ``separate``: ``T`` single-head models, ``T * (P - P_heads + P_head)``;
    * ``joint``: one model plus every training example of every task.
    """
    if method not in BASELINES:
        raise ValueError(f"unknown baseline {method!r}; choose one of {', '.join(BASELINES)}.")
    P = count_parameters(check_model(model))
    if method == "separate":
        heads = [sum(p.numel() for p in model.head_parameters(j)) for j in range(model.n_heads)]
        return {"parameters": len(stream) * (P - sum(heads) + heads[0]), "examples": 0}
    examples = sum(t.n_train for t in stream) if method == "joint" else 0
    return {"parameters": P, "examples": examples}
