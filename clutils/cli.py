r"""``clutils``: run an experiment file (a grid of configurations x seeds) here or on a Dask cluster.

::

    clutils run experiments/04_selfless_seeds.toml --dry-run      # list the runs, check the file
    clutils run experiments/04_selfless_seeds.toml                 # run them in this process
    clutils run EXP.toml --scheduler local:2                       # on a LocalCluster of 2 workers
    clutils run EXP.toml --scheduler tcp://10.0.0.5:8786           # on a running Dask scheduler
    clutils report results/04_selfless_seeds                       # rebuild the summary

The experiment-file format, its checks and the summary live in :mod:`clutils.experiments`.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Sequence

from . import experiments as _experiments
from .experiments import (STRATEGY_TYPES, Experiment, ExperimentError, _load_results, _write_manifest,
                          load_experiment, specs, summarize)

__all__ = ["main", "dask_executor", "load_experiment", "Experiment", "ExperimentError", "STRATEGY_TYPES", "summarize"]


def dask_executor(address: str, timeout: str = "10s"):
    """``local:N`` starts a LocalCluster of N single-thread worker processes; anything else is a scheduler address.

    Returns ``(executor, close)``.  Unreachable schedulers fail here, before any run.
    """
    try:
        import distributed
    except ImportError:
        raise ExperimentError("--scheduler needs Dask: pip install 'clutils[dask]' (dask[distributed]).") from None
    m = re.fullmatch(r"local:(\d+)", address)
    if address.startswith("local") and not m:
        raise ExperimentError(f"--scheduler {address!r}: write local:N with N the number of workers, e.g. local:2.")
    if m:
        n = int(m.group(1))
        if n < 1:
            raise ExperimentError(f"--scheduler {address!r}: a local cluster needs at least 1 worker, e.g. local:2.")
        cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                           dashboard_address=None, silence_logs=40)
        client = distributed.Client(cluster)

        def close():
            client.close()
            cluster.close()
    else:
        if not re.fullmatch(r"(tcp|tls|inproc|ucx|ws|wss)://[^\s/]+(:\d+)?/?|[A-Za-z0-9.\-]+:\d+", address):
            raise ExperimentError(f"--scheduler {address!r} is not a scheduler address: write tcp://HOST:PORT "
                                  f"(e.g. tcp://127.0.0.1:8786), HOST:PORT, or local:N.")
        try:
            client = distributed.Client(address, timeout=timeout)
        except (OSError, TimeoutError, ValueError, TypeError) as err:
            raise ExperimentError(
                f"--scheduler {address!r}: cannot reach a Dask scheduler there ({type(err).__name__}: {err}). "
                f"Start one (`dask scheduler` and `dask worker ADDRESS`), check the address (tcp://HOST:8786), "
                f"or use --scheduler local:N.") from None
        close = client.close
    return client.get_executor(), close


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="clutils", description=__doc__.split("\n\n")[0].strip("r\"` "),
                                 epilog="See `clutils run --help` for the experiment file format.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="{run,report}")
    run = sub.add_parser("run", help="run an experiment file (a grid of configurations x seeds)",
                         description=__doc__.split("The experiment-file format")[0] + _experiments.__doc__.split("\n\n", 1)[1],
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("experiment", type=Path, help="the experiment file (.toml)")
    run.add_argument("--dry-run", action="store_true", help="check the file and list the runs; train nothing")
    run.add_argument("--scheduler", metavar="ADDRESS",
                     help="send the runs to a Dask scheduler (tcp://HOST:8786), or local:N for a LocalCluster of N "
                          "single-thread worker processes; default: run here, one after the other")
    run.add_argument("--out", type=Path, help="results folder (default: results/<experiment file name>)")
    run.add_argument("--device", help="override the file's device (auto, cpu, cuda)")
    run.add_argument("--cache", type=Path, metavar="DIR",
                     help="the result cache (default OUT/.cache); a chapter's cache, e.g. book/results/05_scenarios, "
                          "reloads the runs the book made")
    run.add_argument("--threads", type=int, metavar="N",
                     help="torch threads per run (default: the process's); results are bit for bit those of a "
                          "single-thread Dask worker at --threads 1")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    rep = sub.add_parser("report", help="rebuild the summary table of a results folder",
                         description="Read every RunResult (*.json) in FOLDER and print and write the summary "
                                     "(mean ± sd over seeds per configuration) to FOLDER/summary.md and summary.csv.")
    rep.add_argument("folder", type=Path)
    return ap


def _dry_run(exp: Experiment, out: Path) -> None:
    n_cfg = len({r.configuration for r in exp.runs})
    print(f"{exp.path}: {len(exp.runs)} runs = {n_cfg} configurations x {len(exp.seeds)} seeds "
          f"on {exp.stream['kind']} {exp.stream['dataset']}, results -> {out}")
    for r in exp.runs:
        parts = " + ".join(f"{p['type']}(" + ", ".join(f"{k}={v}" for k, v in p.items() if k != "type") + ")"
                           for p in r.strategy) or "naive"
        print(f"  {r.index:4d}  {r.configuration}  seed={r.seed}  [{parts}]")


def _run(args) -> int:
    from .sweeps import RunFailure, run_many

    exp = load_experiment(args.experiment)
    if args.device:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", args.device):
            raise ExperimentError(f"--device {args.device!r}: use auto, cpu or cuda (cuda:N).")
        exp.device = args.device
    if args.threads is not None and args.threads < 1:
        raise ExperimentError(f"--threads {args.threads}: give at least 1.")
    out = args.out or Path("results") / exp.path.stem
    for part in (out, *out.parents):
        if part.exists() and not part.is_dir():
            raise ExperimentError(f"--out {out}: {part} is a file, not a folder; choose another --out.")
    names: dict[str, str] = {}
    for run in exp.runs:
        if names.setdefault(run.name, run.configuration) != run.configuration:
            raise ExperimentError(f"configurations {names[run.name]!r} and {run.configuration!r} would write one "
                                  f"file ({run.name}.json); give them distinct labels.")
    if args.dry_run:
        _dry_run(exp, out)
        return 0
    executor, close = dask_executor(args.scheduler) if args.scheduler else (None, lambda: None)
    try:
        out.mkdir(parents=True, exist_ok=True)
        print(f"{exp.path}: {len(exp.runs)} runs -> {out}" + (f" on {args.scheduler}" if args.scheduler else ""))
        results = run_many(specs(exp, out, args.cache, args.threads), executor=executor, progress=not args.no_progress, on_error="return")
    finally:
        close()
    done = [r for r in results if not isinstance(r, RunFailure)]
    failed = [r for r in results if isinstance(r, RunFailure)]
    from .runs import fingerprint

    files = {}
    for run, res in zip(exp.runs, results):
        if not isinstance(res, RunFailure):
            res.save(out / f"{run.name}.json")
            files[f"{run.name}.json"] = fingerprint(res.config)
    _write_manifest(out, exp.path, files)
    if done:
        md, _ = summarize(done, out)
        print(md, end="")
        print(f"written: {out / 'summary.md'}, {out / 'summary.csv'}, {len(done)} run files")
    if failed:
        print(f"{len(failed)} of {len(results)} runs failed:", file=sys.stderr)
        for f in failed:
            print(f"  {f}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clutils`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        md, _ = summarize(_load_results(args.folder), args.folder)
        print(md, end="")
        print(f"written: {args.folder / 'summary.md'}, {args.folder / 'summary.csv'}")
        return 0
    except ExperimentError as err:
        print(f"clutils: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
