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
    assert best_value(res) == 0.0


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
