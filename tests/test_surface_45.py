"""Chapters 4 and 5 and the synthesis page: the figures' helpers compute what they draw, the findings the
synthesis page reads round-trip, and the chapters keep the book's surface rules (no visible code cell over 25
lines, exercise answers folded with their code, no injected-parameters cell)."""
import json
import math
from pathlib import Path

import matplotlib
import nbformat
import pytest
import torch

matplotlib.use("Agg")

import clutils  # noqa: E402
from clutils import slni  # noqa: E402
from clutils.book import FINDING_FIELDS, read_findings, read_run_records, write_findings, write_run_record  # noqa: E402
from clutils.plotting import plot_scenarios, plot_slni_weights_beside_covariance  # noqa: E402

BOOK = Path(__file__).resolve().parents[1] / "book"
CHAPTERS = [BOOK / "04_selfless.ipynb", BOOK / "05_scenarios.ipynb"]


def _tags(cell):
    return cell.get("metadata", {}).get("tags", [])


def test_penalised_panel_sums_to_the_slni_penalty():
    gen = torch.Generator().manual_seed(0)
    h = torch.relu(torch.randn(40, 24, generator=gen))
    axes = plot_slni_weights_beside_covariance(h, sigma=24 / 6)
    w, cov, pen = (torch.as_tensor(ax.images[0].get_array().data) for ax in axes)
    assert torch.all(torch.diagonal(w) == 0)
    assert w[0, 1].item() == pytest.approx(math.exp(-1 / (2 * 4.0 ** 2)))
    assert cov[3, 5].item() == pytest.approx((h[:, 3] * h[:, 5]).mean().item())
    # the sum of w_ij * (1/M) sum_m h_i h_j over the pairs is eq. (ssl-slni), as clutils.slni computes it
    assert pen.sum().item() == pytest.approx(slni(h, sigma=24 / 6).item(), rel=1e-5)
    with pytest.raises(ValueError, match="inputs x neurons"):
        plot_slni_weights_beside_covariance(h[0], sigma=4.0)


def test_scenario_diagram_reads_heads_and_outputs_from_the_streams():
    streams = {s: clutils.make_stream("split", "digits", scenario=s) for s in ("task", "domain", "class")}
    ax = plot_scenarios(streams, task=2)
    texts = [t.get_text() for t in ax.texts]
    digit = int(streams["class"][2].y_test[0])  # class-IL keeps the digit; the third task holds digits 4 and 5
    assert digit in (4, 5)
    assert texts.count(f"chooses among 2 outputs; correct: output {digit - 4 + 1}") == 2  # task-IL, domain-IL
    assert f"chooses among 10 outputs; correct: output {digit + 1}" in texts
    assert any("told: task 3 (head 3 of 5)" in t for t in texts) and any("told: nothing" in t for t in texts)
    assert sum(t.startswith("head ") for t in texts) == 5
    filled = [p for p in ax.patches if p.get_facecolor()[:3] != matplotlib.colors.to_rgb("0.92")]
    assert len(filled) == 2 + 2 + 10 and len(ax.patches) == 5 * 2 + 2 + 10
    with pytest.raises(ValueError, match="numbered from 0"):
        plot_scenarios(streams, task=5)


def test_findings_round_trip_and_stay_off_the_status_page(tmp_path):
    row = {f: 1.0 for f in FINDING_FIELDS} | {"scenario": "split, task-IL", "method": "SI", "vs_naive": "+1.0 [+0.5, +1.5]"}
    write_findings("05_scenarios", "full", [row], directory=tmp_path)
    write_run_record("05_scenarios", "full", "cpu", 3.0, directory=tmp_path)
    assert read_findings(tmp_path, "05_scenarios") == [row]
    assert [r["chapter"] for r in read_run_records(tmp_path)] == ["05_scenarios"]
    with pytest.raises(ValueError, match="missing"):
        write_findings("05_scenarios", "full", [{"method": "SI"}], directory=tmp_path)
    with pytest.raises(FileNotFoundError, match="run the chapter first"):
        read_findings(tmp_path, "04_selfless")


def test_committed_findings_match_the_chapter_5_table():
    rows = read_findings(BOOK / "results" / "records", "05_scenarios")
    glued = clutils.book.glued(BOOK / "05_scenarios.ipynb")
    ft = next(r for r in rows if r["scenario"] == "split, task-IL" and r["method"] == "fine-tuning")
    assert glued["ch5_task_naive"] == pytest.approx(ft["acc"])
    assert {r["scenario"] for r in rows} == {"split, task-IL", "split, domain-IL", "split, class-IL", "permuted, domain-IL"}


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_visible_code_cells_are_short_and_answers_are_folded(path):
    nb = nbformat.read(path, as_version=4)
    hidden = {"remove-input", "remove-cell", "hide-input", "hide-cell"}
    long = [(c.id, len(c.source.splitlines())) for c in nb.cells
            if c.cell_type == "code" and not hidden & set(_tags(c)) and len(c.source.splitlines()) > 25]
    assert not long, f"{path.name}: visible code cells over 25 lines: {long}"
    start = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and "## Exercises" in c.source)
    answers = [c for c in nb.cells[start:] if c.cell_type == "code" and "write_run_record" not in c.source]
    assert answers and all({"hide-input", "hide-output"} <= set(_tags(c)) or "hide-cell" in _tags(c) for c in answers)
    assert not [c for c in nb.cells if "injected-parameters" in _tags(c)]
    first_code = next(c for c in nb.cells if c.cell_type == "code" and not {"remove-cell", "remove-input"} & set(_tags(c)))
    assert "import " not in first_code.source and "PROFILE" not in first_code.source, \
        f"{path.name}: the first visible code is about the method, not imports or profiles."
