"""The length of the chapters' prose: their markdown split into paragraphs, and the words a reader reads
in each. Tables, code fences, math blocks, headings and a directive's option lines are not prose; a
MyST role such as ``{glue:text}`name:.3f``` or an inline ``$x$`` reads as one word, a link as its text."""
from __future__ import annotations

import re
from pathlib import Path

__all__ = ["PARAGRAPH_WORDS", "paragraphs", "word_count", "long_paragraphs"]

PARAGRAPH_WORDS = 130  # the longest paragraph a chapter may have (issue 23: "at most ~120 words")

_FENCE = re.compile(r"^(`{3,}|~{3,}|:{3,})\s*(\{[^}]*\})?")
_ROLE = re.compile(r"\{[\w:-]+\}`[^`]*`")
_CODE = re.compile(r"`[^`]*`")
_MATH = re.compile(r"\$[^$]+\$")
_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_ITEM = re.compile(r"^\s*([-*+]|\d+[.)])\s+")
_OPTION = re.compile(r"^:[\w-]+:")


def paragraphs(markdown: str) -> list[str]:
    """The prose paragraphs of ``markdown``: blocks between blank lines, each list item on its own. Plain code
    fences and ``$$`` math are skipped whole; a directive fence (```` ```{note} ````, ``:::{tip}``) is dropped but
    its body is prose, less its ``:option:`` lines; table rows, headings and HTML comments are skipped."""
    out: list[str] = []
    current: list[str] = []
    fences: list[tuple[str, bool]] = []  # open fences: (marker, is a directive whose body is prose)
    in_math = False

    def flush() -> None:
        if current:
            out.append(" ".join(current))
            current.clear()

    for raw in markdown.splitlines():
        line = raw.strip()
        if in_math:
            in_math = not line.endswith("$$")
            continue
        fence = _FENCE.match(line)
        if fences and not fences[-1][1]:  # inside a code fence: only its closing marker matters
            if fence and line == fences[-1][0]:
                fences.pop()
            continue
        if fence:
            flush()
            if fences and line == fences[-1][0] and fence.group(2) is None:
                fences.pop()
            else:
                fences.append((fence.group(1), fence.group(2) is not None))
            continue
        if line.startswith("$$"):
            flush()
            in_math = not (len(line) > 2 and line.endswith("$$"))
            continue
        if not line or line.startswith(("#", "|", "<!--")) or (fences and _OPTION.match(line)):
            flush()
            continue
        if _ITEM.match(raw):
            flush()
            line = _ITEM.sub("", raw).strip()
        current.append(line)
    flush()
    return out


def word_count(paragraph: str) -> int:
    """The words a reader reads: a role, inline code or inline math is one word, a link its text."""
    text = _LINK.sub(r"\1", paragraph)
    for pattern in (_ROLE, _CODE, _MATH):
        text = pattern.sub(" W ", text)
    return sum(1 for token in text.split() if any(ch.isalnum() for ch in token))


def long_paragraphs(notebook: str | Path, limit: int = PARAGRAPH_WORDS) -> list[tuple[int, int, str]]:
    """``(cell index, words, first words)`` of each markdown paragraph of ``notebook`` longer than ``limit``."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    return [(i, n, " ".join(p.split()[:8])) for i, c in enumerate(nb.cells) if c.cell_type == "markdown"
            for p in paragraphs(c.source) if (n := word_count(p)) > limit]
