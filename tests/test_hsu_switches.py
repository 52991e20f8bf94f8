"""Issue 22: the settings Hsu et al.'s protocol needs, each a switch of clutils rather than a fork.

* ``TrainConfig(keep_optimizer=True)``: one optimiser across all tasks (Adam's moments carry over),
  checked against a hand-written loop that does exactly that, and resumed from a checkpoint exactly;
* ``fisher_diagonal(kind="predicted")``: the Fisher with the model's arg-max label;
* ``clutils.datasets.normalized``: torchvision's ``Normalize`` with given statistics.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import clutils
from clutils import seeds
from clutils.checkpoint import CheckpointError
from clutils.datasets import normalized

EPOCHS, BATCH, LR = 2, 32, 1e-3


def _stream(n_tasks=3):
    return clutils.make_stream("permuted", "digits", n_tasks=n_tasks, seed=0)


def _model(stream):
    torch.manual_seed(0)
    return clutils.MLP(stream.n_features, (32,), stream.n_outputs)


def _cfg(keep: bool) -> clutils.TrainConfig:
    return clutils.TrainConfig(epochs=EPOCHS, batch_size=BATCH, lr=LR, optimizer="adam", seed=0, keep_optimizer=keep)


def _hand_loop(stream, keep: bool) -> dict[str, torch.Tensor]:
    """Fine-tuning written out: the same batch order as clutils, one Adam for the stream (keep) or one per task."""
    model = _model(stream)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    for t, task in enumerate(stream):
        if not keep:
            opt = torch.optim.Adam(model.parameters(), lr=LR)
        n = len(task.y_train)
        for epoch in range(EPOCHS):
            order = torch.randperm(n, generator=seeds.generator(seeds.batch_order_seed(0, t, epoch)))
            for i in range(0, n, BATCH):
                idx = order[i:i + BATCH]
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(task.x_train[idx]), task.y_train[idx]).backward()
                opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("keep", [True, False])
def test_the_optimiser_is_kept_across_tasks_exactly_as_a_hand_loop_keeps_it(keep):
    stream = _stream()
    model = _model(stream)
    clutils.train_stream(model, stream, clutils.Naive(), _cfg(keep), device="cpu", progress=False)
    ours = model.state_dict()
    for keep_hand in (True, False):
        hand = _hand_loop(stream, keep_hand)
        gap = max(float((ours[k] - hand[k]).abs().max()) for k in hand)
        if keep_hand == keep:
            assert gap < 1e-5, f"keep_optimizer={keep}: clutils differs from the hand loop by {gap:.2e}"
        else:  # the switch changes the run: Adam's moments and step count really do carry over (or not)
            assert gap > 1e-3, f"keep_optimizer={keep} trains like keep={keep_hand} (gap {gap:.2e})"


def test_the_kept_optimiser_counts_every_step_of_the_stream():
    stream = _stream()
    model = _model(stream)
    steps = []
    for rec in clutils.train_tasks(model, stream, clutils.Naive(), _cfg(True), progress=False):
        steps.append(int(rec.optimizer_state["state"][0]["step"]))
    per_task = [EPOCHS * -(-len(t.y_train) // BATCH) for t in stream]
    assert steps == [sum(per_task[:i + 1]) for i in range(len(stream))]
    fresh = list(clutils.train_tasks(_model(stream), stream, clutils.Naive(), _cfg(False), progress=False))
    assert all(rec.optimizer_state is None for rec in fresh)


def test_a_run_with_a_kept_optimiser_resumes_to_the_same_weights(tmp_path):
    stream = _stream()
    whole = _model(stream)
    clutils.train_stream(whole, stream, clutils.Naive(), _cfg(True), device="cpu", progress=False)
    part = _model(stream)
    clutils.train_stream(part, stream, clutils.Naive(), _cfg(True), device="cpu", progress=False,
                         checkpoint_dir=tmp_path, stop_after_task=0)
    resumed = _model(stream)
    clutils.train_stream(resumed, stream, clutils.Naive(), _cfg(True), device="cpu", progress=False,
                         checkpoint_dir=tmp_path)
    for k, v in whole.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_a_checkpoint_without_the_optimisers_state_is_refused(tmp_path):
    stream = _stream()
    clutils.train_stream(_model(stream), stream, clutils.Naive(), _cfg(True), device="cpu", progress=False,
                         checkpoint_dir=tmp_path, stop_after_task=0)
    path = next(tmp_path.rglob("*.pt"))
    state = torch.load(path, weights_only=False)
    state["optimizer"] = None
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="optimiser state"):
        clutils.train_stream(_model(stream), stream, clutils.Naive(), _cfg(True), device="cpu", progress=False,
                             checkpoint_dir=tmp_path)


def test_keep_optimizer_must_be_a_bool():
    with pytest.raises(TypeError, match="keep_optimizer"):
        clutils.TrainConfig(keep_optimizer="yes").validate(1)


def test_the_predicted_label_fisher_is_the_empirical_formula_at_the_arg_max_label():
    torch.manual_seed(0)
    model = clutils.MLP(20, (16,), 5)
    x = torch.randn(64, 20)
    y_hat = model(x).argmax(1)
    pred = clutils.fisher_diagonal(model, x, kind="predicted")
    emp = clutils.fisher_diagonal(model, x, y_hat, kind="empirical")
    true = clutils.fisher_diagonal(model, x, kind="true")
    for k in pred:
        torch.testing.assert_close(pred[k], emp[k], rtol=1e-6, atol=1e-9)
    # the arg-max label is the most probable one, so its term p(1-p)-like weight is the smallest: on a random
    # (uncertain) network the predicted-label Fisher is well below the true one, which sums every class
    ratio = sum(float(pred[k].sum()) for k in pred) / sum(float(true[k].sum()) for k in true)
    assert 0 < ratio < 0.9


def test_ewc_accepts_the_predicted_label_fisher():
    stream = _stream(2)
    ewc = clutils.EWC(1.0, fisher="predicted")
    model = _model(stream)
    clutils.train_stream(model, stream, ewc, clutils.TrainConfig(epochs=1, batch_size=BATCH, lr=0.05), device="cpu",
                         progress=False)
    x = stream[0].x_train
    F_pred = ewc.importance(model, stream, 0)
    expect = clutils.fisher_diagonal(model, x, model(x).argmax(1), kind="empirical")
    for k in expect:
        torch.testing.assert_close(F_pred[k], expect[k], rtol=1e-5, atol=1e-9)


def test_normalized_maps_every_pixel_to_its_standard_score():
    ds = clutils.load_dataset("digits")
    z = normalized(ds, 0.25, 0.5)
    torch.testing.assert_close(z.x_train, (ds.x_train - 0.25) / 0.5)
    torch.testing.assert_close(z.x_test.mean(), (ds.x_test.mean() - 0.25) / 0.5)
    assert torch.equal(z.y_train, ds.y_train) and z.image_shape == ds.image_shape and z.name != ds.name
    with pytest.raises(ValueError, match="sd > 0"):
        normalized(ds, 0.1, 0.0)
