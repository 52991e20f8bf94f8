"""The result cache: a finished run is loaded, never trained twice, never stale; an unfinished one resumes."""
import json

import pytest
import torch

import clutils as cl
from clutils.results import CacheError

CFG = cl.TrainConfig(epochs=2, batch_size=64, lr=0.05, seed=1)


@pytest.fixture(scope="module")
def stream():
    return cl.make_stream("permuted", "digits", n_tasks=3, seed=0)


def run(stream, strategy, cache, *, seed=0, cfg=CFG, **kw):
    cl.seed_everything(seed)
    return cl.train_stream(cl.MLP(64, (32,), 10), stream, strategy, cfg, device="cpu", progress=False,
                           cache_dir=cache, **kw)


def test_second_identical_call_is_loaded_not_trained(stream, tmp_path):
    first = run(stream, cl.Compose(cl.MAS(0.5), cl.SSL("slnid", 1e-3)), tmp_path)
    assert not first.from_cache and len(list(tmp_path.glob("*.json"))) == 1
    second = run(stream, cl.Compose(cl.MAS(0.5), cl.SSL("slnid", 1e-3)), tmp_path)
    assert second.from_cache
    assert second.acc == first.acc and second.config == first.config and second.timings == first.timings
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # the run's checkpoint folder is gone


@pytest.mark.parametrize("changed", [
    lambda: cl.Compose(cl.MAS(0.6), cl.SSL("slnid", 1e-3)),  # lambda
    lambda: cl.Compose(cl.MAS(0.5), cl.SSL("slnid", 2e-3)),  # lambda_SSL
    lambda: cl.Compose(cl.MAS(0.5), cl.SSL("slnid", 1e-3, sigma_frac=0.3)),  # sigma
    lambda: cl.Compose(cl.MAS(0.5), cl.SSL("slnid", 1e-3, discount="max")),  # discount
    lambda: cl.Compose(cl.MAS(0.5, kind="hebbian"), cl.SSL("slnid", 1e-3)),  # importance kind
    lambda: cl.Compose(cl.MAS(0.5, chunk_size=100), cl.SSL("slnid", 1e-3)),  # chunk size
], ids=["lam", "lam_ssl", "sigma", "discount", "kind", "chunk_size"])
def test_any_changed_strategy_setting_retrains(stream, tmp_path, changed):
    run(stream, cl.Compose(cl.MAS(0.5), cl.SSL("slnid", 1e-3)), tmp_path)
    again = run(stream, changed(), tmp_path)
    assert not again.from_cache and len(list(tmp_path.glob("*.json"))) == 2


def test_ewc_mode_gamma_and_training_settings_and_seed_retrain(stream, tmp_path):
    run(stream, cl.EWC(5.0), tmp_path)
    assert not run(stream, cl.EWC(5.0, mode="online", gamma=0.9), tmp_path).from_cache
    assert not run(stream, cl.EWC(5.0), tmp_path, cfg=cl.TrainConfig(epochs=2, batch_size=64, lr=0.04, seed=1)).from_cache
    other_seed = run(stream, cl.EWC(5.0), tmp_path, seed=7)  # other initial weights
    assert not other_seed.from_cache
    assert run(stream, cl.EWC(5.0), tmp_path, seed=7).from_cache
    assert len(list(tmp_path.glob("*.json"))) == 4


def test_an_unfinished_run_resumes_from_its_last_task(stream, tmp_path):
    whole = run(stream, cl.EWC(5.0), tmp_path / "a")
    part = run(stream, cl.EWC(5.0), tmp_path / "b", stop_after_task=0)
    assert len(part.acc) == 1 and not list((tmp_path / "b").glob("*.json"))
    rest = run(stream, cl.EWC(5.0), tmp_path / "b")
    assert not rest.from_cache and rest.acc == whole.acc


@pytest.mark.parametrize("damage", [lambda t: t[: len(t) // 2], lambda t: "not json at all",
                                    lambda t: json.dumps({"config": {}, "acc": [[0.5], [0.5, 0.4]]})],
                         ids=["truncated", "garbage", "ragged"])
def test_a_damaged_cache_file_is_a_clear_error_naming_it(stream, tmp_path, damage):
    run(stream, cl.Naive(), tmp_path)
    (path,) = tmp_path.glob("*.json")
    path.write_text(damage(path.read_text()))
    with pytest.raises(CacheError, match=rf"{path.name}.*Delete it"):
        run(stream, cl.Naive(), tmp_path)
