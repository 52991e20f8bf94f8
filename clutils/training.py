"""Sequential training of a stream, task by task, with a pluggable strategy.

:func:`train_step` is one optimiser step (forward, loss, the strategy's penalties, backward,
step); :func:`train_stream` calls it over every task's batches, drawn by index from tensors
already on the device (no DataLoader), rebuilds the optimiser for each task over the parameters
that task trains, and after every task evaluates the model on every task's test set, filling
the accuracy matrix ``R[i, j]``.  Runs can checkpoint after each task and resume to exactly the
same result (:mod:`clutils.checkpoint`), and a finished run can be cached and loaded instead of
trained again (``cache_dir``).
"""
from __future__ import annotations

import contextlib
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_int, check_int_sequence, check_positive_float
from .checkpoint import Checkpointer, check_writable_folder, fingerprint, weights_digest
from .data import Stream, Task
from .models import check_model
from .results import RunResult, load_cached
from .strategies import Naive, Strategy, undescribed

__all__ = ["TrainConfig", "resolve_device", "seed_everything", "evaluate", "train_step", "train_stream",
           "NonFiniteLossError"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for but CUDA is not available; use device='auto' or 'cpu'.")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's generators (model initialisation uses these)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TrainConfig:
    """How each task is trained.  ``epochs`` may be one number or one per task."""

    epochs: int | Sequence[int] = 1
    batch_size: int = 128
    lr: float = 0.01
    optimizer: str = "sgd"  # "sgd" or "adam"
    momentum: float = 0.0
    weight_decay: float = 0.0
    seed: int = 0
    eval_every_epoch: bool = False  # record accuracy on all tasks after every epoch (curves)
    eval_batch_size: int = 10_000
    flush_denormal: bool = False  # CPU: treat subnormal floats as 0 (faster when activations shrink, e.g. SLNID)
    # None: keep the last epoch.  "val": keep the epoch with the best accuracy on the task's validation split.
    # "test": on its test split -- what some released code does; only to measure that protocol, never to report.
    select_epoch: str | None = None

    def epochs_for(self, t: int) -> int:
        if _is_int(self.epochs):
            return int(self.epochs)
        return int(self.epochs[t])

    def validate(self, n_tasks: int) -> None:
        """Refuse wrong types and values before any work: integers where counts are expected (a
        float is never truncated silently), finite positive ``lr``, finite non-negative
        ``momentum`` and ``weight_decay``, no momentum with Adam."""
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose 'sgd' or 'adam'.")
        if not _is_int(self.epochs):
            if isinstance(self.epochs, (str, bytes)) or not isinstance(self.epochs, Sequence):
                raise TypeError(f"epochs must be an integer or one integer per task, got {self.epochs!r}.")
            check_int_sequence(self.epochs, "epochs")
            if len(self.epochs) != n_tasks:
                raise ValueError(f"epochs lists {len(self.epochs)} values for {n_tasks} tasks; give one per task "
                                 f"or a single int.")
        eps = [self.epochs_for(t) for t in range(n_tasks)]
        if any(e < 0 for e in eps):
            raise ValueError(f"epochs must be >= 0, got {self.epochs}.")
        check_int(self.batch_size, "batch_size", minimum=1)
        check_int(self.eval_batch_size, "eval_batch_size", minimum=1)
        check_int(self.seed, "seed")
        check_positive_float(self.lr, "lr")
        check_positive_float(self.momentum, "momentum", allow_zero=True)
        check_positive_float(self.weight_decay, "weight_decay", allow_zero=True)
        if self.select_epoch not in (None, "val", "test"):
            raise ValueError(f"select_epoch must be None (the last epoch), 'val' or 'test', got {self.select_epoch!r}.")
        if self.optimizer == "adam" and self.momentum:
            raise ValueError(f"optimizer='adam' has no momentum setting (got momentum={self.momentum}); set "
                             f"momentum=0 (Adam's betas play that role) or use optimizer='sgd'.")
        for flag in ("eval_every_epoch", "flush_denormal"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be True or False, got {getattr(self, flag)!r}.")

    def to_dict(self) -> dict:
        """The settings as plain JSON values (for run records and the cache fingerprint)."""
        d = asdict(self)
        if d["select_epoch"] is None:  # added after runs were cached: recorded only when set
            del d["select_epoch"]
        d["epochs"] = int(self.epochs) if _is_int(self.epochs) else [int(e) for e in self.epochs]
        for k in ("batch_size", "eval_batch_size", "seed"):
            d[k] = int(d[k])
        return d


def _is_int(value) -> bool:
    try:
        check_int(value, "")
        return True
    except TypeError:
        return False



def _check_model_fits(model: nn.Module, stream: Stream) -> None:
    model = check_model(model)
    if len(stream) == 0:
        raise ValueError("the stream has no tasks.")
    if model.n_heads != stream.n_heads:
        raise ValueError(
            f"the model has {model.n_heads} head(s) but the {stream.scenario}-incremental stream needs "
            f"{stream.n_heads} ({'one per task' if stream.scenario == 'task' else 'one shared head'}); build it with "
            f"MLP(..., out_features={stream.n_outputs}, n_heads={stream.n_heads}).")
    if model.out_features < stream.n_outputs:
        raise ValueError(f"the model's heads have {model.out_features} outputs but the stream needs {stream.n_outputs}.")
    if model.in_features != stream.n_features:
        raise ValueError(f"the model takes {model.in_features} input features but the stream's images have "
                         f"{stream.n_features}.")


def _correct(model: nn.Module, stream: Stream, task: Task, split: str, n_active: int, batch_size: int) -> tuple[Tensor, int]:
    """How many of ``task``'s ``split`` the model classifies right (a device tensor: no host sync), and
    how many examples the split has."""
    x, y = task.split(split)
    correct = torch.zeros((), device=y.device, dtype=torch.int64)
    for i in range(0, len(y), batch_size):
        logits = model(x[i:i + batch_size], stream.head_of(task.id))[:, :n_active]
        correct += (logits.argmax(1) == y[i:i + batch_size]).sum()
    return correct, len(y)


@torch.inference_mode()
def evaluate(model: nn.Module, stream: Stream, after_task: int, batch_size: int = 10_000,
             split: str = "test") -> list[float]:
    """Accuracy on every task's ``split`` (``"test"`` or ``"val"``), with the outputs in play after ``after_task``."""
    was_training = model.training
    model.eval()
    n_active = stream.active_outputs(after_task)
    accs, counts = zip(*(_correct(model, stream, task, split, n_active, batch_size) for task in stream))
    model.train(was_training)
    return (torch.stack(accs).double().cpu() / torch.tensor(counts, dtype=torch.float64)).tolist()


def _flush_denormal_is_on() -> bool:
    return bool(torch.tensor([1e-39], dtype=torch.float32).mul(1.0).eq(0).item())  # a subnormal read as 0


@contextlib.contextmanager
def _flush_denormal(enabled: bool):
    """Inside: subnormal floats count as zero on the CPU (``torch.set_flush_denormal``); the previous mode after.

    Arithmetic on subnormals (|x| < 1.2e-38 in float32) is many times slower on x86 CPUs; penalties
    that push activations towards zero (SNI ... SLNID) produce them, and then every matrix product
    of the step slows down.  Off by default: it changes results in the last bits.
    """
    if not enabled:
        yield
        return
    before = _flush_denormal_is_on()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def _make_optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _trainable(model: nn.Module, heads: int | Tensor) -> list[nn.Parameter]:
    """Shared layers plus the head(s) this task trains; other tasks' heads stay untouched."""
    if model.n_heads > 1:
        used = heads.unique().tolist() if isinstance(heads, Tensor) else [heads]
        params = list(model.shared_parameters()) + [p for h in used for p in model.head_parameters(h)]
    else:
        params = list(model.parameters())
    return [p for p in params if p.requires_grad]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.std import tqdm  # plain-text bar: renders in notebooks without widget JavaScript

    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stdout, ascii=True,
                mininterval=1.0, dynamic_ncols=False, ncols=90)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, strategy: Strategy, x: Tensor, y: Tensor,
               head: int | Tensor, n_active: int, t: int, penalty_value: bool = True) -> Tensor:
    """One optimiser step on the batch ``(x, y)`` of task ``t``; returns the loss with all penalties (detached).

    The cross-entropy is over the first ``n_active`` logits of head ``head`` (the classes in play).
    ``penalty_value=False`` leaves the value of the ``grad_penalty`` penalties out of the returned
    loss (their gradients are applied all the same), which saves a pass over the parameters.
    """
    logits, hidden = model(x, head, return_hidden=True)
    loss = F.cross_entropy(logits[:, :n_active], y)
    act_penalty = strategy.penalty(model, t, hidden)  # differentiable, e.g. SLNID on the activations
    if act_penalty is not None:
        loss = loss + act_penalty
    opt.zero_grad(set_to_none=True)
    loss.backward()
    quad_penalty = strategy.grad_penalty(model, t, penalty_value)  # adds its own gradient to .grad, e.g. EWC / MAS
    opt.step()
    strategy.after_step(model, t)
    return loss.detach() if quad_penalty is None else loss.detach() + quad_penalty


def _train_task(model: nn.Module, stream: Stream, strategy: Strategy, cfg: TrainConfig, t: int,
                dev: torch.device, curves: list, bar) -> None:
    x, y, heads = strategy.train_data(stream, t)
    strategy.before_task(model, stream, t)
    params = _trainable(model, heads)
    opt = _make_optimizer(cfg, params) if params else None
    n_active, n = stream.active_outputs(t), len(y)
    best_acc, best_state = -1.0, None
    model.train()
    for epoch in range(cfg.epochs_for(t)):
        g = torch.Generator().manual_seed(int(cfg.seed) * 1_000_003 + t * 1_009 + epoch)
        order = torch.randperm(n, generator=g).to(dev)
        loss_sum = torch.zeros((), device=dev)
        for i in range(0, n if opt is not None else 0, cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            loss_sum += train_step(model, opt, strategy, x[idx], y[idx],
                                   heads[idx] if isinstance(heads, Tensor) else heads, n_active, t,
                                   penalty_value=False)
        quad = strategy.penalty_value(model, t)  # the grad_penalty penalties, once per epoch
        if quad is not None:
            loss_sum += quad.to(loss_sum.dtype)
        # one host sync per epoch: the summed loss of the steps taken, and the parameters (a blow-up
        # on the last step of the epoch shows only in them)
        finite = torch.isfinite(loss_sum)
        if params:
            finite = finite & torch.stack([torch.isfinite(p).all() for p in params]).all()
        if not finite:
            _raise_non_finite(model, stream, cfg, t, epoch, loss_sum)
        if cfg.eval_every_epoch:
            curves.append({"task": t, "epoch": epoch, "acc": evaluate(model, stream, t, cfg.eval_batch_size)})
        if cfg.select_epoch is not None:  # keep the earliest epoch with the best accuracy on task t's split
            acc_t = _task_accuracy(model, stream, t, cfg.select_epoch, cfg.eval_batch_size)
            if acc_t > best_acc:
                best_acc, best_state = acc_t, {k: v.detach().clone() for k, v in model.state_dict().items()}
        bar.update(1)
    if best_state is not None:
        model.load_state_dict(best_state)


@torch.inference_mode()
def _task_accuracy(model: nn.Module, stream: Stream, t: int, split: str, batch_size: int) -> float:
    """Accuracy on task ``t``'s ``split`` alone (one host sync)."""
    was_training = model.training
    model.eval()
    correct, n = _correct(model, stream, stream[t], split, stream.active_outputs(t), batch_size)
    model.train(was_training)
    return correct.item() / n


def _raise_non_finite(model: nn.Module, stream: Stream, cfg: TrainConfig, t: int, epoch: int, loss_sum: Tensor):
    advice = (f"the learning rate ({cfg.lr}) or a regularisation strength (lambda) is probably too large. "
              f"Lower it and run again.")
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise NonFiniteLossError(
            f"the parameters became non-finite (NaN or inf) in task {t} ({stream[t].name}), epoch {epoch}: "
            f"{', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}; {advice}")
    raise NonFiniteLossError(f"the training loss became {loss_sum.item()} in task {t} ({stream[t].name}), "
                             f"epoch {epoch}: {advice}")


def _check_strategy(strategy) -> Strategy:
    if strategy is None:
        return Naive()
    if isinstance(strategy, type) and issubclass(strategy, Strategy):
        raise TypeError(f"strategy is the class {strategy.__name__}, not a strategy: pass an instance such as "
                        f"{strategy.__name__}(...) with its settings.")
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy must be a clutils Strategy (Naive(), EWC(10.0), Compose(...), ...), got "
                        f"{strategy!r} ({type(strategy).__name__}).")
    return strategy


def _used(strategy: Strategy) -> list[Strategy]:
    """The strategies (``strategy`` or its parts) that already trained a run, and so hold its state."""
    return [s for s in strategy.modules() if isinstance(s, Strategy) and s.__dict__.get("_trained_a_run")]


def _refuse_used(strategy: Strategy) -> None:
    used = _used(strategy)
    if used:
        u = used[0]
        raise ValueError(
            f"this {type(u).__name__} object already trained a run: it holds that run's state (importances, "
            f"anchors, ...), so a second run would not start fresh. Build a new one for every run, e.g. "
            f"{type(u).__name__}(...) with the same settings (or copy.deepcopy it before its first run).")


def _check_folders(config: dict, checkpoint_dir, cache_dir) -> None:
    """Before training: a resumable run needs a strategy it can describe and folders it can write."""
    if checkpoint_dir is None and cache_dir is None:
        return
    opaque = undescribed(config["strategy"])
    if opaque:
        raise ValueError(
            f"the strategy's configuration cannot be described ({', '.join(opaque[:3])}): a checkpoint or cache "
            f"entry could then be resumed by a run with other settings. Pass arguments clutils can describe "
            f"(numbers, strings, tensors, functions of those) or give the strategy a config() that names every "
            f"setting; or run without checkpoint_dir / cache_dir.")
    for folder, what in ((checkpoint_dir, "checkpoint_dir"), (cache_dir, "cache_dir")):
        if folder is not None:
            check_writable_folder(folder, what)


def _timed(fn, dev: torch.device) -> float:
    t0 = time.perf_counter()
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def run_config(model: nn.Module, stream: Stream, strategy: Strategy, cfg: TrainConfig) -> dict:
    """What defines a run (its record, and the fingerprint of checkpoints and the result cache)."""
    from . import __version__

    return {"stream": stream.description, "model": repr(model), "strategy": strategy.config(),
            "train": cfg.to_dict(), "initial_weights": weights_digest(model), "clutils": __version__}


def train_stream(model: nn.Module, stream: Stream, strategy: Strategy | None = None, cfg: TrainConfig | None = None,
                 *, device: str | torch.device = "auto", checkpoint_dir: str | Path | None = None,
                 cache_dir: str | Path | None = None, progress: bool = True,
                 stop_after_task: int | None = None) -> RunResult:
    """Train ``model`` on ``stream`` task by task and return the accuracy matrix and timings.

    ``checkpoint_dir``: save after every task and resume from there if the same configuration was
    interrupted.  ``cache_dir``: a finished run with the same fingerprint (stream, model, strategy
    settings, training settings, initial weights, clutils version) is loaded from
    ``cache_dir/<fingerprint>.json`` instead of trained (``from_cache`` is then true, and ``model``
    keeps its initial weights); an unfinished one resumes.  ``stop_after_task`` ends the run early
    (as a kill would), leaving the checkpoint behind.
    """
    strategy = _check_strategy(strategy)
    cfg = TrainConfig() if cfg is None else cfg
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig (e.g. TrainConfig(epochs=2, lr=0.01)), got {type(cfg).__name__}.")
    cfg.validate(len(stream))
    if cfg.select_epoch == "val" and not stream.has_val:
        raise ValueError("select_epoch='val' keeps the epoch with the best validation accuracy, but the stream has "
                         "no validation split: build it with make_stream(..., val_fraction=0.1).")
    if cfg.select_epoch == "test":
        warnings.warn("select_epoch='test' picks each task's epoch on its test split, so the test accuracies it "
                      "reports are optimistic; use it only to measure a protocol that does so, and "
                      "select_epoch='val' to choose an epoch.", stacklevel=2)
    _check_model_fits(model, stream)
    dev = resolve_device(device)
    model.to(dev)
    if stream[0].device != dev:
        stream = stream.to(dev)
    config = run_config(model, stream, strategy, cfg)
    key = fingerprint(config)
    _check_folders(config, checkpoint_dir, cache_dir)
    if cache_dir is not None:
        cached = load_cached(Path(cache_dir) / f"{key}.json")
        if cached is not None:
            return cached
        checkpoint_dir = checkpoint_dir or Path(cache_dir) / key
    ckpt = Checkpointer(checkpoint_dir, config) if checkpoint_dir is not None else None
    acc, val_acc, curves, timings = [], [], [], {"train_s": [], "importance_s": [], "eval_s": []}
    start = 0
    state = ckpt.load() if ckpt is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        strategy.load_state_dict(state["strategy"])
        for p, flag in zip(model.parameters(), state["requires_grad"]):
            p.requires_grad_(flag)
        acc, val_acc, curves, timings = state["acc"], state["val_acc"], state["curves"], state["timings"]
        start = state["task"] + 1
    else:
        _refuse_used(strategy)  # resuming replaces the state; a fresh start needs a fresh strategy
    for s in strategy.modules():
        if isinstance(s, Strategy):
            s._trained_a_run = True
    strategy.to(dev)

    T = len(stream)
    bar = _progress(sum(cfg.epochs_for(t) for t in range(start, T)), f"{strategy.name} on {stream.name}", progress)
    with _flush_denormal(cfg.flush_denormal and dev.type == "cpu"):
        for t in range(start, T):
            timings["train_s"].append(_timed(lambda: _train_task(model, stream, strategy, cfg, t, dev, curves, bar), dev))
            timings["importance_s"].append(_timed(lambda: strategy.after_task(model, stream, t), dev))
            timings["eval_s"].append(_timed(lambda: acc.append(evaluate(model, stream, t, cfg.eval_batch_size)), dev))
            if stream.has_val:  # the validation matrix, beside the test one
                val_acc.append(evaluate(model, stream, t, cfg.eval_batch_size, split="val"))
            if ckpt is not None:
                ckpt.save({"task": t, "model": model.state_dict(), "strategy": strategy.state_dict(),
                           "requires_grad": [p.requires_grad for p in model.parameters()],
                           "acc": acc, "val_acc": val_acc, "curves": curves, "timings": timings})
            if stop_after_task is not None and stop_after_task <= t < T - 1:
                break
    bar.close()
    timings["total_s"] = float(sum(timings["train_s"]) + sum(timings["importance_s"]) + sum(timings["eval_s"]))
    timings["device"] = str(dev)
    result = RunResult(config=config, acc=acc, val_acc=val_acc, timings=timings, curves=curves)
    if cache_dir is not None and len(acc) == T:
        result.save(Path(cache_dir) / f"{key}.json")
        if Path(checkpoint_dir) == Path(cache_dir) / key:  # the cache's own checkpoint: no longer needed
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return result
