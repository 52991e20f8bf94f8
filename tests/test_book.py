"""The book as a product: every chapter in ``_toc.yml`` follows the conventions, runs with
papermill on the quick profile, carries the outputs of its full run; the book builds with
zero warnings, serves everything (MathJax included) itself, and lists what it cites.
"""
from __future__ import annotations

import ast
import posixpath
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import nbformat
import pytest

from conftest import BOOK, ROOT, book_config, chapter_notebooks, toc_documents

CHAPTERS = chapter_notebooks()
CHAPTER_IDS = [p.stem for p in CHAPTERS]
REQUIRED_PARAMETERS = {"PROFILE": "full", "DATA_ROOT": None, "DEVICE": "auto"}


def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def _literal_assignments(source: str) -> dict:
    """``NAME = <literal>`` statements at the top level of a cell."""
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                out[node.targets[0].id] = ...
    return out


def _glue_names(nb) -> set[str]:
    """Names stored with ``glue`` (MyST-NB keeps them in the outputs' ``scrapbook`` metadata)."""
    return {o["metadata"]["scrapbook"]["name"] for c in _code_cells(nb) for o in c.get("outputs", [])
            if "scrapbook" in o.get("metadata", {})}


CITE = re.compile(r"\{cite(?::[a-z]+)?\}`([^`]+)`")


def _cited_keys(doc: Path) -> set[str]:
    if doc.suffix == ".ipynb":
        text = "\n".join(c.source for c in nbformat.read(doc, as_version=4).cells if c.cell_type == "markdown")
    else:
        text = doc.read_text()
    return {k.strip() for group in CITE.findall(text) for k in group.split(",")}


def _bib_keys() -> set[str]:
    return set(re.findall(r"@\w+\s*\{\s*([^,\s]+)\s*,", (ROOT / "references.bib").read_text()))


# ----------------------------------------------------------------------------- chapter conventions

@pytest.mark.parametrize("path", CHAPTERS, ids=CHAPTER_IDS)
def test_chapter_metadata_asks_colab_for_a_gpu(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.get("accelerator") == "GPU", f"{path.name}: notebook metadata needs \"accelerator\": \"GPU\"."
    assert nb.metadata.get("colab", {}).get("gpuType"), f"{path.name}: notebook metadata needs colab.gpuType (e.g. T4)."
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


@pytest.mark.parametrize("path", CHAPTERS, ids=CHAPTER_IDS)
def test_single_parameters_cell_with_full_defaults_and_auto_device(path):
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in _tags(c)]
    assert len(cells) == 1, f"{path.name}: exactly one cell must be tagged 'parameters', found {len(cells)}."
    values = _literal_assignments(cells[0].source)
    for name, default in REQUIRED_PARAMETERS.items():
        assert name in values, f"{path.name}: the parameters cell must define {name}."
        assert values[name] == default, f"{path.name}: {name} must default to {default!r}, not {values[name]!r}."
    assert isinstance(values.get("SEED"), int), f"{path.name}: the parameters cell must define SEED = <int>."
    hard = [c.source for c in _code_cells(nb) if re.search(r"device\s*=\s*[\"'](cpu|cuda)", c.source)]
    assert not hard, f"{path.name}: pass device=DEVICE (\"auto\"), not a hard-coded device: {hard[0][:80]!r}"


@pytest.mark.parametrize("path", CHAPTERS, ids=CHAPTER_IDS)
def test_committed_outputs_come_from_one_full_run(path):
    nb = nbformat.read(path, as_version=4)
    code = _code_cells(nb)
    counts = [c.get("execution_count") for c in code]
    assert None not in counts, f"{path.name}: some cells were never executed; run the chapter with papermill in place."
    assert counts == sorted(counts) and len(set(counts)) == len(counts), \
        f"{path.name}: cells ran out of order ({counts}); rerun the whole chapter top to bottom."
    assert any(c.get("outputs") for c in code), f"{path.name}: no outputs committed."
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: committed outputs contain an error: {errors[0].get('ename')}"
    injected = [c for c in nb.cells if "injected-parameters" in _tags(c)]
    pm_params = nb.metadata.get("papermill", {}).get("parameters", {})
    profiles = [_literal_assignments(c.source).get("PROFILE", "full") for c in injected] + [pm_params.get("PROFILE", "full")]
    assert set(profiles) == {"full"}, \
        f"{path.name}: the committed outputs come from PROFILE={profiles}; commit a run of the full profile."


@pytest.mark.parametrize("path", CHAPTERS, ids=CHAPTER_IDS)
def test_chapter_cites_papers_that_are_in_the_bibliography(path):
    keys = _cited_keys(path)
    assert keys, f"{path.name}: cite the papers the chapter uses with {{cite}}`key`."
    missing = keys - _bib_keys()
    assert not missing, f"{path.name}: cites {sorted(missing)} which are not in references.bib."


@pytest.mark.book
@pytest.mark.parametrize("path", CHAPTERS, ids=CHAPTER_IDS)
def test_chapter_runs_quick_with_papermill(path, tmp_path):
    """``papermill book/<chapter>.ipynb out.ipynb -p PROFILE quick --cwd book`` succeeds and glues what the text quotes."""
    import papermill as pm

    out = tmp_path / path.name
    pm.execute_notebook(str(path), str(out), parameters={"PROFILE": "quick"}, cwd=str(BOOK),
                        kernel_name="python3", progress_bar=False)
    ran = nbformat.read(out, as_version=4)
    assert ran.metadata.papermill.parameters == {"PROFILE": "quick"}
    assert all(c.get("execution_count") is not None for c in _code_cells(ran))
    committed = _glue_names(nbformat.read(path, as_version=4))
    assert _glue_names(ran) == committed, \
        f"{path.name}: the quick run glues {sorted(_glue_names(ran))}, the committed run {sorted(committed)}."


# ----------------------------------------------------------------------------- the built book

class _Refs(HTMLParser):
    """Collects what a page loads: script src, link href (with rel), img src, inline <style> text."""

    def __init__(self):
        super().__init__()
        self.refs: list[tuple[str, str]] = []  # (kind, url)
        self.styles: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.refs.append(("script", a["src"]))
        elif tag == "link" and a.get("href"):
            rel = (a.get("rel") or "").lower()
            if not set(rel.split()) & {"canonical", "alternate", "next", "prev", "search", "index", "author", "license"}:
                self.refs.append((f"link[{rel}]", a["href"]))
        elif tag in ("img", "source", "iframe") and a.get("src"):
            self.refs.append((tag, a["src"]))
        elif tag == "style":
            self._in_style = True
        if a.get("style"):
            self.styles.append(a["style"])

    def handle_endtag(self, tag):
        if tag == "style":
            self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.styles.append(data)


CSS_URL = re.compile(r"""@import\s+(?:url\()?\s*["']?([^"')\s;]+)|url\(\s*["']?([^"')]+)["']?\s*\)""")


def _is_remote(url: str) -> bool:
    return urlsplit(url.strip()).scheme in ("http", "https", "ftp", "ws", "wss") or url.strip().startswith("//")


def remote_references(html: str) -> list[str]:
    """Remote scripts, stylesheets, fonts and images a page (or its inline CSS) would load."""
    p = _Refs()
    p.feed(html)
    bad = [f"{kind} {url}" for kind, url in p.refs if _is_remote(url)]
    return bad + remote_css_references("\n".join(p.styles))


def remote_css_references(css: str) -> list[str]:
    return [f"css {u}" for m in CSS_URL.finditer(css) for u in m.groups() if u and _is_remote(u)]


def test_remote_reference_detector_flags_cdn_assets():
    page = """<html><head><script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>
    <link rel="stylesheet" href="//fonts.googleapis.com/css?family=Lato"><link rel="next" href="https://x.org/a">
    <script src="_static/local.js"></script><style>@import url("https://x.org/a.css");</style></head>
    <body><a href="https://colab.research.google.com/github/x">colab</a></body></html>"""
    assert remote_references(page) == ["script https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js",
                                       "link[stylesheet] //fonts.googleapis.com/css?family=Lato",
                                       "css https://x.org/a.css"]
    css = "@font-face{src:url('https://f.io/a.woff2') format('woff2'), url(fonts/b.woff)} @import 'http://y/z.css';"
    assert remote_css_references(css) == ["css https://f.io/a.woff2", "css http://y/z.css"]


@pytest.mark.book
def test_book_builds_with_zero_warnings(built_book):
    warnings = [line for line in built_book.log.splitlines() if "WARNING" in line or "ERROR" in line]
    assert built_book.returncode == 0 and not warnings, \
        "jupyter-book build . -W --keep-going failed:\n" + ("\n".join(warnings) or built_book.log[-3000:])


def _html_pages(html_root: Path) -> list[Path]:
    """The site's pages (not the theme's Jinja macro files under ``_static``)."""
    return sorted(p for p in html_root.rglob("*.html") if not {"_sources", "_static"} & set(p.parts))


@pytest.mark.book
def test_no_page_loads_anything_remote_and_local_assets_exist(built_book):
    html_root = built_book.html
    pages = _html_pages(html_root)
    assert pages, f"no HTML pages under {html_root}"
    problems = []
    for page in pages:
        text = page.read_text(errors="replace")
        problems += [f"{page.relative_to(html_root)}: {r}" for r in remote_references(text)]
        p = _Refs()
        p.feed(text)
        for kind, url in p.refs:  # local scripts/stylesheets/images must resolve to files of the site
            if _is_remote(url) or url.startswith(("data:", "#")):
                continue
            target = (page.parent / urlsplit(url).path).resolve()
            if not target.exists():
                problems.append(f"{page.relative_to(html_root)}: {kind} {url} -> missing file")
    for css in sorted(html_root.rglob("*.css")):
        problems += [f"{css.relative_to(html_root)}: {r}" for r in remote_css_references(css.read_text(errors="replace"))]
    assert not problems, "the built book must work offline:\n" + "\n".join(problems[:30])


@pytest.mark.book
def test_mathjax_is_served_by_the_book(built_book):
    html = built_book.html
    intro = (html / "book" / "intro.html").read_text()
    srcs = [u for kind, u in _parse_refs(intro) if kind == "script" and "tex-chtml" in u]
    assert len(srcs) == 1, f"intro.html should load the local MathJax component once, found {srcs}"
    resolved = posixpath.normpath(posixpath.join("book", urlsplit(srcs[0]).path))
    assert resolved == "mathjax/tex-chtml.js"
    fonts = list((html / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").glob("*.woff"))
    assert len(fonts) > 10, "MathJax's CommonHTML fonts must ship with the book."


def _parse_refs(text: str) -> list[tuple[str, str]]:
    p = _Refs()
    p.feed(text)
    return p.refs


@pytest.mark.book
def test_bibliography_lists_exactly_the_cited_papers(built_book):
    cited = set().union(*(_cited_keys(d) for d in toc_documents()))
    bib = (built_book.html / "book" / "bibliography.html").read_text()
    entries = re.findall(r'<div class="citation" id="([^"]+)" role="doc-biblioentry">', bib)
    assert len(entries) == len(cited) > 0, f"{len(entries)} bibliography entries for {len(cited)} cited keys"
    for doc in toc_documents():  # every citation in a page links to an entry of the bibliography
        page = built_book.html / doc.relative_to(ROOT).with_suffix(".html")
        targets = set(re.findall(r'href="bibliography\.html#([^"]+)"', page.read_text()))
        assert targets <= set(entries), f"{page.name} links to missing bibliography entries {targets - set(entries)}"
        assert bool(targets) == bool(_cited_keys(doc)), f"{page.name}: citations not rendered as links"


@pytest.mark.book
@pytest.mark.parametrize("path", CHAPTERS, ids=CHAPTER_IDS)
def test_chapter_page_has_a_colab_button(built_book, path):
    repo = book_config()["repository"]
    owner_name = urlsplit(repo["url"]).path.strip("/")
    link = f"https://colab.research.google.com/github/{owner_name}/blob/{repo['branch']}/{path.relative_to(ROOT).as_posix()}"
    page = (built_book.html / path.relative_to(ROOT).with_suffix(".html")).read_text()
    assert link in page, f"{path.name}: no Colab launch button linking to {link}"
