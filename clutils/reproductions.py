r"""The reproductions registry: every outside number the book compares with, beside ours.

``book/reproductions.toml`` holds one ``[[row]]`` per outside number::

    [[row]]
    id = "ssl-mas-h64"                       # unique
    chapter = "04_selfless"
    claim = "MAS, permuted MNIST (5 tasks), 784-64-64-10: mean final accuracy (%)"
    source = "paper + table / code repository + commit + how it was run"
    protocol = "their protocol, and how ours differs"
    hyperparameters = "Theirs: ... as in <source>; how chosen: ... (or 'not stated in <source>'). Ours: ..."
    reference = { mean = 90.90, sd = 0.21, n = 5 }   # theirs (sd, n optional)
    tolerance = 1.0                          # points: the band the interval for ours - theirs must lie in
    verdict = "reproduced"                   # the interval's verdict: reproduced / differs / inconclusive
    note = "..."                             # (a "differs" row explains the difference, with a measurement)
    # non_discriminating = "why every method scores alike here"   (optional: the row tests the pipeline only)
    # ours, either from committed run records (RunResult JSON files, e.g. the result cache) ...
    results = "book/results/04_selfless"
    select = { "strategy.parts.0.name" = "mas", "strategy.parts.1.method" = "none", "model" = "*64*" }
    # (a value is matched exactly, a string as a glob pattern, and "<default>" matches a setting left out
    # of the config because it is at its default, e.g. "strategy.kind" = "<default>" for MAS's per-sample Ω)
    metric = "acc"                           # a RunResult.summary() key, reported x 100
    # ... or from a number a chapter glued into its committed outputs (one run):
    # notebook = "book/02_ewc.ipynb"
    # glue = "ch2_wi_sgd_pooled"
    # glue_sd = "ch2_wi_sgd_pooled_sd"      # optional, with glue_n: the chapter glued a mean over seeds
    # glue_n = "ch2_wi_sgd_pooled_n"

:func:`table` computes ours (mean ± sd over the matching runs, n), Δ, Welch's 95 % interval for
ours − theirs and its verdict (:func:`interval_verdict`); :func:`write_page` renders
``book/reproductions.md``; the test suite checks the page is current and that every row's verdict is
the one its interval gives, so a change that moves a number out of its band fails CI.
"""
from __future__ import annotations

import fnmatch
import json
import math
import statistics
import tomllib
from pathlib import Path
from typing import Any

from .results import RunResult

__all__ = ["load_registry", "ours", "interval_verdict", "table", "render", "write_page", "REGISTRY", "PAGE"]

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = ROOT / "book" / "reproductions.toml"
PAGE = ROOT / "book" / "reproductions.md"
REQUIRED = ("id", "chapter", "claim", "source", "protocol", "hyperparameters", "reference", "tolerance", "verdict")
TEXT = ("claim", "source", "protocol", "hyperparameters")  # required, and each a non-empty text
HYPERPARAMETERS_HINT = (
    " Give the row hyperparameters = \"...\": which side chose the hyper-parameters, on what data, e.g. \"Theirs: "
    "lambda = 0.1 as in the authors' demo script; how it was chosen is not stated in <source>. Ours: copied from "
    "theirs (no tuning of our own)\" or \"Ours: clutils.tuning on validation data of tuning seeds 100-101, "
    "reported seeds 0-4\"; write 'not stated in <source>' for what the source does not say.")
VERDICTS = ("reproduced", "differs", "inconclusive", "not reproduced")
MAX_SEEDS = 200  # "seeds to decide" is searched up to this many


def load_registry(path: str | Path = REGISTRY) -> list[dict]:
    """The rows of the registry, checked: required keys (the texts non-empty, ``hyperparameters`` among them: who
    chose the hyper-parameters, on what data), a known verdict, one source of ours, unique ids."""
    path = Path(path)
    rows = tomllib.loads(path.read_text()).get("row", [])
    seen = set()
    for i, row in enumerate(rows):
        where = f"{path.name}, row {i + 1} ({row.get('id', 'no id')})"
        missing = [k for k in REQUIRED if k not in row]
        empty = [k for k in TEXT if k in row and not (isinstance(row[k], str) and row[k].strip())]
        if missing or empty:
            what = "; ".join(([f"missing {missing}"] if missing else []) + ([f"empty {empty}"] if empty else []))
            hint = HYPERPARAMETERS_HINT if "hyperparameters" in missing + empty else ""
            text = f" ({', '.join(TEXT)} take non-empty text)" if empty else ""
            raise ValueError(f"{where}: {what}{text}.{hint}")
        if row["verdict"] not in VERDICTS:
            raise ValueError(f"{where}: verdict must be one of {VERDICTS}, got {row['verdict']!r}.")
        if row["verdict"] in ("differs", "not reproduced") and not row.get("note"):
            raise ValueError(f"{where}: a {row['verdict']!r} row needs a note explaining the difference.")
        if ("glue_sd" in row) != ("glue_n" in row) or ("glue_sd" in row and "glue" not in row):
            raise ValueError(f"{where}: glue_sd and glue_n come together, beside glue (the chapter's mean over seeds).")
        if "non_discriminating" in row and not (isinstance(row["non_discriminating"], str) and row["non_discriminating"]):
            raise ValueError(f"{where}: non_discriminating takes the reason as text (why every method scores alike here).")
        if ("results" in row) == ("glue" in row) and row["verdict"] != "not reproduced":
            raise ValueError(f"{where}: give ours either as results + select or as notebook + glue.")
        if row["id"] in seen:
            raise ValueError(f"{where}: duplicate id.")
        seen.add(row["id"])
    return rows


def _get(d: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if isinstance(d, list):
            d = d[int(part)] if part.isdigit() and int(part) < len(d) else None
        elif isinstance(d, dict):
            d = d.get(part)
        else:
            return None
    return d


DEFAULT = "<default>"  # a select value: the setting is absent from the config, i.e. at its default


def _matches(config: dict, select: dict) -> bool:
    for key, want in select.items():
        got = _get(config, key)
        if want == DEFAULT:  # a run's config leaves out the settings at their defaults
            if got is not None:
                return False
        elif isinstance(want, str) and isinstance(got, str):
            if not fnmatch.fnmatchcase(got, want):
                return False
        elif got != want:
            return False
    return True


def _glues(notebook: Path) -> dict[str, str]:
    """The text of every value a notebook glued (MyST-NB's glue: the value under <mime_prefix>text/plain)."""
    out: dict[str, str] = {}
    for cell in json.loads(notebook.read_text())["cells"]:
        for o in cell.get("outputs", []):
            scrap = o.get("metadata", {}).get("scrapbook", {})
            if "name" in scrap:
                out.setdefault(scrap["name"], o["data"][scrap.get("mime_prefix", "") + "text/plain"])
    return out


def _glued(notebook: Path, name: str, glues: dict[str, str] | None = None) -> float:
    glues = _glues(notebook) if glues is None else glues
    if name not in glues:
        raise KeyError(f"{notebook.name} glues no value named {name!r}; run the chapter or fix the registry.")
    return float(glues[name])


def ours(row: dict, root: Path = ROOT) -> list[float]:
    """Our values for a row (one per matching run, x 100 for a summary metric)."""
    if "glue" in row:
        return [_glued(root / row["notebook"], row["glue"])]
    if "results" not in row:
        return []
    values = []
    for path in sorted((root / row["results"]).glob("*.json")):
        res = RunResult.load(path)
        if _matches(res.config, row.get("select", {})):
            values.append(100 * res.summary()[row.get("metric", "acc")])
    return values


def interval_verdict(ours_mean: float, ours_sd: float, ours_n: int, ref: dict, tolerance: float) -> tuple:
    """The verdict of a row from both sides' spread: ``(verdict, interval, seeds_to_decide)``.

    The interval is Welch's 95 % interval for ours − theirs from the two (mean, sd, n) summaries (a side
    without a spread contributes none). **reproduced**: the interval lies inside ±tolerance (an equivalence
    test); **differs**: it lies wholly outside the band; **inconclusive** otherwise, and then
    ``seeds_to_decide`` is the number of our seeds that would decide it if our mean and sd stayed as they are
    (``None`` if no number of ours would, because their spread alone is wider than the margin).
    **not reproduced**: no run of ours, or no number of theirs.
    """
    from .stats import welch_from_summary

    if not ours_n or math.isnan(ours_mean) or math.isnan(ref.get("mean", math.nan)):
        return "not reproduced", None, None
    ref_sd, ref_n = ref.get("sd", math.nan), ref.get("n", 1) or 1

    def iv(n: int):
        return welch_from_summary(ours_mean, ours_sd, n, ref["mean"], ref_sd, ref_n)

    def decided(i) -> str | None:
        if math.isnan(i.low):
            return None
        if -tolerance <= i.low and i.high <= tolerance:
            return "reproduced"
        if i.low > tolerance or i.high < -tolerance:
            return "differs"
        return None

    now = iv(ours_n)
    verdict = decided(now)
    if verdict is not None:
        return verdict, now, None
    if math.isnan(ours_sd):  # one run of ours: no spread to extrapolate
        return "inconclusive", now, None
    need = next((n for n in range(ours_n + 1, MAX_SEEDS + 1) if decided(iv(n))), None)
    return "inconclusive", now, need


def table(rows: list[dict] | None = None, root: Path = ROOT) -> list[dict]:
    """One dict per row: theirs, ours (mean, sd, n), delta, the interval for ours − theirs and its verdict."""
    out = []
    for row in rows if rows is not None else load_registry():
        if "glue_sd" in row:  # a chapter glued the mean, sd and count of its seeds
            nb = root / row["notebook"]
            glues = _glues(nb)
            mean, sd, n = (_glued(nb, row[k], glues) for k in ("glue", "glue_sd", "glue_n"))
            n = int(n)
        else:
            v = ours(row, root)
            mean = statistics.fmean(v) if v else math.nan
            sd = statistics.stdev(v) if len(v) > 1 else math.nan
            n = len(v)
        ref = row["reference"]
        delta = mean - ref["mean"]
        verdict, iv, need = interval_verdict(mean, sd, n, ref, row["tolerance"])
        out.append({**row, "ours_mean": mean, "ours_sd": sd, "ours_n": n, "delta": delta,
                    "within": n > 0 and abs(delta) <= row["tolerance"], "interval": iv,
                    "interval_verdict": verdict, "seeds_to_decide": need})
    return out


def _pm(mean: float, sd: float | None, n: int | None) -> str:
    if mean is None or math.isnan(mean):
        return "—"
    s = f"{mean:.2f}"
    if sd is not None and not math.isnan(sd):
        s += f" ± {sd:.2f}"
    return s + (f" (n={n})" if n else "")


def render(rows: list[dict]) -> str:
    """The reproductions page (MyST markdown)."""
    lines = [
        "# Reproductions",
        "",
        "Every outside number the book compares with, beside ours. Theirs come with their source and",
        "protocol; ours are computed from the committed run records (mean ± sd over seeds, n runs) or from",
        "the number a chapter glued into its committed outputs. The verdict respects both spreads: from",
        "the two (mean, sd, n), Welch's 95 % interval for ours − theirs; **reproduced** when the interval lies",
        "inside ±tolerance (an equivalence test), **differs** when it lies wholly outside that band (the note",
        "says why, with a measurement), **inconclusive** otherwise, with the number of our seeds that would",
        "decide it if our mean and sd held (— when their spread alone is too wide for any). A row marked",
        "*non-discriminating* is one where every method scores about the same (class-IL at the last task's",
        "share, for instance): it shows the pipeline runs, not that the method is reproduced. Every row says,",
        "below the table, which side chose the hyper-parameters and on what data (theirs as far as their source",
        "states it, *not stated* where it does not; ours copied from theirs, or tuned on validation data). This page is",
        "generated from `book/reproductions.toml` (`python -m clutils.reproductions`), and the test suite fails",
        "when a row's verdict is not the one its interval gives.",
        "",
        "| claim | theirs | ours | ours − theirs (95 %) | tolerance | verdict | chapter |",
        "|---|---|---|---:|---:|---|---|",
    ]
    for r in rows:
        ref = r["reference"]
        iv = r.get("interval")
        if math.isnan(r["delta"]):
            delta = "—"
        elif iv is None or math.isnan(iv.low):
            delta = f"{r['delta']:+.2f} (no spread)"
        else:
            delta = f"{r['delta']:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}]"
        verdict = r["verdict"]
        if verdict == "inconclusive":
            need = r.get("seeds_to_decide")
            verdict += f" ({need} seeds would decide)" if need else " (no number of our seeds decides it)"
        if r.get("non_discriminating"):
            verdict += ", non-discriminating"
        lines.append(f"| {r['claim']} | {_pm(ref['mean'], ref.get('sd'), ref.get('n'))} | "
                     f"{_pm(r['ours_mean'], r['ours_sd'], r['ours_n'])} | {delta} | {r['tolerance']:g} | "
                     f"{verdict} | {{doc}}`{r['chapter']}` |")
    lines += ["", "## Sources, protocols and notes", ""]
    for r in rows:
        lines += [f"**{r['claim']}**", "",
                  f"- Source: {r['source']}",
                  f"- Protocol: {r['protocol']}",
                  f"- Hyper-parameters, who chose them and on what data: {r['hyperparameters']}"]
        if r.get("non_discriminating"):
            lines.append(f"- Non-discriminating: {r['non_discriminating']}")
        if r.get("note"):
            lines.append(f"- Note: {r['note']}")
        lines.append("")
    return "\n".join(lines)


def write_page(path: str | Path = PAGE) -> Path:
    path = Path(path)
    path.write_text(render(table()))
    return path


if __name__ == "__main__":
    print(write_page())
