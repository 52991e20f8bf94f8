"""The trainer: learns, is reproducible, evaluates correctly, and refuses bad set-ups early."""
import numpy as np
import pytest
import torch

import clutils as cl



def _run(stream, strategy=None, seed=0, epochs=3, **kw):
    cl.seed_everything(seed)
    model = cl.MLP(stream.n_features, (64,), stream.n_outputs, stream.n_heads)
    cfg = cl.TrainConfig(epochs=epochs, batch_size=32, lr=0.05, momentum=0.9, seed=seed)
    return model, cl.train_stream(model, stream, strategy, cfg, device="cpu", progress=False, **kw)


def test_single_task_reaches_accuracy_floor(digits):
    stream = cl.disjoint(digits, [list(range(10))], scenario="domain")
    _, res = _run(stream, epochs=10)
    assert res.R.shape == (1, 1)
    assert res.R[0, 0] >= 0.93  # a 64-unit MLP on 8x8 digits; measured ~0.97


def test_same_seed_same_matrix_and_other_seed_differs(digits):
    stream = cl.permuted(digits, n_tasks=3, seed=0)
    _, a = _run(stream, seed=1)
    _, b = _run(stream, seed=1)
    _, c = _run(stream, seed=2)
    assert a.acc == b.acc
    assert a.acc != c.acc


def test_evaluate_matches_manual_accuracy(digits):
    stream = cl.split(digits, 2, scenario="task")
    model, res = _run(stream, epochs=1)
    for j, task in enumerate(stream):
        with torch.no_grad():
            pred = model(task.x_test, j).argmax(1)
        assert res.R[-1, j] == pytest.approx((pred == task.y_test).double().mean().item())


def test_class_incremental_cannot_answer_unseen_classes(digits):
    stream = cl.split(digits, 2, scenario="class")
    _, res = _run(stream, epochs=2)
    upper = res.R[np.triu_indices(5, k=1)]
    assert (upper == 0).all()  # after task i, classes of later tasks are not among the active outputs
    assert res.R[-1, :-1].mean() < 0.3  # and naive fine-tuning forgets almost everything


def test_task_incremental_heads_of_other_tasks_are_left_alone(digits):
    stream = cl.split(digits, 2, scenario="task")
    cl.seed_everything(0)
    model = cl.MLP(64, (32,), 2, 5)
    before = [p.detach().clone() for p in model.head_parameters(3)]
    head0 = model.head_parameters(0)[0].detach().clone()
    first_two = cl.Stream(stream.name, "task", stream.tasks[:2], 64, 2, 5)
    cl.train_stream(model, first_two, cfg=cl.TrainConfig(epochs=1, momentum=0.9), device="cpu", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.head_parameters(3)))  # head of an unseen task
    assert not torch.equal(head0, model.head_parameters(0)[0].detach())  # while task 0's head did learn


def test_joint_upper_bound_beats_naive(digits):
    stream = cl.permuted(digits, n_tasks=3)
    _, naive = _run(stream)
    _, joint = _run(stream, cl.Joint())
    assert joint.summary()["acc"] > naive.summary()["acc"] + 0.05
    assert cl.forgetting(joint.R) < 0.05


def test_mismatched_heads_are_refused_before_training(digits):
    stream = cl.split(digits, 2, scenario="task")
    with pytest.raises(ValueError, match=r"1 head\(s\) but the task-incremental stream needs 5"):
        cl.train_stream(cl.MLP(64, (8,), 2, 1), stream, device="cpu", progress=False)
    with pytest.raises(ValueError, match="input features"):
        cl.train_stream(cl.MLP(784, (8,), 2, 5), stream, device="cpu", progress=False)
    with pytest.raises(ValueError, match="epochs lists 2 values for 5 tasks"):
        cl.train_stream(cl.MLP(64, (8,), 2, 5), stream, cfg=cl.TrainConfig(epochs=[1, 2]), device="cpu",
                        progress=False)
    with pytest.raises(ValueError, match="unknown optimizer"):
        cl.train_stream(cl.MLP(64, (8,), 2, 5), stream, cfg=cl.TrainConfig(optimizer="lbfgs"), device="cpu")


def test_diverging_loss_stops_with_task_and_epoch(digits):
    stream = cl.permuted(digits, n_tasks=2)
    model = cl.MLP(64, (32,), 10)
    with pytest.raises(cl.NonFiniteLossError, match=r"task 0 \(perm0\), epoch 0.*learning rate \(1e\+20\)"):
        cl.train_stream(model, stream, cfg=cl.TrainConfig(epochs=3, lr=1e20, momentum=0.9), device="cpu",
                        progress=False)


def test_run_result_json_round_trip(digits, tmp_path):
    stream = cl.permuted(digits, n_tasks=2)
    _, res = _run(stream, epochs=1)
    path = res.save(tmp_path / "run.json")
    back = cl.RunResult.load(path)
    assert back.acc == res.acc and back.config == res.config
    assert back.timings["train_s"] == res.timings["train_s"]


def test_curves_record_every_epoch(digits):
    stream = cl.permuted(digits, n_tasks=2)
    model = cl.MLP(64, (32,), 10)
    cfg = cl.TrainConfig(epochs=2, eval_every_epoch=True, lr=0.05)
    res = cl.train_stream(model, stream, cfg=cfg, device="cpu", progress=False)
    assert [(c["task"], c["epoch"]) for c in res.curves] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert res.curves[-1]["acc"] == res.acc[-1]  # last epoch's curve point is the final evaluation


def test_mixed_head_forward_equals_per_head():
    model = cl.MLP(5, (4,), 3, n_heads=3)
    x = torch.randn(6, 5)
    heads = torch.tensor([0, 2, 1, 1, 0, 2])
    mixed = model(x, heads)
    for i in range(6):
        assert torch.allclose(mixed[i], model(x[i:i + 1], int(heads[i]))[0])
    with pytest.raises(IndexError, match="3 head"):
        model(x, 3)


def test_flush_denormal_is_on_only_while_training(digits):
    tiny = torch.tensor([1e-40], dtype=torch.float32)  # a subnormal float32
    seen = []

    class Probe(cl.Strategy):
        def before_task(self, model, stream, t):
            seen.append(bool((tiny * 1.0 == 0).item()))

    stream = cl.permuted(digits, n_tasks=2)
    cfg = cl.TrainConfig(epochs=1, flush_denormal=True)
    cl.train_stream(cl.MLP(64, (8,), 10), stream, Probe(), cfg, device="cpu", progress=False)
    assert seen == [True, True]  # subnormals read as zero during training
    assert (tiny * 1.0).item() != 0  # and the process is back to IEEE behaviour afterwards
    cl.train_stream(cl.MLP(64, (8,), 10), stream, Probe(), cl.TrainConfig(epochs=1), device="cpu", progress=False)
    assert seen[2:] == [False, False]  # off by default


def test_flush_denormal_restores_the_mode_it_found(digits):
    tiny = torch.tensor([1e-40], dtype=torch.float32)
    stream = cl.permuted(digits, n_tasks=1)
    torch.set_flush_denormal(True)  # the caller had it on already
    try:
        cl.train_stream(cl.MLP(64, (8,), 10), stream, None, cl.TrainConfig(epochs=1, flush_denormal=True),
                        device="cpu", progress=False)
        assert (tiny * 1.0).item() == 0  # still on: the run did not switch the caller's setting off
    finally:
        torch.set_flush_denormal(False)


def test_adam_with_a_momentum_is_refused_not_ignored(digits):
    with pytest.raises(ValueError, match="momentum=0"):
        cl.train_stream(cl.MLP(64, (8,), 10), cl.permuted(digits, n_tasks=1), None,
                        cl.TrainConfig(optimizer="adam", momentum=0.9), device="cpu", progress=False)


def test_importance_time_is_recorded_per_task(digits):
    stream = cl.permuted(digits, n_tasks=3)
    r = cl.train_stream(cl.MLP(64, (8,), 10), stream, cl.EWC(1.0), cl.TrainConfig(epochs=1), device="cpu",
                        progress=False)
    assert len(r.timings["importance_s"]) == 3 and all(s > 0 for s in r.timings["importance_s"])
    naive = cl.train_stream(cl.MLP(64, (8,), 10), stream, None, cl.TrainConfig(epochs=1), device="cpu",
                            progress=False)
    assert sum(naive.timings["importance_s"]) < sum(r.timings["importance_s"])  # naive computes none


def test_train_step_is_the_trainer_s_step(digits):
    # a hand-written loop over train_step gives the trainer's matrix bit for bit
    stream = cl.permuted(digits, n_tasks=2)
    cfg = cl.TrainConfig(epochs=1, batch_size=50, lr=0.05, seed=4)
    cl.seed_everything(0)
    ref = cl.train_stream(cl.MLP(64, (16,), 10), stream, cl.MAS(0.3), cfg, device="cpu", progress=False)
    cl.seed_everything(0)
    model, strategy, rows = cl.MLP(64, (16,), 10), cl.MAS(0.3), []
    for t, task in enumerate(stream):
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
        order = torch.randperm(len(task.y_train), generator=torch.Generator().manual_seed(4 * 1_000_003 + t * 1_009))
        for i in range(0, len(order), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            cl.train_step(model, opt, strategy, task.x_train[idx], task.y_train[idx], 0, 10, t)
        strategy.after_task(model, stream, t)
        rows.append(cl.evaluate(model, stream, t))
    assert rows == ref.acc


class _StepCount(cl.Strategy):
    name = "stepcount"

    def __init__(self):
        super().__init__()
        self.steps: dict[int, int] = {}

    def after_step(self, model, t):
        self.steps[t] = self.steps.get(t, 0) + 1


def test_drop_last_skips_only_a_short_last_batch_and_stays_out_of_the_fingerprint(digits):
    stream = cl.make_stream("split", digits, scenario="task", classes_per_task=5)
    n = [t.n_train for t in stream]
    batch = 64
    assert any(k % batch for k in n)  # a short last batch exists to be dropped
    counts = {}
    for drop in (False, True):
        probe = _StepCount()
        cfg = cl.TrainConfig(epochs=2, batch_size=batch, lr=0.05, drop_last=drop)
        cl.seed_everything(0)
        cl.train_stream(cl.MLP(stream.n_features, (16,), stream.n_outputs, stream.n_heads), stream, probe, cfg,
                        device="cpu", progress=False)
        counts[drop] = probe.steps
    assert counts[False] == {t: 2 * -(-k // batch) for t, k in enumerate(n)}  # ceil: the short batch trains
    assert counts[True] == {t: 2 * (k // batch) for t, k in enumerate(n)}     # floor: it does not
    assert "drop_last" not in cl.TrainConfig().to_dict() and cl.TrainConfig(drop_last=True).to_dict() == {"drop_last": True}
    with pytest.raises(TypeError, match="drop_last must be True or False"):
        cl.TrainConfig(drop_last=1).validate(2)
