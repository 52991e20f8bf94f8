"""Validation data: a seeded, class-stratified hold-out of each task's training set; hyper-parameters chosen on it."""
import numpy as np
import pytest
import torch

import clutils as cl
from clutils.sweeps import best_value, sweep_table


def test_hold_out_is_disjoint_stratified_and_seeded(digits):
    s = cl.make_stream("split", digits, classes_per_task=2, scenario="task", val_fraction=0.2, val_seed=3)
    whole = cl.make_stream("split", digits, classes_per_task=2, scenario="task")
    for t, w in zip(s, whole):
        assert len(t.y_train) + len(t.y_val) == len(w.y_train)
        for c in t.y_train.unique().tolist():  # round(0.2 * n_c) of every class held out
            n_c = int((w.y_train == c).sum())
            assert int((t.y_val == c).sum()) == round(0.2 * n_c)
        rows = lambda x: {tuple(r) for r in x.tolist()}  # noqa: E731 (images are distinct rows here)
        assert not rows(t.x_train) & rows(t.x_val)
        assert rows(t.x_train) | rows(t.x_val) == rows(w.x_train)
        assert torch.equal(t.x_test, w.x_test)  # the test sets are untouched
    again = cl.make_stream("split", digits, classes_per_task=2, scenario="task", val_fraction=0.2, val_seed=3)
    other = cl.make_stream("split", digits, classes_per_task=2, scenario="task", val_fraction=0.2, val_seed=4)
    assert torch.equal(again[0].x_val, s[0].x_val) and not torch.equal(other[0].x_val, s[0].x_val)
    assert s.description["val_fraction"] == 0.2 and "val_fraction" not in whole.description


def test_permuted_tasks_share_one_split_and_stay_lazy(digits):
    s = cl.make_stream("permuted", digits, n_tasks=4, val_fraction=0.1)
    base = s[0].x_val[:, torch.argsort(s[0].perm)]  # the held-out images, unpermuted
    for t in s:
        assert torch.equal(t.x_val, base[:, t.perm])  # one held-out set, permuted per task when read
    plain = cl.make_stream("permuted", digits, n_tasks=4)
    assert s.storage_bytes() <= plain.storage_bytes() + 4 * 8 * 64  # no copy per task


def test_the_run_records_a_validation_matrix_beside_the_test_one(digits):
    s = cl.make_stream("permuted", digits, n_tasks=3, val_fraction=0.1)
    cl.seed_everything(0)
    model = cl.MLP(64, (32,), 10)
    r = cl.train_stream(model, s, cl.EWC(1.0), cl.TrainConfig(epochs=2, lr=0.05), device="cpu", progress=False)
    assert r.R_val.shape == r.R.shape == (3, 3)
    assert r.val_acc[-1] == cl.evaluate(model, s, 2, split="val")
    assert not np.array_equal(r.R_val, r.R)  # other images, other accuracies
    with pytest.raises(ValueError, match="val_fraction"):
        cl.train_stream(cl.MLP(64, (8,), 10), cl.make_stream("permuted", digits, n_tasks=1), None,
                        cl.TrainConfig(epochs=1), device="cpu", progress=False).R_val


def _fake(value, test, val):
    return cl.RunResult(config={}, acc=[[test]], val_acc=[[val]], extras={"value": value})


def test_best_value_selects_on_validation_and_flags_a_test_choice():
    runs = [_fake(1.0, test=0.9, val=0.7), _fake(10.0, test=0.8, val=0.75)]
    assert best_value(runs) == 10.0  # the validation winner, although the test set prefers 1.0
    with pytest.warns(UserWarning, match="test set"):
        assert best_value(runs, split="test") == 1.0
    no_val = [cl.RunResult(config={}, acc=[[0.5]], extras={"value": 1.0})]
    with pytest.raises(ValueError, match="val_fraction"):
        best_value(no_val)
    assert list(sweep_table(runs)["val_acc"]) == [0.7, 0.75]


def test_bad_fractions_are_refused(digits):
    for f in (1.0, -0.1, 1.5, True):
        with pytest.raises(ValueError, match="val_fraction"):
            cl.make_stream("permuted", digits, n_tasks=2, val_fraction=f)
