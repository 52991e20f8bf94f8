"""Shared fixtures: the book's table of contents, and ONE book build for the whole session.

``tests/test_book.py`` checks the build (zero warnings, nothing remote, bibliography) and
``tests/test_render.py`` opens the very same pages in headless Chromium, so the suite
builds the book once.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
MATHJAX = ROOT / "_vendor" / "site" / "mathjax" / "tex-chtml.js"


def _toc_entries(node) -> list[str]:
    """Every ``file:`` of a Jupyter Book ``_toc.yml`` (root, chapters, parts, sections), in order."""
    out: list[str] = []
    if isinstance(node, dict):
        if "file" in node:
            out.append(node["file"])
        if "root" in node:
            out.append(node["root"])
        for key in ("parts", "chapters", "sections"):
            for child in node.get(key, []) or []:
                out += _toc_entries(child)
    return out


def toc_documents() -> list[Path]:
    """The source file (``.ipynb`` or ``.md``) of every page listed in ``_toc.yml``."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    docs = []
    for entry in _toc_entries(toc):
        stem = ROOT / entry
        hits = [stem.with_suffix(s) for s in (".ipynb", ".md") if stem.with_suffix(s).exists()]
        if not hits:
            raise FileNotFoundError(f"_toc.yml lists {entry!r} but neither {entry}.ipynb nor {entry}.md exists.")
        docs.append(hits[0])
    return docs


def chapter_notebooks() -> list[Path]:
    """The chapter notebooks listed in ``_toc.yml`` (what papermill and the render test run): the numbered ones,
    ``NN_name.ipynb``; a page such as the synthesis, which only reads the chapters' records, is not a chapter."""
    return [d for d in toc_documents() if d.suffix == ".ipynb" and d.stem[:2].isdigit()]


def book_config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits as a clutils Dataset (offline, small)."""
    import clutils

    return clutils.load_dataset("digits")


def devices() -> list:
    """Every device the tests can run on: the CPU, and CUDA (skipped without a GPU)."""
    import torch

    return ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@dataclass
class BookBuild:
    html: Path  # the built site (``.../_build/html``)
    returncode: int
    log: str


@pytest.fixture(scope="session")
def built_book(tmp_path_factory) -> BookBuild:
    """``jupyter-book build . -W --keep-going`` into a fresh folder (a stale build could hide warnings)."""
    if not MATHJAX.exists():
        pytest.fail(f"{MATHJAX.relative_to(ROOT)} is missing: run `make mathjax` (or `make test`, which does it) "
                    f"so that the book serves MathJax itself.")
    out = tmp_path_factory.mktemp("book")
    exe = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(ROOT), "-W", "--keep-going",
           "--path-output", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": ""})
    return BookBuild(out / "_build" / "html", proc.returncode, proc.stdout + proc.stderr)
