r"""Sweeps and multi-seed runs, in-process or on any executor (a process pool, a Dask cluster).

Sweeping a regularisation strength: a consolidation penalty
:math:`\lambda \sum_i \Omega_i (\theta_i - \theta^*_i)^2` trades stability (large :math:`\lambda`)
against plasticity (small :math:`\lambda`).  To compare methods fairly, each gets the same handful of
log-spaced values, every run starting from the same initial weights (``seed_everything(seed)`` right
before ``make_model()``).

Every run is one self-contained job (:class:`RunSpec`): seed, build the model, train.  Jobs run in this
process (``executor=None``) or on any :class:`concurrent.futures.Executor` -- a
``ProcessPoolExecutor`` on a laptop, or a Dask cluster through
``distributed.Client(address).get_executor()``.  A run's result does not depend on where it ran: the
same sweep gives the same accuracy matrices bit for bit in-process and on a cluster, on the same kind of
device and with the same number of intra-op threads per run: on the CPU the float sums of a backward
pass are split across threads, so 1 and 2 threads differ in the last bits.  A Dask worker started with
``threads_per_worker=1`` trains with one thread; ``threads=1`` makes the in-process runs match it.  With ``cache_dir`` each finished run is stored by :func:`~clutils.train_stream`'s result
cache, so a killed sweep resumes where it stopped and a finished one reloads.  A failing run (a
diverging :math:`\lambda`, a bad setting) is reported with its configuration and error while the others
finish.  Nothing here imports Dask.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import pickle
import sys
import threading
import traceback
import warnings
from concurrent.futures import Executor, Future, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .streams import Stream, make_stream
from .results import RunResult
from .strategies import Strategy
from .runs import train_stream
from .training import TrainConfig, resolve_device, seed_everything

__all__ = ["sweep", "run_seeds", "run_many", "RunSpec", "RunFailure", "sweep_table", "best_value", "METRICS"]

# summary metrics for which higher is better (forgetting is not: it is its own column)
METRICS = ("acc", "bwt", "learning_acc")
ON_ERROR = ("raise", "return")


@dataclass
class RunSpec:
    """One run: ``seed_everything(seed); train_stream(make_model(), stream, strategy, cfg)``.

    ``stream`` is a :class:`Stream` or the keyword arguments of :func:`~clutils.make_stream`
    (``{"kind": "permuted", "dataset": "mnist", "n_tasks": 10}``): a recipe travels to a worker in a
    few bytes and each worker process builds the stream once, where a ``Stream`` travels whole with
    every run.  ``strategy`` must be a fresh object (strategies keep state across tasks).  ``extras``
    land in the result's ``extras`` (the swept value, the seed, a label).
    """

    make_model: Callable[[], nn.Module]
    strategy: Strategy | None
    stream: Stream | dict
    cfg: TrainConfig
    seed: int
    device: str = "auto"
    cache_dir: str | None = None
    extras: dict = field(default_factory=dict)
    threads: int | None = None  # torch intra-op threads for this run (None: leave the process's setting)
    keep_model: bool = False  # keep the final weights beside the cached record (a sweep's runs rarely need them)


@dataclass
class RunFailure:
    """A run that raised: which one (``extras``: value, seed, label), and the error."""

    index: int
    extras: dict
    error: str  # "TypeName: message"
    traceback: str = ""
    exception: BaseException | None = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        ex = self.extras
        keys = ("configuration", "seed") if "configuration" in ex else tuple(ex)
        what = ", ".join(f"{k}={ex[k]}" for k in keys if k in ex) or "no extras"
        return f"run {self.index} ({what}) failed: {self.error}"


# seeding and building a model use the process-wide generators: one run at a time does it, so runs on a
# thread pool (or a Dask worker with several threads) start from the same weights as serial ones
_INIT_LOCK = threading.Lock()
_STREAMS: dict[str, Stream] = {}  # recipe -> stream, per process (a worker builds each stream once)


def _resolve_stream(stream: Stream | dict, device: str = "cpu") -> Stream:
    """A recipe's stream, built once per process and device (on a GPU: the data lives there)."""
    if isinstance(stream, Stream):
        return stream
    dev = str(resolve_device(device))
    key = json.dumps([stream, dev], sort_keys=True, default=str)
    if key not in _STREAMS:
        if len(_STREAMS) >= 3:  # a sweep uses one stream; keep memory bounded when several are mixed
            _STREAMS.pop(next(iter(_STREAMS)))
        _STREAMS[key] = make_stream(**stream, device=dev)
    return _STREAMS[key]


_THREADS_LOCK = threading.Lock()
_WORKER_THREADS: list[int] = []  # the thread count a pool thread set for this process (at most one value)


@contextlib.contextmanager
def _threads(n: int | None):
    """torch's intra-op thread count for one run.  It is process-wide: the main thread sets it for the run
    and restores it after; a pool thread (a thread pool, a Dask worker) sets it once for the whole
    process and leaves it, refusing a run that asks for another count than the process already runs."""
    if n is None or (torch.get_num_threads() == n and threading.current_thread() is not threading.main_thread()):
        yield
        return
    if threading.current_thread() is threading.main_thread():
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            yield
        finally:
            torch.set_num_threads(before)
        return
    with _THREADS_LOCK:
        if _WORKER_THREADS and _WORKER_THREADS[0] != n:
            raise ValueError(f"this run asks for threads={n}, but runs of this process already use "
                             f"{_WORKER_THREADS[0]} (the setting is process-wide); give every run of a thread "
                             f"pool the same threads, or use a process pool.")
        if not _WORKER_THREADS:
            torch.set_num_threads(n)
            _WORKER_THREADS.append(n)
    yield


def execute(spec: RunSpec) -> RunResult:
    """Run one :class:`RunSpec` here (what every worker does)."""
    with _INIT_LOCK:
        stream = _resolve_stream(spec.stream, spec.device)
        seed_everything(spec.seed)
        model = spec.make_model()
    kwargs = {} if spec.cache_dir is None else {"cache_dir": spec.cache_dir}
    with _threads(spec.threads):
        res = train_stream(model, stream, spec.strategy, spec.cfg, device=spec.device, progress=False,
                           keep_model=spec.keep_model, **kwargs)
    res.extras.update(spec.extras)
    return res


def _execute_pickled(payload: bytes, stream: Stream | dict) -> RunResult:
    return execute(dataclasses.replace(pickle.loads(payload), stream=stream))


def _dumps(spec: RunSpec) -> bytes:
    """Serialise a run for another process: cloudpickle when installed (functions defined in a notebook
    or a lambda travel by value), else pickle (then make_model must be importable, e.g. a module-level
    function or a functools.partial of one)."""
    try:
        import cloudpickle
        dumps = cloudpickle.dumps
    except ImportError:  # pragma: no cover - cloudpickle comes with dask
        dumps = pickle.dumps
    try:
        return dumps(spec)
    except Exception as err:
        raise TypeError(f"this run cannot be sent to another process ({type(err).__name__}: {err}); make_model and "
                        f"the strategy must be picklable: define them at module level (or install cloudpickle, "
                        f"which also sends lambdas and notebook functions).") from err


def _failure(i: int, spec: RunSpec, err: BaseException) -> RunFailure:
    tb = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    return RunFailure(i, dict(spec.extras), f"{type(err).__name__}: {err}", tb, err)


def _bar(total: int, enabled: bool):
    from tqdm.std import tqdm  # plain-text bar: renders in notebooks without widget JavaScript

    return tqdm(total=total, desc="runs", unit="run", disable=not enabled, file=sys.stdout, ascii=True,
                mininterval=0.5, dynamic_ncols=False, ncols=90)


def run_many(specs: Sequence[RunSpec], *, executor: Executor | None = None, progress: bool = True,
             on_error: str = "raise") -> list[RunResult | RunFailure]:
    """Run every spec, each as one job, and return the results in the order of ``specs``.

    ``executor=None`` runs them one after the other in this process; otherwise each is submitted to
    ``executor`` (any :class:`concurrent.futures.Executor`, e.g. ``distributed.Client(...).get_executor()``)
    and collected as it finishes.  The progress bar counts finished runs.  A failing run is reported at
    once with its ``extras`` and error and the others go on.  At the end, ``on_error="raise"``
    re-raises the first failed run's exception (its type kept, e.g. :class:`~clutils.NonFiniteLossError`),
    with a note listing every failed run and the attributes ``failures`` (the :class:`RunFailure` s) and
    ``results`` (``None`` where a run failed); ``"return"`` puts a :class:`RunFailure` in each failed
    run's place instead.
    """
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be 'raise' or 'return', got {on_error!r}.")
    specs = list(specs)
    out: list[RunResult | RunFailure | None] = [None] * len(specs)
    bar = _bar(len(specs), progress)
    failures: list[RunFailure] = []

    def record(i: int, res: RunResult | None, err: BaseException | None) -> None:
        if err is None:
            out[i] = res
        else:
            fail = _failure(i, specs[i], err)
            failures.append(fail)
            out[i] = fail
            bar.write(str(fail), file=sys.stderr)
        bar.update(1)
        if failures:
            bar.set_postfix(failed=len(failures))

    try:
        if executor is None:
            for i, spec in enumerate(specs):
                try:
                    record(i, execute(spec), None)
                except Exception as err:  # noqa: BLE001 - reported with the run's configuration
                    record(i, None, err)
        else:
            # the stream travels as its own argument: the executor pickles the one object when it sends a job,
            # instead of every pending job holding its own serialised copy of the images
            futures: dict[Future, int] = {
                executor.submit(_execute_pickled, _dumps(dataclasses.replace(s, stream={})), s.stream): i
                for i, s in enumerate(specs)}
            for fut in as_completed(futures):
                err = fut.exception()
                record(futures[fut], None if err else fut.result(), err)
    finally:
        bar.close()
    if failures and on_error == "raise":
        failures.sort(key=lambda f: f.index)
        err = failures[0].exception
        err.failures = failures
        err.results = [r if isinstance(r, RunResult) else None for r in out]
        if hasattr(err, "add_note"):
            lines = "\n  ".join(str(f) for f in failures)
            err.add_note(f"{len(failures)} of {len(specs)} runs failed (the others finished):\n  {lines}\n"
                         f"Pass on_error='return' to get a RunFailure in place of each failed run instead.")
        raise err
    return out  # type: ignore[return-value]


def _check_values(values: Sequence[float]) -> list[float]:
    try:
        vals = [float(v) for v in values]
    except TypeError:
        raise TypeError(f"values must be a sequence of numbers, e.g. [0.1, 1, 10]; got {values!r}.") from None
    if not vals:
        raise ValueError("sweep needs at least one value, e.g. [0.1, 1, 10].")
    bad = [v for v in vals if not math.isfinite(v)]
    if bad:
        raise ValueError(f"every swept value must be finite; got {bad}.")
    return vals


def _check_callables(make_strategy: Any, make_model: Any, what: str) -> None:
    if not callable(make_strategy) or not callable(make_model):
        raise TypeError(f"make_strategy must be a function {what} -> Strategy and make_model a function () -> nn.Module.")


def _n_tasks(stream: Stream | dict) -> int:
    if isinstance(stream, Stream):
        return len(stream)
    if not isinstance(stream, dict):
        raise TypeError(f"stream must be a Stream or a dict of make_stream arguments, got {type(stream).__name__}.")
    if stream.get("kind", "permuted") == "permuted":
        return int(stream.get("n_tasks", 10))
    return len(_resolve_stream(stream))


def _cache(cache_dir: str | Path | None) -> str | None:
    return None if cache_dir is None else str(Path(cache_dir).expanduser().resolve())


def sweep(values: Sequence[float], make_strategy: Callable[[float], Strategy], make_model: Callable[[], nn.Module],
          stream: Stream | dict, cfg: TrainConfig, *, seed: int | None = None, device: str = "auto",
          progress: bool = False, executor: Executor | None = None, cache_dir: str | Path | None = None,
          on_error: str = "raise", threads: int | None = None) -> list[RunResult | RunFailure]:
    r"""One run per value ``v``: ``seed_everything(seed); train_stream(make_model(), stream, make_strategy(v), cfg)``.

    ``seed`` defaults to ``cfg.seed``, so every run starts from the same weights and sees the
    same batches; only ``v`` differs.  All strategies are built (and so their arguments checked)
    before the first run trains.  Returns the runs in the order of ``values``, each with
    ``extras["value"] = v``.  ``executor``, ``cache_dir``, ``on_error``: see :func:`run_many` and
    the module docstring; ``stream`` may be a recipe dict (see :class:`RunSpec`); ``threads``: torch
    threads per run (``1`` matches a Dask worker with ``threads_per_worker=1`` bit for bit).
    """
    vals = _check_values(values)
    _check_callables(make_strategy, make_model, "value")
    cfg.validate(_n_tasks(stream))
    strategies = [make_strategy(v) for v in vals]  # bad values (e.g. lam < 0) fail here, before any training
    seed = cfg.seed if seed is None else seed
    specs = [RunSpec(make_model, s, stream, cfg, seed, device, _cache(cache_dir), {"value": v}, threads)
             for v, s in zip(vals, strategies)]
    return run_many(specs, executor=executor, progress=progress, on_error=on_error)


def run_seeds(make_strategy: Callable[[], Strategy], make_model: Callable[[], nn.Module], stream: Stream | dict,
              cfg: TrainConfig, seeds: Sequence[int], *, device: str = "auto", progress: bool = False,
              executor: Executor | None = None, cache_dir: str | Path | None = None,
              on_error: str = "raise", threads: int | None = None,
              keep_model: bool = False) -> list[RunResult | RunFailure]:
    """One run per seed ``s``: ``seed_everything(s); train_stream(make_model(), stream, make_strategy(), cfg with seed=s)``.

    The seed sets the initial weights and the order of the batches (``cfg.seed``); the stream stays
    the same.  ``make_strategy`` takes no argument, or one: the seed (a strategy that samples, such
    as EWC's sampled Fisher, seeded with the run).  Returns the runs in the order of ``seeds``, each
    with ``extras["seed"] = s``.  ``keep_model``: keep each run's final weights in the cache too.
    """
    seeds = list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds):
        raise ValueError(f"seeds must be a non-empty list of ints, e.g. [0, 1, 2, 3, 4]; got {seeds!r}.")
    _check_callables(make_strategy, make_model, "()")
    cfg.validate(_n_tasks(stream))
    takes_seed = any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                     for p in inspect.signature(make_strategy).parameters.values())
    strategies = [make_strategy(s) if takes_seed else make_strategy() for s in seeds]
    specs = [RunSpec(make_model, st, stream, dataclasses.replace(cfg, seed=s), s, device, _cache(cache_dir),
                     {"seed": s}, threads, keep_model) for s, st in zip(seeds, strategies)]
    return run_many(specs, executor=executor, progress=progress, on_error=on_error)


def sweep_table(results: Sequence[RunResult], method: str | None = None):
    r"""One row per run: ``value``, ``acc``, ``forgetting``, ``bwt``, ``learning_acc`` (fractions), ``train_s``.

    ``acc`` is the mean final accuracy :math:`\frac1T\sum_j R_{T-1,j}`; ``forgetting`` the mean over old
    tasks of :math:`\max_{l<T-1} R_{l,j} - R_{T-1,j}` (see :mod:`clutils.metrics`).  Failed runs are left out.
    """
    import pandas as pd

    rows = []
    for res in results:
        if isinstance(res, RunFailure):
            continue
        row = {"value": res.extras.get("value"), **res.summary()}
        if res.val_acc:
            row["val_acc"] = res.summary("val")["acc"]
        row["train_s"] = float(sum(res.timings.get("train_s", [])))
        rows.append({"method": method, **row} if method is not None else row)
    return pd.DataFrame(rows)


def best_value(results: Sequence[RunResult], metric: str = "acc", split: str = "val") -> float:
    """The swept value whose run has the highest ``metric`` (one of :data:`METRICS`) on ``split``; ties go to the first.

    Selection is on the validation splits (``make_stream(..., val_fraction=0.1)``) unless
    ``split="test"`` is asked for explicitly, which warns: a setting chosen on the test set
    makes the test number an optimistic estimate.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)} (higher is better).")
    if split not in ("val", "test"):
        raise ValueError(f"split must be 'val' (the default) or 'test', got {split!r}.")
    results = [r for r in results if not isinstance(r, RunFailure)]
    if not results:
        raise ValueError("best_value needs at least one finished run.")
    if split == "val" and not all(r.val_acc for r in results):
        raise ValueError("best_value selects on validation data, and these runs have none: build the stream with "
                         "make_stream(..., val_fraction=0.1). (To select on the test set anyway, pass split='test'; "
                         "the choice is then flagged.)")
    if split == "test":
        warnings.warn("best_value(split='test'): the setting is chosen on the test set, so its test accuracy is "
                      "optimistic; report it as such.", stacklevel=2)
    scores = [res.summary(split)[metric] for res in results]
    return float(results[max(range(len(scores)), key=scores.__getitem__)].extras["value"])
