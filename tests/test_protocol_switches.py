"""The switches that measure a released code's protocol against the paper's: the authors' neuron
importance statistic, L1-Param, picking the epoch on a split, and settings that leave old fingerprints alone."""
import warnings

import pytest
import torch

from clutils import MLP, MAS, Compose, TrainConfig, make_stream, seed_everything, train_stream
from clutils.selfless import SSL, l1_param, neuron_importance


def _net(seed=0, width=(6, 5)):
    seed_everything(seed)
    return MLP(4, width, 3).double()


def test_batch_neuron_importance_equals_the_hand_loop():
    # alpha_i = (1/N) sum_b | sum_{k in b} dF^2/dz_i(x_k) |, z the pre-activation: the derivative through
    # the ReLU is dF^2/dh_i * 1[z_i > 0]; built here sample by sample with autograd on z itself.
    model = _net()
    x = torch.randn(10, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    W1, b1 = model.layers[0].weight, model.layers[0].bias
    W2, b2 = model.layers[1].weight, model.layers[1].bias
    per_batch = {0: [], 1: []}
    for lo in (0, 4, 8):  # batches of 4, 4, 2
        g1 = torch.zeros(6, dtype=torch.float64)
        g2 = torch.zeros(5, dtype=torch.float64)
        for k in range(lo, min(lo + 4, 10)):
            z1 = (W1 @ x[k] + b1).detach().requires_grad_(True)
            z2 = W2 @ torch.relu(z1) + b2
            z2.retain_grad()
            out = model.heads[0](torch.relu(z2))
            out.square().sum().backward()
            g1 += z1.grad
            g2 += z2.grad
        per_batch[0].append(g1.abs())
        per_batch[1].append(g2.abs())
    expected = [sum(per_batch[l]) / 10 for l in (0, 1)]
    got = neuron_importance(model, x, kind="batch", batch_size=4)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    # never larger than the paper's per-sample statistic (gate and triangle inequality)
    for g, p in zip(got, neuron_importance(model, x)):
        assert bool((g <= p + 1e-12).all())
    # batch size 1 with the gate: the per-sample statistic of the gated derivative, so it can only drop
    # where a neuron is off; with every unit on (a large positive bias) the two kinds agree exactly
    with torch.no_grad():
        for layer in model.layers:
            layer.bias.fill_(50.0)
    for g, p in zip(neuron_importance(model, x, kind="batch", batch_size=1), neuron_importance(model, x)):
        torch.testing.assert_close(g, p)


def test_batch_neuron_importance_needs_a_batch_size():
    with pytest.raises(ValueError, match="importance_batch_size"):
        SSL("slnid", importance_kind="batch")
    with pytest.raises(ValueError, match="neuron importance kind"):
        SSL("slnid", importance_kind="sum")
    with pytest.raises(ValueError, match="batch_size"):
        neuron_importance(_net(), torch.zeros(3, 4, dtype=torch.float64), kind="batch")


def test_l1_param_is_the_l1_norm_of_the_hidden_weights_only():
    model = _net()
    expected = model.layers[0].weight.abs().sum() + model.layers[1].weight.abs().sum()
    torch.testing.assert_close(l1_param(model), expected)
    s = SSL("l1-param", lam=0.5)
    assert s.method == "l1_param"
    torch.testing.assert_close(s.penalty(model, 0, []), 0.5 * expected)
    # its gradient is lam * sign(W) on the hidden weights and nothing on biases or the head
    s.penalty(model, 0, []).backward()
    torch.testing.assert_close(model.layers[0].weight.grad, 0.5 * model.layers[0].weight.sign())
    assert model.layers[0].bias.grad is None and model.heads[0].weight.grad is None


def test_a_setting_added_later_is_recorded_only_when_set():
    # runs cached before the setting existed used its default: their fingerprints must not change
    assert "importance_kind" not in SSL("slnid").config()
    assert "importance_batch_size" not in SSL("slnid").config()
    c = SSL("slnid", importance_kind="batch", importance_batch_size=200).config()
    assert c["importance_kind"] == "batch" and c["importance_batch_size"] == 200
    assert "select_epoch" not in TrainConfig().to_dict()
    assert TrainConfig(select_epoch="val").to_dict()["select_epoch"] == "val"


def _stream(digits, val=0.0):
    return make_stream("permuted", digits, n_tasks=2, seed=0, val_fraction=val)


def test_select_epoch_keeps_the_epoch_with_the_best_split_accuracy(digits):
    # record every epoch's test accuracy; the kept model's test accuracy on the task is their maximum
    stream = _stream(digits)
    seed_everything(0)
    model = MLP(64, (16,), 10)
    cfg = TrainConfig(epochs=6, lr=0.5, batch_size=32, eval_every_epoch=True, select_epoch="test")
    with pytest.warns(UserWarning, match="optimistic"):
        res = train_stream(model, stream, None, cfg, progress=False)
    for t in range(2):
        per_epoch = [c["acc"][t] for c in res.curves if c["task"] == t]
        assert res.R[t][t] == pytest.approx(max(per_epoch))
    # lr 0.5 makes the accuracy move between epochs: the choice is not the last epoch by default
    last = [[c["acc"][t] for c in res.curves if c["task"] == t][-1] for t in range(2)]
    assert any(res.R[t][t] > last[t] for t in range(2))


def test_select_epoch_on_validation_needs_a_validation_split(digits):
    with pytest.raises(ValueError, match="val_fraction"):
        train_stream(MLP(64, (8,), 10), _stream(digits), None, TrainConfig(select_epoch="val"), progress=False)
    with pytest.raises(ValueError, match="select_epoch"):
        TrainConfig(select_epoch="best").validate(2)


def test_select_epoch_val_keeps_the_best_validation_epoch(digits):
    # epoch e's batch order depends only on (seed, task, epoch), so a run of k epochs is the first k epochs
    # of a longer one: the validation accuracy after each epoch comes from runs of 1..5 epochs on task 1
    stream = _stream(digits, val=0.2)

    def run(epochs, select):
        seed_everything(0)
        cfg = TrainConfig(epochs=[epochs, 0], lr=0.5, batch_size=32, select_epoch=select)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no test-split warning on this path
            return train_stream(MLP(64, (16,), 10), stream, None, cfg, progress=False)

    per_epoch = [run(k, None).val_acc[0][0] for k in range(1, 6)]
    assert len(set(per_epoch)) > 1  # the accuracy moves between epochs: the choice matters
    assert run(5, "val").val_acc[0][0] == pytest.approx(max(per_epoch))
