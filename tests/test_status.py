"""The status page (book/status.md) lists, per chapter, when its committed outputs were produced, by which
profile, on what device, how long the run took and with which versions; it is generated from the run
records the chapters write (book/results/records/*.json) and must match them."""
from __future__ import annotations

import json

import pytest

from clutils.book import RECORDS_DIR, read_run_records, status_markdown, write_run_record
from conftest import BOOK, chapter_notebooks, toc_documents

RECORDS = BOOK / RECORDS_DIR
CHAPTERS = chapter_notebooks()


def test_status_page_matches_the_committed_records():
    expected = status_markdown(read_run_records(RECORDS))
    assert (BOOK / "status.md").read_text() == expected, \
        "book/status.md is out of date with book/results/records; run `python -m clutils.book` and commit it."


def test_status_page_is_in_the_toc():
    assert BOOK / "status.md" in toc_documents() and BOOK / "notation.md" in toc_documents()


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_every_chapter_has_a_full_run_record_and_writes_it_last(path):
    record = RECORDS / f"{path.stem}.full.json"
    assert record.exists(), f"{path.name}: no record {record.name}; run the chapter's full profile with papermill --cwd book."
    rec = json.loads(record.read_text())
    assert rec["chapter"] == path.stem and rec["profile"] == "full" and rec["seconds"] > 0
    import nbformat
    nb = nbformat.read(path, as_version=4)
    last = [c for c in nb.cells if c.cell_type == "code"][-1]
    assert f'write_run_record("{path.stem}", PROFILE' in last.source, \
        f"{path.name}: the last code cell must write the run record (clutils.book.write_run_record)."


def test_write_and_read_run_records(tmp_path):
    rec = write_run_record("02_ewc", "full", "cuda:0", 125.04, directory=tmp_path)
    write_run_record("02_ewc", "quick", "cpu", 3.0, directory=tmp_path)  # test runs are never published
    assert json.loads((tmp_path / "02_ewc.full.json").read_text()) == rec
    assert [r["profile"] for r in read_run_records(tmp_path)] == ["full"]
    assert rec["seconds"] == 125.0 and rec["device"] == "cuda:0"
    page = status_markdown(read_run_records(tmp_path))
    assert "| {doc}`02_ewc` | full |" in page and "| cuda:0 | 2.1 min |" in page and "quick" not in page.split("|---")[-1]


def test_run_record_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="plain names"):
        write_run_record("../02_ewc", "full", "cpu", 1.0, directory=tmp_path)
    with pytest.raises(ValueError, match="non-negative"):
        write_run_record("02_ewc", "full", "cpu", float("nan"), directory=tmp_path)
    with pytest.raises(FileNotFoundError, match="papermill"):
        read_run_records(tmp_path / "missing")
