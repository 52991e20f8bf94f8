"""The Protocols page (book/protocols.md) sets every chapter's protocol side by side; it is generated from the
protocol records the chapters write when they run (clutils.book.protocol) and must match them."""
from __future__ import annotations

import json

import pytest

from clutils.book import (PROTOCOL_FIELDS, RECORDS_DIR, protocol, protocols_markdown, read_protocols, read_run_records,
                          write_run_record)
from conftest import BOOK, chapter_notebooks, toc_documents

RECORDS = BOOK / RECORDS_DIR
CHAPTERS = chapter_notebooks()


def _row(**kw):
    return {**{f: "" for f in PROTOCOL_FIELDS}, **kw}


def test_protocols_page_matches_the_committed_records_and_is_in_the_toc():
    assert (BOOK / "protocols.md").read_text() == protocols_markdown(read_protocols(RECORDS)), \
        "book/protocols.md is out of date with the protocol records; run `python -m clutils.book` and commit it."
    assert BOOK / "protocols.md" in toc_documents()


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_every_chapter_records_its_full_protocol(path):
    rec = RECORDS / f"{path.stem}.full.protocol.json"
    assert rec.exists(), f"{path.name}: no {rec.name}; the chapter must call clutils.book.protocol and run its full profile."
    rows = json.loads(rec.read_text())["rows"]
    assert rows and all(set(r) == set(PROTOCOL_FIELDS) and r["network"] and r["optimiser"] and r["seeds"] for r in rows)


def test_a_protocol_is_written_read_back_and_set_out_one_row_per_experiment(tmp_path):
    df = protocol("05_scenarios", "full", [_row(experiment="split MNIST", network="MLP 784-100-100", optimiser="Adam, lr 1e-3",
                                                 seeds="0-4", reading="EWC 74.2 | 1.1 %")], directory=tmp_path)
    protocol("02_ewc", "quick", [_row(experiment="digits")], directory=tmp_path)  # test runs are never published
    protocol("02_ewc", "full", [_row(experiment="permuted", batch=64), _row(experiment="disjoint")], directory=tmp_path)
    assert list(df.index) == ["split MNIST"] and df.loc["split MNIST", "network"] == "MLP 784-100-100"
    recs = read_protocols(tmp_path)
    assert [(r["chapter"], r["profile"]) for r in recs] == [("02_ewc", "full"), ("05_scenarios", "full")]
    assert recs[0]["rows"][0]["batch"] == "64"  # every field is stored as text
    page = protocols_markdown(recs)
    body = page.split("|---")[-1].splitlines()[1:]
    assert [line.split(" | ")[1] for line in body] == ["permuted", "disjoint", "split MNIST"]
    assert "EWC 74.2 \\| 1.1 %" in page  # a bar inside a cell does not split the table
    # the protocol records live beside the run records without being taken for them
    write_run_record("02_ewc", "full", "cpu", 1.0, directory=tmp_path)
    assert [r["chapter"] for r in read_run_records(tmp_path)] == ["02_ewc"]


def test_a_protocol_row_with_a_missing_or_unknown_field_is_refused_with_the_fields_named(tmp_path):
    with pytest.raises(ValueError, match=r"missing \['seeds'\].*unknown \['lr'\]"):
        protocol("02_ewc", "full", [{**{f: "" for f in PROTOCOL_FIELDS if f != "seeds"}, "lr": 0.1}], directory=tmp_path)
    with pytest.raises(ValueError, match="at least one row"):
        protocol("02_ewc", "full", [], directory=tmp_path)
    with pytest.raises(ValueError, match="plain names"):
        protocol("../x", "full", [_row(experiment="a")], directory=tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written
