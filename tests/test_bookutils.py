"""The chapters' shared helpers: profile choice and glue."""
import math

import numpy as np
import pytest
import torch

import clutils

from pathlib import Path

BOOK_DIR = Path(__file__).resolve().parents[1] / "book"


def test_choose_profile_returns_a_copy_and_names_the_choices():
    profiles = {"quick": {"epochs": 1}, "full": {"epochs": 5}}
    p = clutils.choose_profile("quick", profiles)
    p["epochs"] = 99
    assert profiles["quick"]["epochs"] == 1
    with pytest.raises(ValueError, match=r"unknown PROFILE 'fast'; choose one of quick, full"):
        clutils.choose_profile("fast", profiles)


def test_glue_stores_numpy_and_torch_scalars_as_python_numbers(monkeypatch):
    import myst_nb

    stored = {}
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=False: stored.__setitem__(name, value))
    clutils.glue("a", np.float64(93.25))
    clutils.glue("b", torch.tensor(7))
    clutils.glue("c", np.array([1.0, 2.0]))
    assert type(stored["a"]) is float and stored["a"] == 93.25
    assert type(stored["b"]) is int and stored["b"] == 7
    assert isinstance(stored["c"], np.ndarray)  # arrays are left alone


def test_glue_rounds_floats_to_12_significant_digits_so_cpus_agree(monkeypatch):
    import myst_nb

    stored = {}
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=False: stored.__setitem__(name, value))
    for name, v in [("up", 4.999999999999998), ("down", 5.000000000000001), ("small", 1.234567890123456e-7),
                    ("nan", float("nan"))]:
        clutils.glue(name, v)
    assert stored["up"] == stored["down"] == 5.0  # the last-bit noise of two CPUs glues one value
    assert stored["small"] == 1.23456789012e-7    # significant digits, not decimals
    assert math.isnan(stored["nan"])


def test_prefixed_glue_prefixes_every_name(monkeypatch):
    import myst_nb

    stored = {}
    monkeypatch.setattr(myst_nb, "glue", lambda name, value, display=False: stored.__setitem__(name, value))
    g = clutils.book.prefixed_glue("ch1_")
    g("acc", np.float32(0.5))
    assert stored == {"ch1_acc": 0.5}
    with pytest.raises(TypeError, match="prefix must be a string"):
        clutils.book.prefixed_glue(1)


def test_pooled_accuracy_weights_tasks_by_test_size():
    assert clutils.book.pooled_accuracy([1.0, 0.0, 0.5], [100, 300, 200]) == pytest.approx((100 + 100) / 600)
    with pytest.raises(ValueError, match="one accuracy per task"):
        clutils.book.pooled_accuracy([1.0, 0.5], [100])


def test_run_with_value_and_tagged_source():
    class R:
        def __init__(self, v):
            self.extras = {"value": v}
    runs = [R(1.0), R(10.0)]
    assert clutils.book.run_with_value(runs, 10.0) is runs[1]
    with pytest.raises(KeyError, match="no run with value 3"):
        clutils.book.run_with_value(runs, 3.0)
    assert "def gd(" in clutils.book.tagged_source(BOOK_DIR / "01_forgetting.ipynb", "from-scratch")
    with pytest.raises(LookupError, match="no code cell is tagged"):
        clutils.book.tagged_source(BOOK_DIR / "01_forgetting.ipynb", "no-such-tag")
