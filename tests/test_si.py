"""Synaptic Intelligence: the path integral on the exact quadratic toy, the clamp, c = 0, resume."""
import pytest
import torch
from torch import nn

import clutils as cl
from clutils import toy


class Weights(nn.Module):
    """The toy's two weights as a module, so SI's hooks can watch them train."""

    def __init__(self, w0):
        super().__init__()
        self.w = nn.Parameter(torch.as_tensor(w0, dtype=torch.float64).clone())


def test_path_integral_is_the_loss_decrease_plus_the_exact_second_order_term():
    # for a quadratic L, each step changes the loss by exactly g.d + d^T H d / 2, so
    # sum(-g.d) = L(start) - L(end) + sum(d^T H d) / 2  -- an identity, and the last term is O(lr)
    task, _ = toy.two_weight_tasks()
    model, si = Weights([0.0, 0.0]), cl.SI(1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    si.before_task(model, None, 0)
    second_order = torch.zeros((), dtype=torch.float64)
    start_loss = toy.loss(model.w.detach(), task)
    for _ in range(3000):
        before = model.w.detach().clone()
        opt.zero_grad()
        toy.loss(model.w, task).backward()
        si.after_backward(model, 0)  # keeps g and theta before the step
        si.grad_penalty(model, 0)  # nothing consolidated yet: adds nothing
        opt.step()
        si.after_step(model, 0)
        d = model.w.detach() - before
        second_order += 0.5 * d @ toy.hessian(task) @ d
    decrease = start_loss - toy.loss(model.w.detach(), task)
    omega = si.path["w"]
    assert torch.allclose(omega.sum(), decrease + second_order, rtol=1e-10)
    assert second_order < 0.02 * decrease  # small steps: the path integral is the loss decrease to ~1%
    assert torch.allclose(model.w.detach(), torch.tensor([2.0, 2.0], dtype=torch.float64), atol=1e-3)


def test_importance_is_clamped_at_zero_and_normalised_by_the_distance_travelled():
    model, si = Weights([1.0, 1.0]), cl.SI(1.0, xi=0.5)
    si.before_task(model, None, 0)
    with torch.no_grad():
        model.w.copy_(torch.tensor([3.0, 1.5], dtype=torch.float64))
    si.path["w"] = torch.tensor([2.0, -1.0], dtype=torch.float64)  # the second parameter's moves hurt the task
    omega = si.importance(model, None, 0)["w"]
    assert torch.allclose(omega, torch.tensor([2.0 / (4.0 + 0.5), 0.0], dtype=torch.float64))
    assert torch.equal(si.path["w"], torch.zeros(2, dtype=torch.float64))  # reset for the next task


def _run(strategy, stream, **kw):
    cl.seed_everything(0)
    cfg = cl.TrainConfig(epochs=2, batch_size=64, lr=0.05, momentum=0.9, seed=1)
    return cl.train_stream(cl.MLP(64, (32,), 10), stream, strategy, cfg, device="cpu", progress=False, **kw)


@pytest.fixture(scope="module")
def stream():
    return cl.make_stream("permuted", "digits", n_tasks=3, seed=0)


def test_c_zero_is_naive_bit_for_bit_and_c_positive_is_not(stream):
    naive = _run(cl.Naive(), stream)
    assert _run(cl.SI(0.0), stream).acc == naive.acc
    si = cl.SI(1.0)
    with_si = _run(si, stream)
    assert with_si.acc != naive.acc  # the penalty acts (Avalanche users saw SI silently equal naive)
    assert min(float(a.min()) for a in si.omega.values()) >= 0  # accumulated importance never negative
    assert sum(float(a.sum()) for a in si.omega.values()) > 0


def test_a_resumed_si_run_equals_an_uninterrupted_one(stream, tmp_path):
    whole = _run(cl.SI(1.0), stream)
    _run(cl.SI(1.0), stream, checkpoint_dir=tmp_path, stop_after_task=0)
    assert _run(cl.SI(1.0), stream, checkpoint_dir=tmp_path).acc == whole.acc


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="non-negative"):
        cl.SI(-1.0)
    with pytest.raises(ValueError, match="xi must be > 0"):
        cl.SI(1.0, xi=0.0)


class Recorder(cl.Strategy):
    """Records the trajectory (parameters before and after every step) of the run it is composed into."""

    def __init__(self):
        super().__init__()
        self.steps = []

    def after_backward(self, model, t):
        self._before = [p.detach().clone() for p in model.parameters()]

    def after_step(self, model, t):
        self.steps.append((t, self._before, [p.detach().clone() for p in model.parameters()]))


def test_si_with_slnid_credits_the_task_loss_gradient_alone(stream):
    """Compose(SI(c), SSL("slnid", lam)): omega is -sum g_CE . delta theta on the run's own trajectory,
    g_CE the cross-entropy gradient alone (recomputed here, batch by batch, by a plain loop)."""
    si, rec = cl.SI(1.0), Recorder()
    cl.seed_everything(0)
    model = cl.MLP(64, (32,), 10)
    cfg = cl.TrainConfig(epochs=1, batch_size=64, lr=0.05, seed=1)
    cl.train_stream(model, stream, cl.Compose(rec, si, cl.SSL("slnid", 0.05)), cfg, device="cpu", progress=False,
                    stop_after_task=0)
    # replay task 0's batches with the same order, computing the CE gradient at each recorded point
    task = stream[0]
    order = torch.randperm(task.n_train, generator=cl.seeds.generator(cl.seeds.batch_order_seed(1, 0, 0)))
    probe = cl.MLP(64, (32,), 10)
    omega = [torch.zeros_like(p) for p in probe.parameters()]
    steps0 = [s for s in rec.steps if s[0] == 0]
    for k, i in enumerate(range(0, task.n_train, 64)):
        idx = order[i:i + 64]
        _, before, after = steps0[k]
        with torch.no_grad():
            for p, b in zip(probe.parameters(), before):
                p.copy_(b)
        probe.zero_grad()
        torch.nn.functional.cross_entropy(probe(task.x_train[idx]), task.y_train[idx]).backward()
        for o, p, b, a in zip(omega, probe.parameters(), before, after):
            o -= p.grad * (a - b)
    # SI's path buffer was folded into Omega after task 0: compare Omega^(0) = max(omega,0)/(delta^2+xi)
    for (n, p0), o in zip(model.named_parameters(), omega):
        delta = p0.detach() - si.start[n]
        assert torch.allclose(si.omega[n], o.clamp_min(0) / (delta.square() + si.xi), rtol=1e-4, atol=1e-7), n


def test_si_first_or_last_in_compose_gives_the_same_run(stream):
    """after_backward sees .grad before any grad_penalty: SI's place in a Compose no longer matters."""
    first = _run(cl.Compose(cl.SI(1.0), cl.EWC(5.0)), stream)
    last = _run(cl.Compose(cl.EWC(5.0), cl.SI(1.0)), stream)
    assert first.acc == last.acc


def test_select_epoch_restores_si_s_path_integral_with_the_model(monkeypatch):
    """The epoch kept by select_epoch comes back with SI's state of that epoch, not the last epoch's.

    The validation accuracy is scripted to fall after each task's first epoch, so the first epoch is
    kept: the run must then equal, state for state, one that trains each later task one epoch only."""
    from clutils import training

    calls: dict[int, int] = {}

    def falling(model, stream, t, split, batch_size):
        calls[t] = calls.get(t, 0) + 1
        return 1.0 - 0.1 * calls[t]  # the first epoch is the best

    monkeypatch.setattr(training, "_task_accuracy", falling)
    val = cl.make_stream("permuted", "digits", n_tasks=2, seed=0, val_fraction=0.2)
    runs = []
    for epochs in (3, [3, 1]):
        calls.clear()
        cl.seed_everything(0)
        si, model = cl.SI(1.0), cl.MLP(64, (32,), 10)
        cl.train_stream(model, val, si, cl.TrainConfig(epochs=epochs, batch_size=64, lr=0.1, seed=1,
                                                        select_epoch="val"), device="cpu", progress=False)
        runs.append((si, model))
    (si3, m3), (si1, m1) = runs
    # task 0 kept its first epoch in both runs; so did task 1: the models and SI's importances agree
    for a, b in zip(m3.state_dict().values(), m1.state_dict().values()):
        assert torch.equal(a, b)
    for n in si3.omega.keys():
        assert torch.equal(si3.omega[n], si1.omega[n]), n  # with the last epoch's path integral they would not
