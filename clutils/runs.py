"""A run is a value: what it reads decides its fingerprint, and a finished run is never trained twice.

:func:`train_stream` owns a run's life::

    config = run_config(model, stream, strategy, cfg)    # what the run reads, digested
    key = fingerprint(config)                            # an index into the cache, not a proof
    cached = <cache_dir>/<key>.json, its config == config  -> the record, and <key>.pt -> the trained model
    else: resume <checkpoint_dir>/checkpoint.pt (its config == config, its contents fit the run) or start
    for record in train_tasks(...):                       # the loop (clutils.training)
        checkpoint after the task
    save <key>.pt (final model and strategy state), then <key>.json

The fingerprint covers what the run reads: the content of every task's tensors (train, validation,
test, permutations), the model (its ``repr``, the code of any class written outside clutils, which
parameters train, its initial weights), every strategy setting (and the code of a user's
subclass), the training settings, and :data:`FINGERPRINT_VERSION` -- the version of what clutils's
own code computes, raised by hand when a change alters a run's numbers, and only then.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from ._digest import class_code_digest, weights_digest
from ._files import DiskFullError, atomic_write, run_lock
from .checkpoint import CheckpointError, Checkpointer, check_writable_folder, first_difference, normalised
from .models import check_model
from .results import CacheError, RunResult, load_cached
from .strategies import Naive, Strategy, undescribed
from .streams import Stream
from .training import TrainConfig, flush_denormal, resolve_device, train_tasks

__all__ = ["FINGERPRINT_VERSION", "run_config", "fingerprint", "describe_model", "train_stream", "load_model"]

# The version of what a run computes.  Raise it when a change to clutils alters the numbers a run
# produces (a new default, a fixed bug in a method); a release that changes no run leaves it alone,
# and every cached result stays valid.
#   3: the fingerprint reads the data (content digests), the model's code and trainable mask;
#      SI's path integral uses the task-loss gradient alone; select_epoch restores the strategy too.
FINGERPRINT_VERSION = 3


def describe_model(model: nn.Module) -> dict:
    """The model as the fingerprint sees it: ``repr``, which parameters are frozen, and the code of
    any class in it written outside clutils and torch (a changed ``forward`` is another run)."""
    code = {}
    for name, m in model.named_modules():
        d = class_code_digest(m)
        if d:
            code[name or "<model>"] = d
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    return {"repr": repr(model), **({"frozen": frozen} if frozen else {}), **({"code": code} if code else {})}


def run_config(model: nn.Module, stream: Stream, strategy: Strategy, cfg: TrainConfig) -> dict:
    """What defines a run: its record, and the fingerprint of its checkpoints and cache entry."""
    return {"fingerprint_version": FINGERPRINT_VERSION,
            "stream": {**stream.description, "content": stream.digest()},
            "model": describe_model(model), "strategy": strategy.config(), "train": cfg.to_dict(),
            "initial_weights": weights_digest(model)}


def fingerprint(config: dict) -> str:
    """A 16-hex digest of a run's configuration (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- checks before any work

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


def _check_model_fits(model: nn.Module, stream: Stream) -> None:
    model = check_model(model)
    if len(stream) == 0:
        raise ValueError("the stream has no tasks.")
    stream.check_splits()
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
    _probe_model(model, stream)


def _probe_model(model: nn.Module, stream: Stream) -> None:
    """Call the model once, in eval mode on a real batch of two images, and check what it returns against
    the contract (before any training: a model that breaks it fails here, not inside torch later)."""
    x = stream[0].x_test[:2]
    params = list(model.parameters())
    if params and params[0].dtype != x.dtype:
        raise TypeError(f"the model's parameters are {params[0].dtype} but the stream's images {x.dtype}; convert "
                        f"one to the other (model.float(), or the data set's tensors .to({params[0].dtype})).")
    shared = model.shared_parameters()
    if shared is None or not all(isinstance(p, nn.Parameter) for p in shared):
        raise TypeError(f"{type(model).__name__}.shared_parameters() must return a list of parameters (the layers "
                        f"every task shares), got {type(shared).__name__}.")
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x.to(params[0].device) if params else x, 0, return_hidden=True)
    except TypeError as err:
        raise TypeError(f"{type(model).__name__}.forward must accept (x, task, return_hidden=...) (the model "
                        f"contract, clutils.ContinualModel): {err}") from None
    finally:
        model.train(was)
    if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], (list, tuple))):
        raise TypeError(f"{type(model).__name__}(x, task, return_hidden=True) must return (logits, [hidden "
                        f"activations, ...]) -- a tuple whose second item is a list; got {type(out).__name__}"
                        f"{'' if not isinstance(out, tuple) else ' of ' + ', '.join(type(o).__name__ for o in out)}.")
    logits = out[0]
    if logits.ndim != 2 or logits.shape[0] != len(x) or logits.shape[1] < stream.n_outputs:
        raise ValueError(f"{type(model).__name__} returned logits of shape {tuple(logits.shape)} for {len(x)} images; "
                         f"the stream needs ({len(x)}, {stream.n_outputs}) or more outputs per head.")


def _refuse_used(strategy: Strategy) -> None:
    used = [s for s in strategy.modules() if isinstance(s, Strategy) and s.__dict__.get("_trained_a_run")]
    if used:
        u = used[0]
        raise ValueError(
            f"this {type(u).__name__} object already trained a run: it holds that run's state (importances, "
            f"anchors, ...), so a second run would not start fresh. Build a new one for every run, e.g. "
            f"{type(u).__name__}(...) with the same settings (or copy.deepcopy it before its first run).")


def _mark_used(strategy: Strategy) -> None:
    for s in strategy.modules():
        if isinstance(s, Strategy):
            s._trained_a_run = True


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


def _check_state(state: dict, model: nn.Module, strategy: Strategy, n_tasks: int, path: Path) -> None:
    """A checkpoint's contents must fit the run: its task index inside the stream, its rows one per
    finished task, its model state the model's names and shapes."""
    advice = f"Delete {path} to start this run afresh."
    t = state["task"]
    if not isinstance(t, int) or not 0 <= t < n_tasks:
        raise CheckpointError(f"{path} says task {t!r} finished, but the stream has {n_tasks} tasks. {advice}")
    if not isinstance(state["acc"], list) or len(state["acc"]) != t + 1:
        raise CheckpointError(f"{path} holds {len(state['acc']) if isinstance(state['acc'], list) else '?'} rows of "
                              f"the accuracy matrix for {t + 1} finished tasks. {advice}")
    own = model.state_dict()
    saved = state["model"]
    if not isinstance(saved, dict) or set(saved) != set(own) or any(
            tuple(saved[k].shape) != tuple(v.shape) for k, v in own.items()):
        raise CheckpointError(f"{path} holds a model state whose entries or shapes differ from the model's. {advice}")
    if not isinstance(state["strategy"], dict) or len(state["requires_grad"]) != len(list(model.parameters())):
        raise CheckpointError(f"{path} holds a strategy state or trainable mask that does not fit the run. {advice}")


def _state_bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values() if isinstance(t, torch.Tensor))


def _check_free_space(model: nn.Module, strategy: Strategy, folders) -> None:
    """Before training: each output folder must have room for what the run will write there.

    A checkpoint (and the final ``.pt``) holds the model and the strategy's state, which for the
    consolidation methods grows to an importance and an anchor per parameter (about two more models);
    while it is written, the old file and its temporary copy both exist.  So a folder needs
    2 x (3 x the model's size + the strategy's state now), plus 1 MiB for records: an estimate, made so
    that a full disk is found before an hour of training rather than after it.
    """
    need = 2 * (3 * _state_bytes(model) + _state_bytes(strategy)) + 2 ** 20
    for folder in folders:
        if folder is None:
            continue
        free = shutil.disk_usage(folder).free
        if free < need:
            raise DiskFullError(errno.ENOSPC, f"no space left on device: {folder} has {free / 2 ** 20:.1f} MiB free and this run "
                                    f"writes about {need / 2 ** 20:.1f} MiB there (checkpoints of the model and the "
                                    f"strategy's state). Free some space or point the run at another folder.")


# ----------------------------------------------------------------------------- the final model

def _final_state(model: nn.Module, strategy: Strategy, config: dict) -> dict:
    return {"config": config, "model": model.state_dict(), "strategy": strategy.state_dict(),
            "requires_grad": [p.requires_grad for p in model.parameters()]}


def load_model(path: str | Path, model: nn.Module, strategy: Strategy | None = None,
               config: dict | None = None) -> None:
    """Load a finished run's final weights (``<key>.pt`` beside its record) into ``model`` (and
    ``strategy``); refused when the configuration stored inside is not ``config``."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CacheError(f"the trained model {path} is unreadable ({type(err).__name__}: {err}). Delete it and its "
                         f".json and run again.") from None
    if not isinstance(state, dict) or not {"config", "model", "strategy", "requires_grad"} <= set(state):
        raise CacheError(f"{path} is not a clutils trained model. Delete it and its .json and run again.")
    if config is not None:
        diff = first_difference(state["config"], normalised(config))
        if diff:
            raise CacheError(f"{path} holds another run's model ({diff}). Delete it and its .json and run again.")
    model.load_state_dict(state["model"])
    for p, flag in zip(model.parameters(), state["requires_grad"]):
        p.requires_grad_(flag)
    if strategy is not None:
        strategy.load_state_dict(state["strategy"])


# ----------------------------------------------------------------------------- the run

@contextlib.contextmanager
def _process_settings(dev: torch.device, flush: bool):
    """Process-wide settings a run changes are changed inside this scope only: the global RNG (a
    resumed run sets it from its checkpoint) is restored after, and so is flush-denormal."""
    devices = [dev.index or 0] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), flush_denormal(flush and dev.type == "cpu"):
        yield


def train_stream(model: nn.Module, stream: Stream, strategy: Strategy | None = None, cfg: TrainConfig | None = None,
                 *, device: str | torch.device = "auto", checkpoint_dir: str | Path | None = None,
                 cache_dir: str | Path | None = None, keep_model: bool = True, progress: bool = True,
                 stop_after_task: int | None = None) -> RunResult:
    """Train ``model`` on ``stream`` task by task and return the accuracy matrix and timings.

    ``checkpoint_dir``: save after every task and resume from there if the same configuration was
    interrupted.  ``cache_dir``: a finished run with the same configuration (see :func:`run_config`)
    is loaded from ``cache_dir/<fingerprint>.json`` instead of trained (``from_cache`` is then
    true) and ``model`` and ``strategy`` are given the trained state back from ``<fingerprint>.pt``
    (``result.model_restored``).  ``keep_model=True`` (the default) keeps the final weights there, and
    a record cached without them (by ``keep_model=False``, as sweeps do) is trained once more to keep
    them; ``keep_model=False`` returns a record alone.  An unfinished run resumes.
    ``stop_after_task`` ends the run early (as a kill would), leaving the checkpoint behind.
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
    config = normalised(run_config(model, stream, strategy, cfg))  # before anything moves (digests are kept
    # per tensor), and once in the form that stored copies read back as
    key = fingerprint(config)
    if cache_dir is not None and (Path(cache_dir) / f"{key}.json").is_file() and not os.access(cache_dir, os.W_OK):
        # a read-only cache that holds this run: reading needs no write permission (and no lock)
        return _run(model, stream, strategy, cfg, dev, config, key, checkpoint_dir, cache_dir, False, progress,
                    stop_after_task)
    _check_folders(config, checkpoint_dir, cache_dir)
    _check_free_space(model, strategy, (checkpoint_dir, cache_dir))
    if cache_dir is None:
        return _run(model, stream, strategy, cfg, dev, config, key, checkpoint_dir, None, keep_model, progress,
                    stop_after_task)
    with run_lock(Path(cache_dir) / f"{key}.lock"):  # a second writer of this run waits, then loads its result
        return _run(model, stream, strategy, cfg, dev, config, key, checkpoint_dir, cache_dir, keep_model, progress,
                    stop_after_task)


def _touch(*paths: Path) -> None:
    """Mark cache files as used (their modification time; the contents stay): files a whole chapter
    run left untouched are the ones no run reads any more (``find -not -newer <start marker>``).
    A read-only cache is served all the same."""
    for path in paths:
        with contextlib.suppress(OSError):
            if path.exists():
                os.utime(path)


def _run(model, stream, strategy, cfg, dev, config, key, checkpoint_dir, cache_dir, keep_model, progress,
         stop_after_task) -> RunResult:
    """The cache, or the checkpoint, or training; then the record (``train_stream`` checked everything;
    ``config`` is normalised)."""
    if cache_dir is not None:
        cached = load_cached(Path(cache_dir) / f"{key}.json", config)
        weights = Path(cache_dir) / f"{key}.pt"
        if cached is not None:
            _touch(Path(cache_dir) / f"{key}.json", weights)
        if cached is not None and weights.exists():
            _refuse_used(strategy)
            load_model(weights, model, strategy, config)
            model.to(dev)
            strategy.to(dev)
            _mark_used(strategy)
            cached.model_restored = True
            return cached
        if cached is not None and not keep_model:
            return cached  # the record alone was asked for; model keeps its initial weights
        # a record without its weights, and the model asked for: train it again (once) to keep them
        checkpoint_dir = checkpoint_dir or Path(cache_dir) / key
    model.to(dev)
    strategy.to(dev)
    if stream[0].device != dev:
        stream = stream.to(dev)
    ckpt = Checkpointer(checkpoint_dir, config) if checkpoint_dir is not None else None
    acc, val_acc, curves, timings = [], [], [], {"train_s": [], "importance_s": [], "eval_s": []}
    state = ckpt.load() if ckpt is not None else None
    if state is not None:
        _check_state(state, model, strategy, len(stream), ckpt.path)
        if cfg.keep_optimizer and not isinstance(state.get("optimizer"), dict):
            raise CheckpointError(f"{ckpt.path} holds no optimiser state, but the run keeps one optimiser across "
                                  f"tasks (keep_optimizer=True): resuming without it would restart Adam's moments. "
                                  f"Delete {ckpt.path} to start this run afresh.")
        model.load_state_dict(state["model"])
        strategy.load_state_dict(state["strategy"])
        strategy.to(dev)
        for p, flag in zip(model.parameters(), state["requires_grad"]):
            p.requires_grad_(flag)
        acc, val_acc, curves, timings = state["acc"], state["val_acc"], state["curves"], state["timings"]
    else:
        _refuse_used(strategy)  # resuming replaces the state; a fresh start needs a fresh strategy
    _mark_used(strategy)

    T = len(stream)
    with _process_settings(dev, cfg.flush_denormal):
        if state is not None:
            torch.set_rng_state(state["torch_rng"])
            if dev.type == "cuda" and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"], dev)
        for rec in train_tasks(model, stream, strategy, cfg, start=len(acc), progress=progress,
                               optimizer_state=state.get("optimizer") if state is not None else None):
            acc.append(rec.acc)
            if rec.val_acc is not None:
                val_acc.append(rec.val_acc)
            curves += rec.curves
            for k in ("train_s", "importance_s", "eval_s"):
                timings[k].append(getattr(rec, k))
            if ckpt is not None:
                ckpt.save({"task": rec.task, "model": model.state_dict(), "strategy": strategy.state_dict(),
                           "requires_grad": [p.requires_grad for p in model.parameters()],
                           "acc": acc, "val_acc": val_acc, "curves": curves, "timings": timings,
                           "optimizer": rec.optimizer_state, "torch_rng": torch.get_rng_state(),
                           "cuda_rng": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None})
            if stop_after_task is not None and stop_after_task <= rec.task < T - 1:
                break
    timings["total_s"] = float(sum(timings["train_s"]) + sum(timings["importance_s"]) + sum(timings["eval_s"]))
    timings["device"] = str(dev)
    result = RunResult(config=config, acc=acc, val_acc=val_acc, timings=timings, curves=curves)
    if cache_dir is not None and len(acc) == T:
        if keep_model:  # the weights first: a record on disk means its model is there too
            final = _final_state(model, strategy, config)
            atomic_write(Path(cache_dir) / f"{key}.pt", lambda tmp: torch.save(final, tmp))
        result.save(Path(cache_dir) / f"{key}.json")
        if Path(checkpoint_dir) == Path(cache_dir) / key:  # the cache's own checkpoint: no longer needed
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
    return result
