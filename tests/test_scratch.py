"""The textbook layer of the chapters: each chapter's from-scratch cell (tagged ``from-scratch``) is run
here and must agree with ``clutils`` on the same model and data, so the short plain-PyTorch version and
the fast version cannot drift apart; and every chapter keeps the textbook conventions (exercises with
folded solutions, misconception notes, plotting code folded, the map of the two problems).
"""
from __future__ import annotations

import math
import re

import nbformat
import pytest
import torch

import clutils as cl
from clutils import toy
from clutils.book import tagged_source
from conftest import BOOK, chapter_notebooks

CHAPTERS = chapter_notebooks()
CHAPTER_IDS = [p.stem for p in CHAPTERS]


def run_scratch_cell(notebook: str, **namespace) -> dict:
    """Execute the chapter's ``from-scratch`` cell in a fresh namespace (plus ``namespace``) and return it."""
    ns = {"torch": torch, "math": math, **namespace}
    exec(compile(tagged_source(BOOK / notebook, "from-scratch"), f"{notebook}[from-scratch]", "exec"), ns)
    return ns


def _small_mlp(n_in=12, hidden=(9, 7), n_out=4, seed=0) -> cl.MLP:
    torch.manual_seed(seed)
    return cl.MLP(n_in, hidden, n_out).double()


def _data(n=40, n_in=12, n_out=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, n_in, generator=g, dtype=torch.float64), torch.randint(0, n_out, (n,), generator=g)


# ----------------------------------------------------------------------------- chapter 1: gradient descent

def test_ch1_scratch_gradient_descent_matches_toy():
    A, B = toy.two_weight_tasks()
    ns = run_scratch_cell("01_forgetting.ipynb", A=A, B=B)
    gd = ns["gd"]
    z2 = torch.zeros(2, dtype=torch.float64)
    torch.testing.assert_close(gd(z2, A.x, A.y, 0.1, 150), toy.gradient_descent(z2, A, lr=0.1, steps=150))
    path_a, path_b = toy.sequential(z2, [A, B], lr=0.1, steps=150)
    torch.testing.assert_close(ns["w_after_a"], path_a[-1])
    torch.testing.assert_close(ns["w_after_b"], path_b[-1])
    A4, B4 = toy.four_weight_tasks()
    w0 = torch.tensor([2.0, 2.0, 0.0, 0.0], dtype=torch.float64)
    ours = gd(w0, B4.x, B4.y, 0.1, 3000)[-1]
    torch.testing.assert_close(ours, toy.gradient_descent(w0, B4, lr=0.1, steps=3000)[-1])
    torch.testing.assert_close(ours, torch.tensor([5.0, 6.0, 3.0, 4.0], dtype=torch.float64))  # the chapter's closed form


# ----------------------------------------------------------------------------- chapter 2: Fisher and EWC penalty

@pytest.mark.parametrize("kind", ["true", "empirical"])
def test_ch2_scratch_fisher_matches_fisher_diagonal(kind):
    ns = run_scratch_cell("02_ewc.ipynb")
    net = _small_mlp()
    x, y = _data()
    ours = ns["fisher_by_loop"](net, x, None if kind == "true" else y)
    fast = cl.fisher_diagonal(net, x, y, kind=kind)
    assert set(ours) == set(fast) == {n for n, _ in net.named_parameters()}
    for name in ours:
        torch.testing.assert_close(ours[name], fast[name].to(ours[name].dtype), rtol=1e-9, atol=1e-12)


def test_ch2_scratch_true_and_empirical_fisher_differ():
    """The loop really uses the labels for the empirical Fisher (else the agreement above proves little)."""
    ns = run_scratch_cell("02_ewc.ipynb")
    net = _small_mlp()
    x, y = _data()
    true, emp = ns["fisher_by_loop"](net, x), ns["fisher_by_loop"](net, x, y)
    assert (true["heads.0.weight"] - emp["heads.0.weight"]).abs().max() > 1e-3


def test_ch2_scratch_penalty_matches_quadratic_penalty():
    ns = run_scratch_cell("02_ewc.ipynb")
    net = _small_mlp()
    g = torch.Generator().manual_seed(2)
    anchor = {n: p.detach() + 0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in net.named_parameters()}
    omega = {n: torch.rand(p.shape, generator=g, dtype=p.dtype) for n, p in net.named_parameters()}
    ours = ns["ewc_penalty"](net, anchor, omega, 7.0)
    fast = cl.quadratic_penalty(net, anchor, omega, 7.0)
    torch.testing.assert_close(ours, fast.to(ours.dtype), rtol=1e-9, atol=1e-12)
    expected = 3.5 * sum(float((omega[n] * (p.detach() - anchor[n]) ** 2).sum()) for n, p in net.named_parameters())
    assert math.isclose(float(ours.detach()), expected, rel_tol=1e-12)  # lam/2 sum Omega (theta - theta*)^2


# ----------------------------------------------------------------------------- chapter 3: MAS

def test_ch3_scratch_mas_matches_mas_importance():
    ns = run_scratch_cell("03_mas.ipynb")
    net = _small_mlp()
    x, _ = _data()
    ours, fast = ns["mas_by_loop"](net, x), cl.mas_importance(net, x)
    assert set(ours) == set(fast)
    for name in ours:
        torch.testing.assert_close(ours[name], fast[name].to(ours[name].dtype), rtol=1e-9, atol=1e-12)
    # the absolute value is taken per sample: larger than the batch-summed shortcut on the whole set
    batch = cl.mas_importance(net, x, kind="batch", batch_size=len(x))
    assert float(batch["layers.0.weight"].sum()) < float(ours["layers.0.weight"].sum())


# ----------------------------------------------------------------------------- chapter 4: SLNI

@pytest.mark.parametrize("sigma, with_alpha", [(None, False), (2.0, False), (None, True), (1.5, True)])
def test_ch4_scratch_slni_matches_slni(sigma, with_alpha):
    ns = run_scratch_cell("04_selfless.ipynb")
    g = torch.Generator().manual_seed(3)
    h = torch.relu(torch.randn(16, 13, generator=g, dtype=torch.float64))
    alpha = 2 * torch.rand(13, generator=g, dtype=torch.float64) if with_alpha else None
    ours = ns["slni_by_loop"](h, sigma=sigma, alpha=alpha)
    torch.testing.assert_close(ours, cl.slni(h, sigma=sigma, alpha=alpha), rtol=1e-10, atol=1e-12)


def test_ch4_scratch_slni_on_the_chapters_hand_example():
    """The 3-neuron example of the chapter: SLNI with sigma = 1 is 7 e^{-1/2} + e^{-2}."""
    ns = run_scratch_cell("04_selfless.ipynb")
    H = torch.tensor([[1.0, 2.0, 1.0], [0.0, 1.0, 3.0]], dtype=torch.float64)
    assert math.isclose(float(ns["slni_by_loop"](H, sigma=1.0)), 7 * math.exp(-0.5) + math.exp(-2), rel_tol=1e-12)


# ----------------------------------------------------------------------------- chapter 5: SI

def _si_with_clutils(net, batches, lr, xi=0.1):
    """clutils.SI's Omega after one task of plain SGD on ``batches`` (c = 0: only the bookkeeping)."""
    si = cl.SI(0.0, xi=xi)
    si.before_task(net, None, 0)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    for x, y in batches:
        cl.train_step(net, opt, si, x, y, 0, net.out_features, 0)
    return si.importance(net, None, 0)


@pytest.mark.parametrize("lr, xi", [(0.05, 0.1), (0.5, 1e-3)])
def test_ch5_scratch_si_matches_clutils_si(lr, xi):
    ns = run_scratch_cell("05_scenarios.ipynb")
    x, y = _data(n=48)
    batches = [(x[i:i + 12], y[i:i + 12]) for i in range(0, 48, 12)] * 3
    net_a, net_b = _small_mlp(), _small_mlp()
    ours = ns["si_by_hand"](net_a, batches, lr, xi=xi)
    fast = _si_with_clutils(net_b, batches, lr, xi=xi)
    assert set(ours) == set(fast) == {n for n, _ in net_a.named_parameters()}
    for name in ours:
        torch.testing.assert_close(ours[name], fast[name], rtol=1e-9, atol=1e-12)
    for a, b in zip(net_a.parameters(), net_b.parameters()):  # both trained the same way
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_ch5_scratch_si_path_integral_is_the_loss_decrease_for_small_steps():
    """sum_i Omega_i (Delta_i^2 + xi) = sum_i max(w_i, 0) >= sum_i w_i ~ L(start) - L(end) with a small learning rate."""
    ns = run_scratch_cell("05_scenarios.ipynb")
    x, y = _data(n=32)
    net = _small_mlp()
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    def loss():
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(net(x), y))

    before = loss()
    omega = ns["si_by_hand"](net, [(x, y)] * 200, 0.01, xi=0.1)
    decrease = before - loss()
    clamped = sum(float((omega[n] * ((p.detach() - start[n]) ** 2 + 0.1)).sum()) for n, p in net.named_parameters())
    assert decrease > 0.05
    assert clamped >= decrease * (1 - 2e-2)  # the positive part of the path integral covers the decrease
    assert all(bool((o >= 0).all()) for o in omega.values())  # the clamp


# ----------------------------------------------------------------------------- textbook conventions

def _tags(cell) -> list[str]:
    return list(cell.get("metadata", {}).get("tags", []))


@pytest.mark.parametrize("path", CHAPTERS, ids=CHAPTER_IDS)
def test_chapter_has_one_short_from_scratch_cell(path):
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "from-scratch" in _tags(c)]
    assert len(cells) == 1 and cells[0].cell_type == "code", f"{path.name}: tag exactly one code cell 'from-scratch'."
    lines = [l for l in cells[0].source.splitlines() if l.strip()]
    assert len(lines) <= 22, f"{path.name}: the from-scratch cell has {len(lines)} lines; keep it to about 20."


@pytest.mark.parametrize("path", CHAPTERS, ids=CHAPTER_IDS)
def test_chapter_ends_with_4_to_6_exercises_with_folded_solutions(path):
    nb = nbformat.read(path, as_version=4)
    start = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and "## Exercises" in c.source), None)
    assert start is not None, f"{path.name}: no '## Exercises' section."
    text = "\n".join(c.source for c in nb.cells[start:] if c.cell_type == "markdown")
    n = len(re.findall(r"\*\*Exercise \d+ \(", text))
    assert 4 <= n <= 6, f"{path.name}: {n} exercises; the book asks for 4 to 6 per chapter."
    code = [c for c in nb.cells[start:] if c.cell_type == "code" and "write_run_record" not in c.source]
    folds = text.count("{dropdown}") + sum("hide-input" in _tags(c) or "hide-cell" in _tags(c) for c in code)
    assert folds >= n, f"{path.name}: every exercise needs a folded solution ({folds} folds for {n} exercises)."
    assert all("hide-input" in _tags(c) or "hide-cell" in _tags(c) for c in code), \
        f"{path.name}: code solutions must be folded (tag hide-input or hide-cell)."


@pytest.mark.parametrize("path", CHAPTERS, ids=CHAPTER_IDS)
def test_chapter_names_a_misconception_and_its_place_on_the_map(path):
    nb = nbformat.read(path, as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert "Common misconception" in text, f"{path.name}: no 'Common misconception' note."
    opening = nb.cells[0].source
    assert "which weights matter" in opening.lower() or "how dense the" in opening.lower(), \
        f"{path.name}: the opening must say which of the two problems the chapter addresses."


@pytest.mark.parametrize("path", CHAPTERS, ids=CHAPTER_IDS)
def test_plotting_code_is_folded_and_no_profile_dict_is_printed(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    unfolded = [c.source.splitlines()[0] for c in code if "plt.subplots(" in c.source and "hide-input" not in _tags(c)]
    assert not unfolded, f"{path.name}: plotting cells must be tagged hide-input: {unfolded}"
    setup = next(c for c in code if "choose_profile" in c.source)
    last = setup.source.strip().splitlines()[-1].strip()
    assert last not in ("P", "print(P)") and "{P}" not in setup.source, f"{path.name}: do not print the profile dict."


@pytest.mark.parametrize("path", CHAPTERS, ids=CHAPTER_IDS)
def test_chapter_imports_clutils_only_through_names_that_stay(path):
    nb = nbformat.read(path, as_version=4)
    src = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    gone = re.findall(r"clutils\.(penalties|inhibition|importance)\b", src)
    assert not gone, f"{path.name}: clutils.{gone[0]} is going away; import the name from clutils itself."
