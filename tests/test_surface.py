"""The textbook's surface: what a reader meets first. Every chapter opens with the same hidden Colab
cell (which fetches the book with its committed runs), shows no code cell longer than
``clutils.book.VISIBLE_CELL_LINES``, commits no papermill ``injected-parameters`` cell, and folds the
output of an exercise's solution together with its code."""
from __future__ import annotations

import os
import subprocess
import sys
import types

import nbformat
import pytest

from clutils.book import COLAB_CELL, VISIBLE_CELL_LINES, strip_injected_parameters, visible_code_cells
from conftest import book_config, chapter_notebooks

CHAPTERS = chapter_notebooks()
CHAPTER_IDS = [p.stem for p in CHAPTERS]


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


@pytest.mark.parametrize("path", CHAPTERS, ids=CHAPTER_IDS)
def test_no_visible_code_cell_exceeds_the_limit(path):
    long = [(i, n, first[:60]) for i, n, first in visible_code_cells(path) if n > VISIBLE_CELL_LINES]
    assert not long, f"{path.name}: visible code cells over {VISIBLE_CELL_LINES} lines (cell, lines, start): {long}; " \
                     "split them into steps or hide the glue (hide-input / remove-input)."


@pytest.mark.parametrize("path", CHAPTERS, ids=CHAPTER_IDS)
def test_no_injected_parameters_cell_is_committed(path):
    nb = nbformat.read(path, as_version=4)
    injected = [i for i, c in enumerate(nb.cells) if "injected-parameters" in _tags(c)]
    assert not injected, f"{path.name}: cells {injected} are papermill's injected-parameters; " \
                         "remove them (clutils.book.strip_injected_parameters) before committing."


@pytest.mark.parametrize("path", CHAPTERS, ids=CHAPTER_IDS)
def test_every_chapter_opens_with_the_same_colab_cell(path):
    nb = nbformat.read(path, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    assert first.source.strip() == COLAB_CELL.strip(), \
        f"{path.name}: the first code cell must be clutils.book.COLAB_CELL, verbatim."
    assert "remove-cell" in _tags(first), f"{path.name}: the Colab cell must be tagged remove-cell."


@pytest.mark.parametrize("path", CHAPTERS, ids=CHAPTER_IDS)
def test_exercise_answers_fold_their_output(path):
    """After '## Exercises', a solution cell with output hides the output too (hide-cell, or hide-input with
    hide-output), so the answer is not shown under the question."""
    nb = nbformat.read(path, as_version=4)
    start = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and "## Exercises" in c.source)
    shown = [i for i, c in enumerate(nb.cells[start:], start) if c.cell_type == "code" and c.get("outputs")
             and "write_run_record" not in c.source
             and not ("hide-cell" in _tags(c) or {"hide-input", "hide-output"} <= set(_tags(c)) or "remove-cell" in _tags(c))]
    assert not shown, f"{path.name}: the outputs of exercise cells {shown} show under the question; " \
                      "tag them hide-output (with hide-input) or hide-cell."


def test_colab_cell_matches_the_repository_in_config():
    repo = book_config()["repository"]
    assert f'"{repo["url"]}", "{repo["branch"]}"' in COLAB_CELL


def _fake_book_repo(root) -> str:
    """A git repository shaped like the book's (a package and book/results/...), served as file://."""
    src = root / "origin"
    (src / "book" / "results" / "02_ewc").mkdir(parents=True)
    (src / "book" / "results" / "02_ewc" / "run.pt").write_bytes(b"a committed run")
    (src / "pyproject.toml").write_text("[project]\nname = 'clutils'\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(src)], check=True)
    subprocess.run([*git, "-C", str(src), "add", "."], check=True)
    subprocess.run([*git, "-C", str(src), "commit", "-q", "-m", "book"], check=True)
    subprocess.run(["git", "-C", str(src), "branch", "-M", "main"], check=True)
    return src.as_uri()


def test_colab_cell_clones_the_book_with_its_runs_installs_and_moves_into_book(tmp_path, monkeypatch):
    url = _fake_book_repo(tmp_path)
    cell = COLAB_CELL.replace(book_config()["repository"]["url"], url)
    work = tmp_path / "content"
    work.mkdir()
    monkeypatch.chdir(work)
    real_run, pips = subprocess.run, []

    def run(argv, **kw):  # git really runs (against the file:// repository); pip is recorded, not run
        if argv[1:4] == ["-m", "pip", "install"]:
            pips.append(argv)
            return subprocess.CompletedProcess(argv, 0)
        return real_run(argv, **kw)

    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(cell, "colab-cell", "exec"), {})
    assert os.getcwd() == str(work) and not list(work.iterdir()) and pips == [], "outside Colab the cell must do nothing"

    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(compile(cell, "colab-cell", "exec"), {})
    clone = work / "continual-learning-book"
    assert os.getcwd() == str(clone / "book"), "the chapter must run from the clone's book/ folder"
    assert (clone / "book" / "results" / "02_ewc" / "run.pt").read_bytes() == b"a committed run"
    shallow = subprocess.run(["git", "-C", str(clone), "rev-list", "--count", "HEAD"], capture_output=True, text=True)
    assert shallow.stdout.strip() == "1"
    assert pips == [[sys.executable, "-m", "pip", "install", "-q", str(clone)]]

    exec(compile(cell, "colab-cell", "exec"), {})  # run again (from book/, results/ present): nothing more happens
    assert os.getcwd() == str(clone / "book") and len(pips) == 1


def test_strip_injected_parameters_removes_only_papermills_cell(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell('PROFILE = "full"', metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell('PROFILE = "quick"', metadata={"tags": ["injected-parameters"]}),
                nbformat.v4.new_markdown_cell("text")]
    path = tmp_path / "ch.ipynb"
    nbformat.write(nb, path)
    assert strip_injected_parameters(path) == 1
    kept = nbformat.read(path, as_version=4).cells
    assert [c.source for c in kept] == ['PROFILE = "full"', "text"]
    assert strip_injected_parameters(path) == 0


def test_visible_code_cells_skip_hidden_tags(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("a = 1\nb = 2"),
                nbformat.v4.new_code_cell("x\n" * 40, metadata={"tags": ["hide-input"]}),
                nbformat.v4.new_markdown_cell("text\n" * 40),
                nbformat.v4.new_code_cell("y\n" * 30, metadata={"tags": ["remove-input"]}),
                nbformat.v4.new_code_cell("z = 3", metadata={"tags": ["hide-output"]})]
    path = tmp_path / "ch.ipynb"
    nbformat.write(nb, path)
    assert visible_code_cells(path) == [(0, 2, "a = 1"), (4, 1, "z = 3")]
