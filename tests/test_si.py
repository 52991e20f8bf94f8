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
