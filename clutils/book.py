"""Small helpers the chapters share: profiles, gluing numbers into the text, tolerant sweeps,
the run records behind the book's status page, and reading a tagged cell out of a notebook."""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

__all__ = ["choose_profile", "glue", "prefixed_glue", "run_with_value",
           "pooled_accuracy", "write_run_record", "read_run_records", "status_markdown", "write_status_page",
           "tagged_source", "protocol", "read_protocols", "protocols_markdown", "write_protocols_page",
           "COLAB_CELL", "VISIBLE_CELL_LINES", "visible_code_cells", "strip_injected_parameters",
           "RECORDS_DIR", "STATUS_PAGE", "PROTOCOLS_PAGE", "PROTOCOL_FIELDS"]

RECORDS_DIR = Path("results/records")  # relative to book/ (chapters run with papermill --cwd book)
STATUS_PAGE = "status.md"              # book/status.md, generated from the records
PROTOCOLS_PAGE = "protocols.md"        # book/protocols.md, generated from the chapters' protocol records
PROTOCOL_FIELDS = ("experiment", "stream", "network", "optimiser", "batch", "epochs / task", "importance samples",
                   "strength chosen by", "validation", "seeds", "reading")  # one row of a protocol table
UNPUBLISHED_PROFILES = ("quick",)      # test runs: written like any record, never listed on the status page


def choose_profile(name: str, profiles: Mapping[str, Mapping[str, Any]]) -> dict:
    """The settings of profile ``name`` (``quick`` or ``full``), with a clear error for any other name."""
    if name not in profiles:
        raise ValueError(f"unknown PROFILE {name!r}; choose one of {', '.join(profiles)} "
                         f"(papermill ... -p PROFILE quick).")
    return dict(profiles[name])


def glue(name: str, value: Any, display: bool = False) -> None:
    """Store ``value`` in the notebook's outputs under ``name`` so the text can quote it ({glue:text}`name`).

    Uses MyST-NB's ``glue`` when it is installed (building the book); elsewhere (Colab) it
    just prints the value when ``display`` is true.  NumPy and PyTorch scalars are stored as
    plain Python numbers, so ``{glue:text}`name:.1f``` can format them. Floats are stored to 12
    significant digits: the last bits of a float differ between CPUs (5.000000000000001 on one,
    4.999999999999998 on another), and a checked output should not.
    """
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    if type(value) is float and math.isfinite(value):
        value = float(f"{value:.12g}")
    try:
        from myst_nb import glue as _glue
    except ImportError:  # pragma: no cover - only without the book extras
        if display:
            print(f"{name} = {value}")
        return
    _glue(name, value, display=display)


def prefixed_glue(prefix: str) -> Callable[[str, Any], None]:
    """``glue`` with every name prefixed, e.g. ``prefixed_glue("ch1_")("acc", 0.9)`` stores ``ch1_acc``."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a string such as 'ch1_', got {type(prefix).__name__}.")

    def _glue(name: str, value: Any) -> None:
        glue(prefix + name, value)
    return _glue


def run_with_value(runs: Sequence, value: float):
    """The run of a sweep whose ``extras["value"]`` is ``value`` (e.g. the best one)."""
    for r in runs:
        if r.extras.get("value") == value:
            return r
    raise KeyError(f"no run with value {value!r}; the sweep has {[r.extras.get('value') for r in runs]}.")


def pooled_accuracy(accuracies: Sequence[float], n_test: Sequence[int]) -> float:
    r"""Accuracy on the union of the tasks' test sets: :math:`\sum_j n_j a_j / \sum_j n_j`."""
    import numpy as np

    a, n = np.asarray(accuracies, dtype=float), np.asarray(n_test, dtype=float)
    if a.shape != n.shape or n.sum() <= 0:
        raise ValueError(f"give one accuracy per task and positive test-set sizes; got {a.shape} and {n.shape}.")
    return float((a * n).sum() / n.sum())


# ----------------------------------------------------------------------------- run records, status page

def _check_names(chapter: str, profile: str) -> None:
    if not chapter or "/" in chapter or not profile or "/" in profile:
        raise ValueError(f"chapter and profile must be plain names such as '02_ewc' and 'full', got {chapter!r}, {profile!r}.")


def _records_dir(directory) -> Path:
    """``directory``, else ``$CLUTILS_RECORDS`` (a check run's redirect, make verify), else the book's records."""
    return Path(directory if directory is not None else (os.environ.get("CLUTILS_RECORDS") or RECORDS_DIR))


def write_run_record(chapter: str, profile: str, device: Any, seconds: float,
                     directory: str | Path | None = None) -> dict:
    """Write ``<directory>/<chapter>.<profile>.json``: when this run of the chapter finished (UTC),
    its profile, device, duration in seconds and the versions of clutils, PyTorch and Python.

    Each chapter calls it in its last cell; ``status_markdown`` turns the committed records
    into the book's status page.  ``directory`` defaults to ``$CLUTILS_RECORDS`` or
    ``book/results/records``.  Returns the record.
    """
    import torch

    from . import __version__

    _check_names(chapter, profile)
    if not seconds >= 0:
        raise ValueError(f"seconds must be a non-negative duration, got {seconds!r}.")
    record = {"chapter": chapter, "profile": profile, "device": str(device), "seconds": round(float(seconds), 1),
              "finished": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "clutils": __version__, "torch": torch.__version__.split("+")[0],
              "python": platform.python_version()}
    path = _records_dir(directory) / f"{chapter}.{profile}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return record


def read_run_records(directory: str | Path) -> list[dict]:
    """The published records in ``directory`` (test profiles such as ``quick`` left out), sorted by chapter."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"no run records in {directory}: run a chapter (papermill ... --cwd book) first.")
    recs = [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))
            if not p.name.endswith((".protocol.json", ".findings.json"))]
    return sorted((r for r in recs if r["profile"] not in UNPUBLISHED_PROFILES), key=lambda r: (r["chapter"], r["profile"]))


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def status_markdown(records: Sequence[Mapping[str, Any]]) -> str:
    """The status page: one row per record (chapter, profile, finished, device, duration, versions)."""
    lines = ["# Status of the executed outputs", "",
             "Every chapter is shown with the outputs of a real run; the book is built from those committed",
             "outputs and executes nothing. At the end of its run each chapter writes a small record",
             "(`book/results/records/<chapter>.<profile>.json`, through `clutils.book.write_run_record`);",
             "this page is generated from the committed records (`python -m clutils.book`), and a test",
             "checks that it matches them. Runs of the `quick` test profile are never listed.", "",
             "| chapter | profile | finished | device | duration | clutils | PyTorch | Python |",
             "|---|---|---|---|---:|---|---|---|"]
    for r in records:
        versions = " | ".join(str(r.get(k) or "not recorded") for k in ("clutils", "torch", "python"))
        lines.append(f"| {{doc}}`{r['chapter']}` | {r['profile']} | {r['finished']} | {r['device']} "
                     f"| {_duration(r['seconds'])} | {versions} |")
    if not records:
        lines.append("| (no records yet) | | | | | | | |")
    return "\n".join(lines) + "\n"


def _regenerate(book_dir: str | Path, name: str, render: Callable[[Path], str]) -> Path:
    """Write ``<book_dir>/<name>`` from ``render(<book_dir>/results/records)``."""
    page = Path(book_dir) / name
    page.write_text(render(Path(book_dir) / RECORDS_DIR))
    return page


def write_status_page(book_dir: str | Path = "book") -> Path:
    """Regenerate ``<book_dir>/status.md`` from ``<book_dir>/results/records``."""
    return _regenerate(book_dir, STATUS_PAGE, lambda d: status_markdown(read_run_records(d)))


# ----------------------------------------------------------------------------- protocols


def _checked_rows(rows: Sequence[Mapping[str, Any]], fields: Sequence[str], what: str, key: str, one: str,
                  strict: bool = False) -> list[dict]:
    """``rows`` as dicts, each holding every one of ``fields`` (and, if ``strict``, nothing else); else a clear error."""
    rows = [dict(r) for r in rows]
    if not rows:
        raise ValueError(f"{what}: at least one row is needed ({one}).")
    for r in rows:
        missing = [f for f in fields if f not in r]
        extra = [f for f in r if f not in fields] if strict else []
        if missing or extra:
            raise ValueError(f"{what} row {r.get(key, r)!r}: " + "; ".join(
                x for x in (f"missing {missing}" if missing else "", f"unknown {extra}" if extra else "") if x)
                + f". The fields are {list(fields)}" + (" (use '' for one that does not apply)." if strict else "."))
    return rows


def protocol(chapter: str, profile: str, rows: Sequence[Mapping[str, Any]], directory: str | Path | None = None):
    """A chapter's protocol table: one row per experiment, the fields of :data:`PROTOCOL_FIELDS` (network,
    optimiser, learning rate in the optimiser field, batch, epochs, importance samples, how the strength
    was chosen, validation split, seeds, and a ``reading``: the chapter's headline number under that
    protocol). Written to ``<directory>/<chapter>.<profile>.protocol.json`` (the records folder), from which
    the Protocols page sets every chapter side by side; returned as a DataFrame to show in the chapter."""
    import pandas as pd

    _check_names(chapter, profile)
    rows = _checked_rows(rows, PROTOCOL_FIELDS, "protocol", "experiment", "one experiment", strict=True)
    for r in rows:
        for f in PROTOCOL_FIELDS:
            r[f] = str(r[f])
    path = _records_dir(directory) / f"{chapter}.{profile}.protocol.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"chapter": chapter, "profile": profile, "rows": rows}, indent=1, ensure_ascii=False) + "\n")
    return pd.DataFrame(rows).set_index("experiment")


def read_protocols(directory: str | Path) -> list[dict]:
    """The published protocol records in ``directory`` (test profiles left out), sorted by chapter."""
    recs = [json.loads(p.read_text()) for p in sorted(Path(directory).glob("*.protocol.json"))]
    return sorted((r for r in recs if r["profile"] not in UNPUBLISHED_PROFILES), key=lambda r: r["chapter"])


def protocols_markdown(records: Sequence[Mapping[str, Any]]) -> str:
    """The Protocols page: every chapter's protocol rows in one table."""
    def cell(v: str) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["# Protocols", "",
             "The same method reads differently in different chapters because the chapters run it under different",
             "protocols: another network, optimiser, number of epochs, importance sample, way of choosing the strength,",
             "or number of seeds. This page sets the protocols side by side, one row per experiment, with the",
             "chapter's headline number under it (*reading*). It is generated from the records the chapters write",
             "when they run (`clutils.book.protocol`, then `python -m clutils.book`), and a test checks that it",
             "matches them.", "",
             "| chapter | " + " | ".join(PROTOCOL_FIELDS) + " |",
             "|---|" + "---|" * len(PROTOCOL_FIELDS)]
    for rec in records:
        for r in rec["rows"]:
            lines.append(f"| {{doc}}`{rec['chapter']}` | " + " | ".join(cell(r[f]) for f in PROTOCOL_FIELDS) + " |")
    if not records:
        lines.append("| (no protocols recorded yet) |" + " |" * len(PROTOCOL_FIELDS))
    return "\n".join(lines) + "\n"


def write_protocols_page(book_dir: str | Path = "book") -> Path:
    """Regenerate ``<book_dir>/protocols.md`` from the protocol records in ``<book_dir>/results/records``."""
    return _regenerate(book_dir, PROTOCOLS_PAGE, lambda d: protocols_markdown(read_protocols(d)))


# ----------------------------------------------------------------------------- notebooks

def tagged_source(notebook: str | Path, tag: str) -> str:
    """The source of the code cells of ``notebook`` tagged ``tag``, joined (tests execute it)."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    cells = [c.source for c in nb.cells if c.cell_type == "code" and tag in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise LookupError(f"{notebook}: no code cell is tagged {tag!r}.")
    return "\n\n".join(cells)



# ----------------------------------------------------------------------------- the textbook's surface
# What the chapters share so that a reader meets the method first: the Colab cell every chapter opens
# with (hidden from the page), the limit on a visible code cell, and the clean-up after a papermill run.

COLAB_CELL = """\
import os, subprocess, sys
if "google.colab" in sys.modules and not os.path.isdir("results"):  # on Colab only; elsewhere this does nothing
    # the book's repository with its committed runs (book/results), so PROFILE = "full" loads them instead of training
    url, branch, clone = "https://github.com/clbook/continual-learning-book", "main", os.path.abspath("continual-learning-book")
    if not os.path.isdir(clone):
        subprocess.run(["git", "clone", "-q", "--depth", "1", "--branch", branch, url, clone], check=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", clone], check=True)
    os.chdir(os.path.join(clone, "book"))  # the chapters run from book/, where results/ is
"""
"""The first code cell of every chapter (tagged ``remove-cell``): on Colab, a shallow clone of the book's
repository (``_config.yml``'s url and branch), ``pip install`` of its ``clutils``, and the working directory
moved to its ``book/`` so the result cache finds the committed runs; elsewhere, nothing."""

VISIBLE_CELL_LINES = 25  # the longest code cell a reader sees; longer ones are split into steps or hidden
HIDDEN_INPUT_TAGS = ("remove-cell", "remove-input", "hide-input", "hide-cell")


def visible_code_cells(notebook: str | Path) -> list[tuple[int, int, str]]:
    """``(index, lines, first line)`` of each code cell whose source the rendered page shows."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    return [(i, len(c.source.splitlines()), (c.source.splitlines() or [""])[0]) for i, c in enumerate(nb.cells)
            if c.cell_type == "code" and not set(c.get("metadata", {}).get("tags", [])) & set(HIDDEN_INPUT_TAGS)]


def strip_injected_parameters(notebook: str | Path) -> int:
    """Remove papermill's ``injected-parameters`` cells from ``notebook`` in place (the reader sees the
    parameters once, in the cell tagged ``parameters``); returns how many were removed."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    keep = [c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    removed = len(nb.cells) - len(keep)
    if removed:
        nb.cells = keep
        nbformat.write(nb, str(notebook))
    return removed


if __name__ == "__main__":  # python -m clutils.book [BOOK_DIR]: regenerate the status and protocols pages
    import sys

    print(write_status_page(sys.argv[1] if len(sys.argv) > 1 else "book"))
    print(write_protocols_page(sys.argv[1] if len(sys.argv) > 1 else "book"))


# ----------------------------------------------------------------------------- chapters 4–5: findings for the synthesis page

FINDING_FIELDS = ("scenario", "method", "acc", "acc_sd", "forgetting", "intransigence", "train_s_per_task",
                  "extra_memory", "vs_naive", "n_seeds")


def _cpu_name() -> str:
    """The processor's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_findings(chapter: str, profile: str, rows: Sequence[Mapping[str, Any]],
                   directory: str | Path | None = None) -> Path:
    """Write ``<directory>/<chapter>.<profile>.findings.json``: one row per (scenario, method) with the fields of
    :data:`FINDING_FIELDS` (accuracies and forgetting in points, training seconds per task, the strategy's extra
    memory as a text such as '2.0 P', and ``vs_naive``: the paired interval of the method minus fine-tuning).
    The synthesis page reads these files, so its numbers are the chapters' measured ones."""
    _check_names(chapter, profile)
    rows = _checked_rows(rows, FINDING_FIELDS, "findings", "method", "one scenario and method")
    path = _records_dir(directory) / f"{chapter}.{profile}.findings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    import torch

    machine = f"{_cpu_name()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads"
    path.write_text(json.dumps({"chapter": chapter, "profile": profile, "machine": machine, "rows": rows}, indent=1,
                               ensure_ascii=False, default=float) + "\n")
    return path


def read_findings(directory: str | Path, chapter: str, profile: str = "full") -> list[dict]:
    """The rows a chapter's run wrote with :func:`write_findings`, with a clear error when it has not run."""
    path = Path(directory) / f"{chapter}.{profile}.findings.json"
    if not path.exists():
        raise FileNotFoundError(f"no findings at {path}: run the chapter first "
                                f"(papermill book/{chapter}.ipynb ... --cwd book -p PROFILE {profile}).")
    return json.loads(path.read_text())["rows"]


def findings_machine(directory: str | Path, chapter: str, profile: str = "full") -> str:
    """The machine a chapter's findings were measured on, as :func:`write_findings` recorded it."""
    read_findings(directory, chapter, profile)  # the same clear error when the chapter has not run
    return json.loads((Path(directory) / f"{chapter}.{profile}.findings.json").read_text())["machine"]


def glued(notebook: str | Path) -> dict[str, Any]:
    """The values a committed, executed chapter stored with :func:`glue`, by name (numbers as numbers, text as
    text), so another page can quote a chapter's measured numbers without retyping them."""
    import ast

    path = Path(notebook)
    if not path.exists():
        raise FileNotFoundError(f"no notebook at {path}; pass the path of an executed chapter such as book/04_selfless.ipynb.")
    out: dict[str, Any] = {}
    for cell in json.loads(path.read_text())["cells"]:
        for o in cell.get("outputs", []):
            meta = o.get("metadata", {}).get("scrapbook")
            if not meta:
                continue
            text = o["data"].get(meta["mime_prefix"] + "text/plain", "")
            try:
                out[meta["name"]] = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                out[meta["name"]] = text
    return out
