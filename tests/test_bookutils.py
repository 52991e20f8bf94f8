"""The chapters' shared helpers: profile choice and glue."""
import numpy as np
import pytest
import torch

import clutils


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
