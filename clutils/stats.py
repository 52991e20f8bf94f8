"""Intervals for the book's claims: paired differences over seeds, and Welch's interval against outside numbers.

Two methods run on the same seeds share their initial weights, batch order and task stream, so the honest
comparison is *paired*: the difference d_s = a_s - b_s seed by seed, its mean d̄ and the 95 % interval

    d̄ ± t_{0.975, n-1} · sd(d) / √n,

with the count of seeds on which the sign of d̄ holds. A sentence "A beats B" needs the whole interval
above zero; "indistinguishable" means the interval contains zero (and says how wide it is).

A number from a paper's table was not run on our seeds, so it is compared unpaired: Welch's interval for
the difference of two means with unequal variances, or, when the paper gives a mean and sd over n runs,
the same formula from those three numbers (``welch_from_summary``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats as _st

from ._checks import check_positive_float

__all__ = ["Interval", "mean_sd", "interval", "paired", "welch", "welch_from_summary", "pm"]


@dataclass(frozen=True)
class Interval:
    """A mean with a two-sided interval at ``level``; ``n_pos``/``n_neg`` count the paired differences above/below 0."""
    mean: float
    low: float
    high: float
    n: int
    level: float = 0.95
    n_pos: int | None = None
    n_neg: int | None = None
    sd: float = float("nan")

    @property
    def p_value(self) -> float:
        """Two-sided p of the one-sample (for ``paired``: paired) t-test of mean = 0; nan without a spread."""
        if self.n < 2 or not self.sd > 0:
            return float("nan")
        return float(2 * _st.t.sf(abs(self.mean) / (self.sd / math.sqrt(self.n)), self.n - 1))

    @property
    def verdict(self) -> str:
        """'higher' when the whole interval is above 0, 'lower' when below, else 'indistinguishable'."""
        if self.low > 0:
            return "higher"
        if self.high < 0:
            return "lower"
        return "indistinguishable"

    def format(self, digits: int = 2, sign: bool = True) -> str:
        """'+0.91 [+0.30, +1.52], 5/5 seeds > 0' (the sign count only for paired differences)."""
        f = f"{{:{'+' if sign else ''}.{digits}f}}"
        if math.isnan(self.low):
            s = f"{f.format(self.mean)} (n={self.n}, no interval)"
        else:
            s = f"{f.format(self.mean)} [{f.format(self.low)}, {f.format(self.high)}]"
        if self.n_pos is not None:
            if self.mean >= 0:
                s += f", {self.n_pos}/{self.n} seeds > 0"
            else:
                s += f", {self.n_neg}/{self.n} seeds < 0"
        return s

    def __str__(self) -> str:
        return self.format()


def _check_level(level: float) -> None:
    if check_positive_float(level, "level") >= 1:
        raise ValueError(f"level is the interval's coverage, between 0 and 1 (e.g. 0.95), got {level}")


def _values(values, name: str) -> np.ndarray:
    v = np.asarray(list(values.values()) if isinstance(values, Mapping) else values, dtype=float)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"{name} must be a non-empty sequence of numbers, got shape {v.shape}")
    if not np.isfinite(v).all():
        raise ValueError(f"{name} holds a non-finite value ({v.tolist()}): drop the failed seed and say so")
    return v


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; nan for one value)."""
    v = _values(values, "values")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else float("nan")


def pm(values: Sequence[float], digits: int = 1, show_n: bool = False) -> str:
    """'mean ± sd' over seeds (just the mean for one seed); ``show_n`` appends '(n=5)'."""
    m, sd = mean_sd(values)
    s = f"{m:.{digits}f}" if math.isnan(sd) else f"{m:.{digits}f} ± {sd:.{digits}f}"
    return f"{s} (n={len(_values(values, 'values'))})" if show_n else s


def interval(values: Sequence[float], level: float = 0.95) -> Interval:
    """Student-t interval for the mean of ``values``: mean ± t_{(1+level)/2, n-1} · sd / √n."""
    _check_level(level)
    v = _values(values, "values")
    m, n = float(v.mean()), len(v)
    if n < 2:
        return Interval(m, float("nan"), float("nan"), n, level)
    sd = float(v.std(ddof=1))
    half = float(_st.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(m, m - half, m + half, n, level, sd=sd)


def paired(a: Sequence[float] | Mapping, b: Sequence[float] | Mapping, level: float = 0.95) -> Interval:
    """Interval for mean(a - b) over paired seeds, with the count of seeds on each side of 0.

    ``a`` and ``b`` are sequences in the same seed order, or mappings seed → value, paired by key
    (a seed missing or ``None`` on either side is left out; at least one must be shared).
    """
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        if not (isinstance(a, Mapping) and isinstance(b, Mapping)):
            raise TypeError("paired: pass two sequences or two mappings seed → value, not one of each")
        keys = [k for k in a if a[k] is not None and b.get(k) is not None]
        if not keys:
            raise ValueError(f"paired: no seed holds a value in both (a has {sorted(a)}, b has {sorted(b)})")
        a, b = [a[k] for k in keys], [b[k] for k in keys]
    va, vb = _values(a, "a"), _values(b, "b")
    if len(va) != len(vb):
        raise ValueError(f"paired: a has {len(va)} values and b {len(vb)}; pair them seed by seed")
    d = va - vb
    r = interval(d, level)
    return Interval(r.mean, r.low, r.high, r.n, level, int((d > 0).sum()), int((d < 0).sum()), r.sd)


def welch_from_summary(mean_a: float, sd_a: float, n_a: int, mean_b: float, sd_b: float, n_b: int,
                       level: float = 0.95) -> Interval:
    """Welch's interval for mean_a - mean_b from two (mean, sd, n) summaries (e.g. ours against a paper's table).

    A side with n = 1 or sd = nan (a paper that reports one run or no spread) contributes no variance;
    if neither side has a spread, there is no interval; if the spreads measured are zero (every run gave
    the same number), the interval is the difference itself.
    """
    _check_level(level)
    has_a, has_b = n_a > 1 and not math.isnan(sd_a), n_b > 1 and not math.isnan(sd_b)
    va = sd_a ** 2 / n_a if has_a else 0.0
    vb = sd_b ** 2 / n_b if has_b else 0.0
    diff = float(mean_a - mean_b)
    n = int(n_a + n_b)
    if va + vb == 0:
        edge = diff if has_a or has_b else float("nan")
        return Interval(diff, edge, edge, n, level)
    terms = [(v, k - 1) for v, k in ((va, n_a), (vb, n_b)) if v > 0]
    dof = (va + vb) ** 2 / sum(v ** 2 / k for v, k in terms)  # Welch–Satterthwaite
    half = float(_st.t.ppf((1 + level) / 2, dof)) * math.sqrt(va + vb)
    return Interval(diff, diff - half, diff + half, n, level)


def welch(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval:
    """Welch's interval for mean(a) - mean(b), two unpaired groups."""
    va, vb = _values(a, "a"), _values(b, "b")
    sd = lambda v: float(v.std(ddof=1)) if len(v) > 1 else float("nan")  # noqa: E731
    return welch_from_summary(float(va.mean()), sd(va), len(va), float(vb.mean()), sd(vb), len(vb), level)
