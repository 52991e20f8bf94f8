"""The training loop: tasks, epochs, batches, evaluation, the NaN guard -- and nothing else.

:func:`train_step` is one optimiser step (forward, loss, the strategy's penalties, backward, step);
:func:`train_tasks` calls it over every task's batches, drawn by index from tensors already on the
device (no DataLoader), rebuilds the optimiser for each task over the parameters that task trains,
and after every task evaluates the model on every task's test set, yielding one row of the
accuracy matrix ``R[i, j]`` at a time.  What a run is -- its fingerprint, the result cache, the
checkpoints -- lives in :mod:`clutils.runs`, whose :func:`~clutils.runs.train_stream` drives this loop.
"""
from __future__ import annotations

import contextlib
import copy
import sys
import time
from dataclasses import dataclass, field, fields
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import seeds
from ._checks import check_int, check_int_sequence, check_positive_float, resolve_device
from .seeds import seed_everything
from .streams import Stream, Task
from .strategies import Strategy

__all__ = ["TrainConfig", "TaskRecord", "resolve_device", "seed_everything", "evaluate", "train_step", "train_tasks",
           "NonFiniteLossError", "freeze_batchnorm"]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


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
    # True: skip an epoch's last batch when it is smaller than batch_size (a batch of one image takes a full
    # step on one image's gradient: chapter 3 measures one that costs a task 20 points). False: train on it.
    drop_last: bool = False
    # BatchNorm's running mean and variance are buffers every training batch updates, with no penalty: they
    # drift to the last task's inputs.  "track": PyTorch's behaviour (they drift).  "freeze": the usual remedy,
    # they are frozen after the first task (the BatchNorm layers run in eval mode from task 2 on; their scale
    # and shift still train), so every task is normalised with the first task's statistics.
    batchnorm: str = "track"
    # False: a fresh optimiser for every task, over the parameters that task trains.  True: one optimiser for the
    # whole stream, built before the first task over every trainable parameter, so Adam's moment estimates (or
    # SGD's momentum) carry from one task into the next, as in Hsu et al.'s code; heads a task does not use get
    # no gradient and so no step.  A checkpoint then holds the optimiser's state too.
    keep_optimizer: bool = False

    def epochs_for(self, t: int) -> int:
        if _is_int(self.epochs):
            return int(self.epochs)
        return int(self.epochs[t])

    def validate(self, n_tasks: int) -> None:
        """Refuse wrong types and values before any work: integers where counts are expected (a
        float is never truncated silently), finite positive ``lr``, finite non-negative
        ``momentum`` and ``weight_decay``, no momentum with Adam."""
        if not isinstance(self.optimizer, str) or self.optimizer not in ("sgd", "adam"):
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
        if self.momentum >= 1:
            raise ValueError(f"momentum must be below 1 (SGD's velocity grows without bound otherwise), got "
                             f"{self.momentum}; 0.9 is the usual choice.")
        if self.select_epoch not in (None, "val", "test"):
            raise ValueError(f"select_epoch must be None (the last epoch), 'val' or 'test', got {self.select_epoch!r}.")
        if self.optimizer == "adam" and self.momentum:
            raise ValueError(f"optimizer='adam' has no momentum setting (got momentum={self.momentum}); set "
                             f"momentum=0 (Adam's betas play that role) or use optimizer='sgd'.")
        if self.batchnorm not in ("track", "freeze"):
            raise ValueError(f"batchnorm must be 'track' (running statistics follow every task: they drift) or "
                             f"'freeze' (frozen after the first task), got {self.batchnorm!r}.")
        for flag in ("eval_every_epoch", "flush_denormal", "drop_last", "keep_optimizer"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be True or False, got {getattr(self, flag)!r}.")

    def to_dict(self) -> dict:
        """The settings that differ from their defaults, as plain JSON values (run records, the fingerprint).

        One rule for every setting, as for strategies: a default is omitted, so a setting added later
        (with a default that keeps what runs did before) changes no earlier run's fingerprint."""
        d = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "epochs":
                v = int(v) if _is_int(v) else [int(e) for e in v]
            elif f.name in ("batch_size", "eval_batch_size", "seed"):
                v = int(v)
            elif isinstance(v, float) or f.name in ("lr", "momentum", "weight_decay"):
                v = float(v)
            if not (type(v) is type(f.default) and v == f.default):
                d[f.name] = v
        return d


def _is_int(value) -> bool:
    try:
        check_int(value, "")
        return True
    except TypeError:
        return False



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


@torch.inference_mode()
def _task_accuracy(model: nn.Module, stream: Stream, t: int, split: str, batch_size: int) -> float:
    """Accuracy on task ``t``'s ``split`` alone (one host sync)."""
    was_training = model.training
    model.eval()
    correct, n = _correct(model, stream, stream[t], split, stream.active_outputs(t), batch_size)
    model.train(was_training)
    return correct.item() / n


def _make_optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def _trainable(model: nn.Module, heads: int | Tensor, extra: Sequence[int] = ()) -> list[nn.Parameter]:
    """Shared layers plus the head(s) this task trains (its data's, and ``extra``: e.g. replayed tasks');
    other tasks' heads stay untouched."""
    if model.n_heads > 1:
        used = heads.unique().tolist() if isinstance(heads, Tensor) else [heads]
        used = sorted(set(used) | set(extra))
        params = list(model.shared_parameters()) + [p for h in used for p in model.head_parameters(h)]
    else:
        params = list(model.parameters())
    return [p for p in params if p.requires_grad]


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.std import tqdm  # plain-text bar: renders in notebooks without widget JavaScript

    return tqdm(total=total, desc=desc, disable=not enabled, file=sys.stdout, ascii=True,
                mininterval=1.0, dynamic_ncols=False, ncols=90)


def train_step(model: nn.Module, opt: torch.optim.Optimizer, strategy: Strategy, x: Tensor, y: Tensor,
               head: int | Tensor, n_active: int, t: int) -> Tensor:
    """One optimiser step on the batch ``(x, y)`` of task ``t``; returns the loss with the activation penalties (detached).

    The cross-entropy is over the first ``n_active`` logits of head ``head`` (the classes in play).
    """
    logits, hidden = model(x, head, return_hidden=True)
    loss = F.cross_entropy(logits[:, :n_active], y)
    penalty = strategy.penalty(model, t, hidden)  # differentiable, e.g. SLNID on the activations
    opt.zero_grad(set_to_none=True)
    if penalty is not None and strategy.task_gradient:  # after_backward sees the task loss's gradient alone
        loss.backward(retain_graph=True)
        strategy.after_backward(model, t)
        penalty.backward()
    else:
        loss = loss if penalty is None else loss + penalty
        loss.backward()
        strategy.after_backward(model, t)
    strategy.grad_penalty(model, t)  # adds its own gradient to .grad, e.g. EWC / MAS
    opt.step()
    strategy.after_step(model, t)
    return loss.detach() if penalty is None or not strategy.task_gradient else (loss + penalty).detach()


def _train_task(model: nn.Module, stream: Stream, strategy: Strategy, cfg: TrainConfig, t: int,
                dev: torch.device, curves: list, bar, kept: torch.optim.Optimizer | None = None) -> None:
    """Train task ``t``; ``kept``: the stream's one optimiser (``cfg.keep_optimizer``), else a fresh one."""
    x, y, heads = strategy.train_data(stream, t)
    strategy.before_task(model, stream, t)
    params = _trainable(model, heads, strategy.extra_heads())
    opt = (kept if kept is not None else _make_optimizer(cfg, params)) if params else None
    n_active, n = stream.active_outputs(t), len(y)
    best_acc, best_state = -1.0, None
    for epoch in range(cfg.epochs_for(t)):
        model.train()  # each epoch: an evaluation in the last one restored train mode on every layer
        if cfg.batchnorm == "freeze" and t > 0:
            freeze_batchnorm(model)
        order = torch.randperm(n, generator=seeds.generator(seeds.batch_order_seed(cfg.seed, t, epoch))).to(dev)
        loss_sum = torch.zeros((), device=dev)
        stop = (n - n % cfg.batch_size if cfg.drop_last and n >= cfg.batch_size else n) if opt is not None else 0
        for i in range(0, stop, cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            xb, yb, hb = strategy.mix_batch(x[idx], y[idx], heads[idx] if isinstance(heads, Tensor) else heads, t)
            loss_sum += train_step(model, opt, strategy, xb, yb, hb, n_active, t)
        # one host sync per epoch: the summed loss of the steps taken, and the parameters (a blow-up
        # of a closed-form penalty's gradient, or on the last step of the epoch, shows only in them)
        finite = torch.isfinite(loss_sum)
        if params:
            finite = finite & torch.stack([torch.isfinite(p).all() for p in params]).all()
        if not finite:
            _raise_non_finite(model, stream, cfg, t, epoch, loss_sum, x)
        if cfg.eval_every_epoch:
            curves.append({"task": t, "epoch": epoch, "acc": evaluate(model, stream, t, cfg.eval_batch_size)})
        if cfg.select_epoch is not None:  # keep the earliest epoch with the best accuracy on task t's split
            acc_t = _task_accuracy(model, stream, t, cfg.select_epoch, cfg.eval_batch_size)
            if acc_t > best_acc:  # the strategy's state too (SI's path integral of that epoch)
                best_acc, best_state = acc_t, (_snapshot(model), _snapshot(strategy))
        bar.update(1)
    if best_state is not None:
        model.load_state_dict(best_state[0])
        strategy.load_state_dict(best_state[1])


def freeze_batchnorm(model: nn.Module) -> int:
    """Put every BatchNorm layer of ``model`` in eval mode: it normalises with its running statistics and
    stops updating them (its affine scale and shift still train).  Returns how many layers it froze.
    ``TrainConfig(batchnorm="freeze")`` calls it before every task after the first."""
    frozen = 0
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            frozen += 1
    return frozen


def _snapshot(module: nn.Module) -> dict:
    """A copy of ``module``'s state: tensors cloned, anything else (a strategy's extra state) deep-copied."""
    return {k: v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v) for k, v in module.state_dict().items()}


def _raise_non_finite(model: nn.Module, stream: Stream, cfg: TrainConfig, t: int, epoch: int, loss_sum: Tensor,
                      x: Tensor):
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    where = (f"the parameters became non-finite (NaN or inf) in task {t} ({stream[t].name}), epoch {epoch}: "
             f"{', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}" if bad else
             f"the training loss became {loss_sum.item()} in task {t} ({stream[t].name}), epoch {epoch}")
    raise NonFiniteLossError(f"{where}; {_likely_cause(cfg, x)}")


def _likely_cause(cfg: TrainConfig, x: Tensor) -> str:
    """The NaN guard's advice: the cause it can see, else the usual suspects."""
    if not torch.isfinite(x).all():
        return ("the task's training inputs hold NaN or infinite values; clean the data set (e.g. "
                "torch.nan_to_num) before building the stream.")
    if cfg.lr * cfg.weight_decay >= 1:
        return (f"weight_decay={cfg.weight_decay} with lr={cfg.lr} (their product >= 1) makes every step overshoot; "
                f"lower the weight decay.")
    return (f"the learning rate ({cfg.lr}) or a regularisation strength (lambda) is probably too large. "
            f"Lower it and run again.")


@dataclass
class TaskRecord:
    """What :func:`train_tasks` yields after task ``task``: its row of the test (and validation) matrix,
    the curves of its epochs and how long its training, importance and evaluation took."""

    task: int
    acc: list[float]
    val_acc: list[float] | None
    curves: list[dict] = field(default_factory=list)
    train_s: float = 0.0
    importance_s: float = 0.0
    eval_s: float = 0.0
    optimizer_state: dict | None = None  # the kept optimiser's state after the task (cfg.keep_optimizer), for checkpoints


def _timed(fn, dev: torch.device) -> float:
    t0 = time.perf_counter()
    fn()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def train_tasks(model: nn.Module, stream: Stream, strategy: Strategy, cfg: TrainConfig, *, start: int = 0,
                progress: bool = True, optimizer_state: dict | None = None) -> Iterator[TaskRecord]:
    """Train tasks ``start, ..., T-1`` of ``stream`` in turn, yielding a :class:`TaskRecord` after each.

    With ``cfg.keep_optimizer`` one optimiser trains every task; ``optimizer_state`` (a resumed run's, from
    the record of task ``start - 1``) restores its state.
    The model, the stream and the strategy must already be on one device (:func:`~clutils.runs.train_stream`
    checks the inputs, moves them and handles the cache and checkpoints; call this directly only
    when you want the bare loop)."""
    dev = next(model.parameters()).device
    kept = None
    if cfg.keep_optimizer:
        kept = _make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
        if optimizer_state is not None:
            kept.load_state_dict(optimizer_state)
    elif optimizer_state is not None:
        raise ValueError("optimizer_state is only used with TrainConfig(keep_optimizer=True): each task builds a "
                         "fresh optimiser otherwise.")
    bar = _progress(sum(cfg.epochs_for(t) for t in range(start, len(stream))), f"{strategy.name} on {stream.name}",
                    progress)
    try:
        for t in range(start, len(stream)):
            rec = TaskRecord(t, [], None)
            rec.train_s = _timed(lambda: _train_task(model, stream, strategy, cfg, t, dev, rec.curves, bar, kept), dev)
            if kept is not None:
                rec.optimizer_state = kept.state_dict()
            rec.importance_s = _timed(lambda: strategy.after_task(model, stream, t), dev)
            rec.eval_s = _timed(lambda: rec.acc.extend(evaluate(model, stream, t, cfg.eval_batch_size)), dev)
            if stream.has_val:  # the validation matrix, beside the test one
                rec.val_acc = evaluate(model, stream, t, cfg.eval_batch_size, split="val")
            yield rec
    finally:
        bar.close()


@contextlib.contextmanager
def flush_denormal(enabled: bool):
    """Inside: subnormal floats count as zero on the CPU (``torch.set_flush_denormal``); the previous mode after.

    Arithmetic on subnormals (|x| < 1.2e-38 in float32) is many times slower on x86 CPUs; penalties
    that push activations towards zero (SNI ... SLNID) produce them, and then every matrix product
    of the step slows down.  Off by default: it changes results in the last bits.
    """
    if not enabled:
        yield
        return
    before = bool(torch.tensor([1e-39], dtype=torch.float32).mul(1.0).eq(0).item())  # a subnormal read as 0
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)
