"""Sweeps: every run starts from the same weights and differs only in the swept value."""
import numpy as np
import pytest
import torch

from clutils import MLP, Naive, Strategy, TrainConfig, make_stream, seed_everything, train_stream
from clutils.sweeps import best_value, sweep, sweep_table


class WeightDecay(Strategy):
    """lam/2 * ||theta||^2 -- a penalty whose effect on the weights is easy to predict."""

    name = "wd"

    def __init__(self, lam):
        super().__init__()
        if lam < 0:
            raise ValueError("lam must be >= 0")
        self.lam = lam

    def penalty(self, model, t, hidden):
        return 0.5 * self.lam * sum((p ** 2).sum() for p in model.parameters())


@pytest.fixture(scope="module")
def stream():
    return make_stream("split", "digits", classes_per_task=5, scenario="task")


CFG = TrainConfig(epochs=1, batch_size=64, lr=0.05, seed=3)


def make_model():
    return MLP(64, (16,), 5, n_heads=2)


def test_zero_value_reproduces_a_plain_run(stream):
    res = sweep([0.0], WeightDecay, make_model, stream, CFG, device="cpu")
    seed_everything(3)  # the sweep's seed defaults to cfg.seed
    ref = train_stream(make_model(), stream, Naive(), CFG, device="cpu", progress=False)
    np.testing.assert_array_equal(res[0].R, ref.R)
    assert res[0].extras["value"] == 0.0


def test_runs_start_from_same_weights_and_penalty_shrinks_them(stream):
    models = []

    def record():
        m = make_model()
        models.append((m, [p.detach().clone() for p in m.parameters()]))
        return m

    sweep([0.0, 0.1, 1.0], WeightDecay, record, stream, CFG, device="cpu")
    inits = [init for _, init in models]
    for other in inits[1:]:
        for a, b in zip(inits[0], other):
            assert torch.equal(a, b)
    norms = [sum((p ** 2).sum().item() for p in m.parameters()) for m, _ in models]
    assert norms[0] > norms[1] > norms[2]


def test_table_and_best_value(stream):
    res = sweep([0.0, 30.0], WeightDecay, make_model, stream, CFG, device="cpu")
    table = sweep_table(res, method="wd")
    assert list(table["value"]) == [0.0, 30.0] and set(table["method"]) == {"wd"}
    for row, r in zip(table.itertuples(), res):
        assert row.acc == pytest.approx(r.R[-1].mean())
        assert row.forgetting == pytest.approx(np.mean([r.R[:-1, 0].max() - r.R[-1, 0]]))
    # lam = 30 pins every weight near zero: the model cannot learn, so 0 wins
    assert table["acc"].iloc[1] < table["acc"].iloc[0]
    with pytest.warns(UserWarning, match="test set"):  # these runs have no validation split
        assert best_value(res, split="test") == 0.0


def test_bad_input_fails_before_training(stream):
    def no_model():
        raise AssertionError("training started before the input was checked")

    with pytest.raises(ValueError, match="at least one value"):
        sweep([], WeightDecay, no_model, stream, CFG)
    with pytest.raises(ValueError, match="finite"):
        sweep([1.0, float("nan")], WeightDecay, no_model, stream, CFG)
    with pytest.raises(ValueError, match="lam must be"):
        sweep([1.0, -1.0], WeightDecay, no_model, stream, CFG)
    with pytest.raises(ValueError, match="epochs lists"):
        sweep([1.0], WeightDecay, no_model, stream, TrainConfig(epochs=[1, 1, 1]))
    with pytest.raises(ValueError, match="metric"):
        best_value([], metric="forgetting")


# ---- executors: in-process, a thread pool, a real Dask cluster; failures; progress; caching ----

import dataclasses  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import clutils.sweeps as sw  # noqa: E402
from clutils import L2, NonFiniteLossError  # noqa: E402

PERM = {"kind": "permuted", "dataset": "digits", "n_tasks": 2, "seed": 1}  # a recipe: workers build it themselves
PCFG = TrainConfig(epochs=1, batch_size=64, lr=0.05, seed=0)


def perm_model():
    return MLP(64, (16,), 10)


def l2(lam):
    return L2(lam)


def _specs():  # one thread per run, as on a Dask worker with threads_per_worker=1 (floats depend on the count)
    return [sw.RunSpec(perm_model, L2(lam), PERM, TrainConfig(epochs=1, batch_size=64, lr=0.05, seed=s), s, "cpu",
                       extras={"value": lam, "seed": s}, threads=1) for lam in (0.0, 1.0) for s in (0, 1)]


def test_thread_pool_matches_in_process_and_progress_counts_runs(capsys):
    serial = sw.run_many(_specs(), progress=True)
    assert "4/4" in capsys.readouterr().out
    with ThreadPoolExecutor(2) as ex:
        pooled = sw.run_many(_specs(), executor=ex, progress=False)
    for a, b in zip(serial, pooled):
        assert a.extras == b.extras
        np.testing.assert_array_equal(a.R, b.R)
    assert not np.array_equal(serial[0].R, serial[1].R)  # seeds differ: the comparison is not vacuous
    # a Stream object instead of a recipe travels as the job's own argument
    built = make_stream(**PERM)
    specs = [dataclasses.replace(s, stream=built) for s in _specs()]
    with ThreadPoolExecutor(2) as ex:
        pooled = sw.run_many(specs, executor=ex, progress=False)
    for a, b in zip(serial, pooled):
        np.testing.assert_array_equal(a.R, b.R)


def test_dask_local_cluster_is_bitwise_serial():
    distributed = pytest.importorskip("distributed")
    serial = sw.run_many(_specs(), progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster, distributed.Client(cluster) as client:
        remote = sw.run_many(_specs(), executor=client.get_executor(), progress=False)
        pids = client.run(lambda: __import__("os").getpid())
    assert len(set(pids.values())) == 2 and __import__("os").getpid() not in pids.values()
    for a, b in zip(serial, remote):
        assert a.extras == b.extras
        np.testing.assert_array_equal(a.R, b.R)


def test_failing_run_is_reported_and_the_others_finish(capsys):
    vals = [0.0, 1e38, 0.1]  # lam = 1e38 makes the loss infinite after the first task
    with pytest.raises(NonFiniteLossError) as info:
        sweep(vals, l2, perm_model, PERM, PCFG, device="cpu")
    err = info.value
    assert [f.index for f in err.failures] == [1] and err.failures[0].extras == {"value": 1e38}
    assert err.results[1] is None and [r.extras["value"] for r in err.results if r] == [0.0, 0.1]
    assert "run 1 (value=1e+38) failed: NonFiniteLossError" in capsys.readouterr().err
    out = sweep(vals, l2, perm_model, PERM, PCFG, device="cpu", on_error="return")
    assert isinstance(out[1], sw.RunFailure) and "NonFiniteLossError" in out[1].error
    assert list(sweep_table(out)["value"]) == [0.0, 0.1]


def test_run_seeds_sets_weights_and_batches_per_seed():
    runs = sw.run_seeds(Naive, perm_model, PERM, PCFG, [4, 5], device="cpu")
    seed_everything(5)
    ref = train_stream(perm_model(), make_stream(**PERM), Naive(), TrainConfig(epochs=1, batch_size=64, lr=0.05, seed=5),
                       device="cpu", progress=False)
    np.testing.assert_array_equal(runs[1].R, ref.R)
    assert [r.extras["seed"] for r in runs] == [4, 5]
    with pytest.raises(ValueError, match="non-empty list of ints"):
        sw.run_seeds(Naive, perm_model, PERM, PCFG, [])


def test_results_land_in_the_cache_and_a_second_sweep_reloads(tmp_path):
    first = sweep([0.0, 0.5], l2, perm_model, PERM, PCFG, device="cpu", cache_dir=tmp_path)
    again = sweep([0.0, 0.5], l2, perm_model, PERM, PCFG, device="cpu", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 2
    assert [r.from_cache for r in first] == [False, False] and [r.from_cache for r in again] == [True, True]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.R, b.R)


def test_nothing_dask_is_imported_unless_asked():
    import subprocess
    import sys

    code = ("import sys, clutils, clutils.sweeps, clutils.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
