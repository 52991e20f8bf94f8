"""Issue 23, "method first": a chapter's prose comes in short paragraphs. ``clutils.prose`` splits markdown
into paragraphs and counts a reader's words; every chapter stays under ``PARAGRAPH_WORDS`` a paragraph."""
from __future__ import annotations

import pytest

from clutils.prose import PARAGRAPH_WORDS, long_paragraphs, paragraphs, word_count
from conftest import chapter_notebooks

CHAPTERS = chapter_notebooks()


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_no_paragraph_exceeds_the_limit(path):
    long = long_paragraphs(path)
    assert not long, f"{path.name}: paragraphs over {PARAGRAPH_WORDS} words (cell, words, first words): {long}; " \
                     "split them by idea, or put a run of numbers in a small table."


def test_blank_lines_list_items_and_headings_delimit_paragraphs():
    md = "# Title\n\nOne two\nthree.\n\nFour five.\n- six seven\n- eight\n\n## Next\nnine"
    assert paragraphs(md) == ["One two three.", "Four five.", "six seven", "eight", "nine"]


def test_tables_code_fences_and_math_blocks_are_not_prose():
    md = ("Before.\n\n| a | b |\n|---|---|\n| one two three | four |\n\n```python\nx = 1 + 2\nprint(x)\n```\n\n"
          "$$\na + b\n= c\n$$\n\n$$ x = y $$\nAfter.")
    assert paragraphs(md) == ["Before.", "After."]


def test_a_directive_body_is_prose_but_its_options_are_not():
    md = "```{admonition} A title\n:class: tip\n:name: my-tip\nInside the box.\n```\nOutside."
    assert paragraphs(md) == ["Inside the box.", "Outside."]
    md = ":::{note}\n:class: dropdown\nA note.\n:::\n"
    assert paragraphs(md) == ["A note."]


def test_a_code_fence_inside_a_directive_is_skipped():
    md = "````{tip}\nText.\n```python\ncode here\n```\nMore text.\n````\nEnd."
    assert paragraphs(md) == ["Text.", "More text.", "End."]


def test_roles_inline_math_and_code_count_as_one_word_and_links_as_their_text():
    assert word_count("MAS reaches {glue:text}`ch4_mas_noreg:.1f` ± {glue:text}`ch4_mas_noreg_sd:.1f` %") == 4
    assert word_count("the penalty $\\lambda F_i (\\theta - \\theta^*)$ and `quadratic_penalty(x, y)`") == 5
    assert word_count("see [the reproductions page](reproductions.md) and {cite}`hsu2018reevaluating`") == 6


def test_long_paragraphs_names_the_cell_its_length_and_first_words(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("Short one."), nbformat.v4.new_code_cell(" ".join(["x"] * 500)),
                nbformat.v4.new_markdown_cell("Fine.\n\n" + " ".join(f"w{i}" for i in range(12)))]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    assert long_paragraphs(path, limit=11) == [(2, 12, "w0 w1 w2 w3 w4 w5 w6 w7")]
    assert long_paragraphs(path, limit=12) == []
