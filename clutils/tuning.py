"""Choosing a strength so that the choice does not depend on where the grid was put.

A value picked on a grid edge is not a choice: the optimum may lie beyond it. :func:`bracket` starts
from a grid, and while the best value sits on an edge it extends the grid one ``factor`` past that edge,
until the best value has an evaluated neighbour on both sides (it is *interior*) or a stated bound is
reached: a value that diverges (``score`` returns ``None`` or NaN), a limit the caller names (``lower``,
``upper``: the stability limit, zero, ...), or the budget of extensions. Then it refines: it evaluates
the geometric midpoints between the best value and its two neighbours (half decades on a decade grid)
and picks again. Every evaluation is kept, so the trace is the figure a chapter shows::

    t = bracket(lambda lam: val_acc(lam), [0.01, 0.1, 1.0])
    t.best, t.interior, t.bound      # 0.316..., True, None

The score is whatever the caller states (e.g. the mean over two *tuning* seeds of the validation
accuracy after the last task); higher is better. :func:`bracket_2d` tunes two strengths that interact
(λ_Ω with λ_SSL) on a small grid around their one-dimensional choices, extending it the same way.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ._checks import check_int, check_positive_float

__all__ = ["Scorer", "Tuning", "Tuning2D", "bracket", "bracket_2d", "tune", "tune_2d"]


@dataclass
class Tuning:
    """The trace of one bracketing: every value tried and its score (``None``: diverged)."""
    scores: dict[float, float | None]
    best: float
    interior: bool
    bound: str | None = None  # why the best value is on an edge, if it is
    extensions: int = 0
    runs: dict = field(default_factory=dict)  # value -> the runs behind its score (filled by tune)

    @property
    def values(self) -> list[float]:
        return sorted(self.scores)

    def table(self) -> list[dict]:
        """One row per value tried: value, score, chosen."""
        return [{"value": v, "score": self.scores[v], "chosen": v == self.best} for v in self.values]

    def describe(self) -> str:
        """'interior' or 'edge (why)', for a chapter's table of choices."""
        return "interior" if self.interior else f"edge ({self.bound})"


def _ok(s) -> bool:
    return s is not None and not (isinstance(s, float) and math.isnan(s))


def _best(scores: dict[float, float | None]) -> float | None:
    ok = {v: s for v, s in scores.items() if _ok(s)}
    return max(ok, key=lambda v: (ok[v], -v)) if ok else None  # ties: the smaller strength


def bracket(score: Callable[[float], float | None], grid: Sequence[float], *, factor: float = 10.0,
            lower: float | None = None, upper: float | None = None, max_extensions: int = 4,
            refine: bool = True) -> Tuning:
    """Best ``value`` of ``score(value)`` (higher is better) with the grid extended until it is interior.

    ``grid``: two or more positive values. ``factor``: the step of an extension (a decade). ``lower`` /
    ``upper``: values the search may not pass (the named bound). ``max_extensions``: extensions in all,
    after which an edge choice is reported with bound "budget". A value whose score is ``None``/NaN
    diverged: the search does not extend past it, and the edge next to it is a bound ("diverged at v").
    ``refine``: evaluate the geometric midpoints around the best value and choose again.
    """
    vals = sorted(check_positive_float(v, "every grid value") for v in grid)
    if len(set(vals)) < 2:
        raise ValueError(f"bracket needs at least two distinct grid values to tell an edge from the interior, got {list(grid)}")
    factor = check_positive_float(factor, "factor")
    if factor <= 1:
        raise ValueError(f"factor is the step of an extension, > 1 (e.g. 10 for a decade), got {factor}")
    check_int(max_extensions, "max_extensions", minimum=0)
    if lower is not None and vals[0] < lower or upper is not None and vals[-1] > upper:
        raise ValueError(f"the grid {vals} lies outside the stated bounds [{lower}, {upper}]")
    scores: dict[float, float | None] = {}

    def evaluate(v: float) -> float | None:
        if v not in scores:
            s = score(v)
            scores[v] = float(s) if _ok(s) else None
        return scores[v]

    for v in vals:
        evaluate(v)
    extensions, bound = 0, None
    while True:
        finite = [v for v in sorted(scores) if _ok(scores[v])]
        if not finite:
            raise ValueError(f"every value tried diverged ({sorted(scores)}): start from smaller strengths")
        best = _best(scores)
        i = finite.index(best)
        if 0 < i < len(finite) - 1:
            break  # a finite value on each side
        up = i == len(finite) - 1
        diverged = [v for v in scores if (v > best if up else v < best)]
        if diverged:  # the value beyond diverged: look between, down to half a step, then it is the bound
            d = min(diverged) if up else max(diverged)
            m = math.sqrt(best * d)
            if max(d / best, best / d) > math.sqrt(factor) * 1.01 and m not in scores:
                evaluate(m)
                continue
            bound = f"diverged at {d:.3g}"
            break
        nxt = best * factor if up else best / factor
        if lower is not None and nxt < lower:
            bound = f"lower limit {lower:g}"
            break
        if upper is not None and nxt > upper:
            bound = f"upper limit {upper:g}"
            break
        if extensions >= max_extensions:
            bound = "budget"
            break
        extensions += 1
        evaluate(nxt)
    if refine:  # the geometric midpoints between the best value and its finite neighbours
        finite = [v for v in sorted(scores) if _ok(scores[v])]
        i = finite.index(best)
        for j in (i - 1, i + 1):
            if 0 <= j < len(finite):
                evaluate(math.sqrt(best * finite[j]))
        best = _best(scores)
    finite = [v for v in sorted(scores) if _ok(scores[v])]
    i = finite.index(best)
    interior = 0 < i < len(finite) - 1
    if interior:
        bound = None
    elif bound is None:
        bound = "budget"
    return Tuning(scores, best, interior, bound, extensions)


@dataclass
class Tuning2D:
    """Two strengths tuned jointly: ``scores[(a, b)]``, the best pair, and whether it is interior in both."""
    scores: dict[tuple[float, float], float | None]
    best: tuple[float, float]
    interior: tuple[bool, bool]
    extensions: int = 0
    bounds: list[str] = field(default_factory=list)
    runs: dict = field(default_factory=dict)  # (a, b) -> the runs behind its score (filled by tune_2d)

    def table(self) -> list[dict]:
        return [{"a": a, "b": b, "score": s, "chosen": (a, b) == self.best} for (a, b), s in sorted(self.scores.items())]


def bracket_2d(score: Callable[[float, float], float | None], a: float, b: float, *, step: float = math.sqrt(10),
               max_extensions: int = 4) -> Tuning2D:
    """Tune a pair jointly on the 3 × 3 grid {a/step, a, a·step} × {b/step, b, b·step} around the
    one-dimensional choices (a, b), moving the grid a step towards any edge the best pair sits on,
    until the best pair is interior in both directions or the budget is spent (or an edge diverged)."""
    a, b = check_positive_float(a, "a"), check_positive_float(b, "b")
    step = check_positive_float(step, "step")
    if step <= 1:
        raise ValueError(f"step must be > 1, got {step}")
    scores: dict[tuple[float, float], float | None] = {}
    bounds: list[str] = []

    def axis(c: float, k: int) -> float:
        return c * step ** k

    ca, cb = 0, 0  # the grid's centre, in steps from (a, b)
    extensions = 0
    while True:
        for i in (-1, 0, 1):
            for j in (-1, 0, 1):
                key = (axis(a, ca + i), axis(b, cb + j))
                if key not in scores:
                    s = score(*key)
                    scores[key] = float(s) if _ok(s) else None
        ok = {k: s for k, s in scores.items() if _ok(s)}
        if not ok:
            raise ValueError("every pair tried diverged: start from smaller strengths")
        best = max(ok, key=lambda k: (ok[k], -k[0], -k[1]))
        ka = round(math.log(best[0] / a, step)) - ca
        kb = round(math.log(best[1] / b, step)) - cb
        if (ka, kb) == (0, 0) or extensions >= max_extensions:
            break
        # an edge: does the pair just beyond it diverge?
        beyond = (axis(a, ca + 2 * ka) if ka else best[0], axis(b, cb + 2 * kb) if kb else best[1])
        if beyond in scores and scores[beyond] is None:
            bounds.append(f"diverged at {beyond}")
            break
        ca, cb = ca + ka, cb + kb
        extensions += 1
    interior = []
    for ax in (0, 1):  # along each axis through the best pair: a finite neighbour on both sides?
        line = sorted((k for k in scores if k[1 - ax] == best[1 - ax]), key=lambda k: k[ax])
        i = line.index(best)
        lo_ok, hi_ok = any(_ok(scores[k]) for k in line[:i]), any(_ok(scores[k]) for k in line[i + 1:])
        interior.append(lo_ok and hi_ok)
        for side_ok, j in ((lo_ok, i - 1), (hi_ok, i + 1)):
            if not side_ok and 0 <= j < len(line) and scores[line[j]] is None:
                bounds.append(f"diverged at {line[j]}")
    interior, bounds = tuple(interior), list(dict.fromkeys(bounds))
    if not all(interior) and not bounds:
        bounds.append("budget")
    return Tuning2D(scores, best, interior, extensions, bounds)


class Scorer:
    """``score(*values)``: the mean over tuning ``seeds`` of the validation ``metric`` after the last task of
    ``make_strategy(*values)``, ``None`` when a run diverged. ``runs[values]``: the runs behind each score.
    What :func:`tune` and :func:`tune_2d` bracket; built once, the checks run before any training."""

    def __init__(self, make_strategy, make_model, stream, cfg, seeds: Sequence[int], *, reported_seeds: Sequence[int] = (),
                 metric: str = "acc", device: str = "auto", cache_dir=None, executor=None):
        self.seeds = [check_int(s, "every tuning seed") for s in seeds]
        if not self.seeds:
            raise ValueError("tuning needs at least one tuning seed, e.g. seeds=[100, 101]")
        shared = sorted(set(self.seeds) & {check_int(s, "every reported seed") for s in reported_seeds})
        if shared:
            raise ValueError(f"tuning seeds {shared} are also reported seeds: a choice made on them would be tested on "
                             f"them. Tune on other seeds (e.g. {[100 + i for i in range(len(self.seeds))]}).")
        tasks = stream.values() if isinstance(stream, dict) else [stream]  # a dict: one stream per seed
        if not all(getattr(s, "has_val", False) for s in tasks):
            raise ValueError("tuning scores on validation data, and the stream has none: "
                             "make_stream(..., val_fraction=0.1)")
        if metric not in ("acc", "forgetting", "bwt", "learning_acc"):
            raise ValueError(f"metric must be one of acc, forgetting, bwt, learning_acc (of summary('val')), got {metric!r}")
        self.make_strategy, self.make_model, self.stream, self.cfg = make_strategy, make_model, stream, cfg
        self.metric, self.device, self.cache_dir, self.executor = metric, device, cache_dir, executor
        self.runs: dict[tuple, list] = {}

    def __call__(self, *values: float) -> float | None:
        from .sweeps import RunFailure, run_seeds
        from .training import NonFiniteLossError

        rs = run_seeds(lambda: self.make_strategy(*values), self.make_model, self.stream, self.cfg, self.seeds,
                       device=self.device, cache_dir=self.cache_dir, executor=self.executor, on_error="return")
        self.runs[values] = rs
        for r in rs:
            if isinstance(r, RunFailure):
                if isinstance(r.exception, NonFiniteLossError) or r.error.startswith("NonFiniteLossError"):
                    return None
                raise RuntimeError(f"tuning {values}: {r}") from r.exception
        sign = -1.0 if self.metric == "forgetting" else 1.0  # higher is better
        return sign * sum(r.summary("val")[self.metric] for r in rs) / len(rs)


def tune(make_strategy: Callable[[float], "Strategy"], make_model: Callable[[], "nn.Module"], stream, cfg, grid: Sequence[float],
         seeds: Sequence[int], *, reported_seeds: Sequence[int] = (), metric: str = "acc", device: str = "auto",
         cache_dir=None, executor=None, **bracket_kw) -> Tuning:
    """:func:`bracket` over ``make_strategy(value)``, scored on validation data with tuning seeds.

    The score of a value is the mean over ``seeds`` of the validation ``metric`` after the last task
    (``RunResult.summary("val")``: accuracy averaged over every task's validation split); a value whose
    run diverged on any seed scores ``None``, a bound. ``reported_seeds``: the seeds the chapter reports,
    which must not take part in a choice (an overlap is refused). Runs go through the result cache.
    """
    score = Scorer(make_strategy, make_model, stream, cfg, seeds, reported_seeds=reported_seeds, metric=metric,
                   device=device, cache_dir=cache_dir, executor=executor)
    t = bracket(score, grid, **bracket_kw)
    t.runs = {v[0]: rs for v, rs in score.runs.items()}
    return t


def tune_2d(make_strategy: Callable[[float, float], "Strategy"], make_model: Callable[[], "nn.Module"], stream, cfg,
            a: float, b: float, seeds: Sequence[int], *, reported_seeds: Sequence[int] = (), metric: str = "acc",
            device: str = "auto", cache_dir=None, executor=None, **bracket_kw) -> Tuning2D:
    """:func:`bracket_2d` over ``make_strategy(a, b)`` around the one-dimensional choices (a, b), scored
    like :func:`tune` (the mean validation ``metric`` of the tuning seeds)."""
    score = Scorer(make_strategy, make_model, stream, cfg, seeds, reported_seeds=reported_seeds, metric=metric,
                   device=device, cache_dir=cache_dir, executor=executor)
    t = bracket_2d(score, a, b, **bracket_kw)
    t.runs = dict(score.runs)  # (a, b) -> runs
    return t
