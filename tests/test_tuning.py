"""clutils.tuning: the choice of a strength does not depend on where the grid was put."""
import math

import pytest

from clutils.tuning import bracket, bracket_2d


def peak(at: float):
    """A validation score with its optimum at ``at`` (log-quadratic), and a log of the values asked."""
    asked = []

    def score(v):
        asked.append(v)
        return -(math.log10(v) - math.log10(at)) ** 2
    return score, asked


@pytest.mark.parametrize("grid", [[1e-4, 1e-3, 1e-2], [1e-2, 1e-1, 1.0], [1.0, 10.0, 100.0], [1e3, 1e4]])
def test_the_choice_is_the_same_wherever_the_grid_starts(grid):
    score, asked = peak(3.16e-2)  # half a decade above 0.01
    t = bracket(score, grid, max_extensions=8)
    assert t.best == pytest.approx(10 ** -1.5)  # the refined midpoint between 0.01 and 0.1
    assert t.interior and t.bound is None and t.describe() == "interior"
    assert len(asked) == len(set(asked))  # no value evaluated twice


def test_an_edge_choice_is_extended_until_interior_and_the_trace_keeps_every_value():
    score, _ = peak(300.0)
    t = bracket(score, [0.1, 1.0, 10.0], refine=False)
    assert t.values == [0.1, 1.0, 10.0, 100.0, 1000.0] and t.best == 100.0 and t.interior
    assert t.extensions == 2
    assert [r["chosen"] for r in t.table()] == [False, False, False, True, False]


def test_divergence_is_a_stated_bound():
    def score(v):  # better and better up to where it diverges
        return None if v >= 50 else math.log(v)
    t = bracket(score, [0.1, 1.0, 10.0])
    # 100 diverged, so the search looked between (31.6) and stopped half a decade short of it
    assert t.best == pytest.approx(10 ** 1.5) and not t.interior and 100.0 in t.scores and t.scores[100.0] is None
    assert t.bound == "diverged at 100" and t.describe() == "edge (diverged at 100)"
    # a grid value that diverges is a bound too, with no extension past it
    t2 = bracket(score, [1.0, 10.0, 100.0])
    assert t2.best == pytest.approx(10 ** 1.5) and t2.bound == "diverged at 100" and t2.extensions == 0


def test_named_limits_and_the_budget():
    score, _ = peak(1e-9)
    t = bracket(score, [1e-3, 1e-2], lower=1e-4, refine=False)
    assert t.best == 1e-4 and t.bound == "lower limit 0.0001"
    t = bracket(score, [1e-3, 1e-2], max_extensions=1, refine=False)
    assert t.best == 1e-4 and t.bound == "budget" and not t.interior


def test_nan_counts_as_divergence():
    t = bracket(lambda v: float("nan") if v > 5 else -abs(v - 1), [0.1, 1.0, 10.0], refine=False)
    # 10 diverged: the value between (3.16) is tried, and 1.0 then has a finite neighbour on each side
    assert t.best == 1.0 and t.interior and t.scores[10.0] is None and math.sqrt(10.0) in t.scores


@pytest.mark.parametrize("kw, fragment", [
    (dict(grid=[1.0]), "two distinct"), (dict(grid=[1.0, -1.0]), ">= 0|> 0"), (dict(grid=[1.0, 2.0], factor=1.0), "> 1"),
    (dict(grid=[1.0, 2.0], upper=1.5), "outside the stated bounds"),
])
def test_bad_grids_are_refused(kw, fragment):
    with pytest.raises((ValueError, TypeError), match=fragment):
        bracket(lambda v: 0.0, **kw)


def test_everything_diverged_says_what_to_do():
    with pytest.raises(ValueError, match="smaller strengths"):
        bracket(lambda v: None, [1.0, 10.0])


def test_two_strengths_that_interact_are_tuned_jointly():
    # the best pair lies on a ridge: the optimum of b moves with a (a · b = 1e-2), at a = 1
    def score(a, b):
        return -(math.log10(a)) ** 2 - 4 * (math.log10(a * b) + 2) ** 2
    t = bracket_2d(score, 10.0, 1e-4, step=10.0)  # 1-D choices one decade off in a
    assert t.best == pytest.approx((1.0, 1e-2)) and t.interior == (True, True) and t.bounds == []
    assert t.extensions >= 1 and len(t.scores) > 9


def _digits_stream():
    import clutils as cl
    return cl.make_stream("permuted", "digits", n_tasks=2, seed=0, val_fraction=0.2)


def test_tune_scores_a_value_by_the_tuning_seeds_validation_accuracy(tmp_path):
    import clutils as cl
    from clutils.tuning import tune
    stream = _digits_stream()
    cfg = cl.TrainConfig(epochs=1, batch_size=64, lr=0.05)
    make_model = lambda: cl.MLP(stream.n_features, (16,), stream.n_outputs)  # noqa: E731
    t = tune(lambda lam: cl.EWC(lam), make_model, stream, cfg, [1.0, 1e3], seeds=[100, 101],
             reported_seeds=[0, 1, 2], device="cpu", cache_dir=tmp_path, max_extensions=1, refine=False)
    # the score of λ = 1 is the mean validation accuracy of the two tuning-seed runs, trained on their own
    by_hand = []
    for s in (100, 101):
        cl.seed_everything(s)
        r = cl.train_stream(make_model(), stream, cl.EWC(1.0), cl.TrainConfig(epochs=1, batch_size=64, lr=0.05, seed=s),
                            device="cpu", progress=False)
        by_hand.append(r.summary("val")["acc"])
    assert t.scores[1.0] == pytest.approx(sum(by_hand) / 2, abs=1e-12)
    assert [r.extras["seed"] for r in t.runs[1.0]] == [100, 101]
    assert set(t.scores) >= {1.0, 1e3} and len(t.scores) == 3  # one extension past the edge


def test_tune_refuses_reported_seeds_and_streams_without_validation():
    import clutils as cl
    from clutils.tuning import tune
    stream = _digits_stream()
    with pytest.raises(ValueError, match="also reported seeds"):
        tune(lambda lam: cl.EWC(lam), lambda: None, stream, cl.TrainConfig(), [1.0, 10.0], seeds=[0, 100],
             reported_seeds=[0, 1])
    no_val = cl.make_stream("permuted", "digits", n_tasks=2, seed=0)
    with pytest.raises(ValueError, match="val_fraction"):
        tune(lambda lam: cl.EWC(lam), lambda: None, no_val, cl.TrainConfig(), [1.0, 10.0], seeds=[100])


def test_tune_treats_a_diverged_run_as_the_bound(tmp_path):
    import clutils as cl
    from clutils.tuning import tune
    stream = _digits_stream()
    cfg = cl.TrainConfig(epochs=1, batch_size=64, lr=0.5)
    t = tune(lambda lam: cl.L2(lam), lambda: cl.MLP(stream.n_features, (16,), stream.n_outputs), stream, cfg,
             [1e-2, 1e4], seeds=[100], device="cpu", cache_dir=tmp_path, max_extensions=2)
    # an L2 spring with lr·λ > 2 oscillates off to infinity: λ = 1e4 diverges and scores None, not a crash
    assert t.scores[1e4] is None and t.best < 1e4
    assert 10.0 in t.scores  # the search looked between the diverged value and the finite one


def test_a_pair_next_to_a_diverged_one_is_an_edge_named_by_the_divergence():
    # the score rises with b until b > 1e-3, where the runs diverge: the best b sits on that bound
    def score(a, b):
        return None if b > 1.5e-3 else -(math.log10(a)) ** 2 + math.log10(b)
    t = bracket_2d(score, 1.0, 1e-3, step=10.0)
    assert t.best == pytest.approx((1.0, 1e-3))
    assert t.interior == (True, False)
    assert t.bounds == [f"diverged at {(1.0, 1e-3 * 10.0)}"]  # not "budget": the search knows why it stopped


def test_tune_2d_scores_a_pair_by_the_tuning_seeds_and_keeps_its_runs(tmp_path):
    import clutils as cl
    from clutils.tuning import tune, tune_2d
    stream = _digits_stream()
    cfg = cl.TrainConfig(epochs=1, batch_size=64, lr=0.05)
    make_model = lambda: cl.MLP(stream.n_features, (16,), stream.n_outputs)  # noqa: E731
    t = tune_2d(lambda lam, ssl: cl.Compose(cl.L2(lam), cl.SSL("slnid", ssl)), make_model, stream, cfg, 0.1, 1e-3,
                seeds=[100], reported_seeds=[0], device="cpu", cache_dir=tmp_path, max_extensions=0)
    assert len(t.scores) == 9 and set(t.runs) == set(t.scores)
    # the centre's score is the validation ACC of the one tuning seed, the run that the 1-D tuning would make
    one = tune(lambda lam: cl.Compose(cl.L2(0.1), cl.SSL("slnid", lam)), make_model, stream, cfg, [1e-3, 1e-2],
               seeds=[100], device="cpu", cache_dir=tmp_path, max_extensions=0, refine=False)
    assert t.scores[(0.1, 1e-3)] == one.scores[1e-3] == t.runs[(0.1, 1e-3)][0].summary("val")["acc"]
    assert one.runs[1e-3][0].from_cache  # the same run, served by the cache


def test_tuning_refuses_an_unknown_metric_before_training():
    import clutils as cl
    from clutils.tuning import tune
    with pytest.raises(ValueError, match="metric must be one of"):
        tune(lambda lam: cl.EWC(lam), lambda: None, _digits_stream(), cl.TrainConfig(), [1.0, 10.0], seeds=[100],
             metric="accuracy")
