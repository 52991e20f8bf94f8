"""nbval: re-executing a chapter reproduces its committed outputs (the cells tagged nbval-check-output).

CI checks chapter 1, the cheapest full profile (it loads its seeded runs from book/results/01_forgetting,
under a minute on one CPU thread); `make verify` checks every chapter.  The checked cells of chapter 1
are exact computations (the least-squares toy in float64 and the data description), so they reproduce on any machine.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT


def _mnist_available() -> bool:
    root = os.environ.get("CLUTILS_DATA")
    return bool(root) and (Path(root) / "MNIST" / "raw" / "train-images-idx3-ubyte").exists()


@pytest.mark.book
@pytest.mark.skipif(not _mnist_available() and os.environ.get("CI") != "true",
                    reason="real MNIST not available (set CLUTILS_DATA to a folder with MNIST/raw)")
def test_chapter_1_reexecuted_reproduces_its_checked_outputs(tmp_path):
    chapter = ROOT / "book" / "01_forgetting.ipynb"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
         "--sanitize-with", str(ROOT / "book" / "nbval_sanitize.cfg"), str(chapter)],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "CLUTILS_RECORDS": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
    assert list(tmp_path.glob("01_forgetting.full.json"))  # the check run's record went to the side, not the book
