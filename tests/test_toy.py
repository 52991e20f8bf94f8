"""The exact toy of chapter 1: closed forms, hand computations and the four-weight facts."""
import pytest
import torch

from clutils import toy

D = torch.float64


def t(*v):
    return torch.tensor(v, dtype=D)


@pytest.fixture
def ab():
    return toy.two_weight_tasks()


def test_hessian_is_the_hand_computed_one(ab):
    A, B = ab
    # X = [[2,0],[1,1],[0,1]]: X^T X = [[5,1],[1,2]], n = 3
    H = t(5.0, 1.0, 1.0, 2.0).reshape(2, 2) / 3
    assert torch.allclose(toy.hessian(A), H) and torch.allclose(toy.hessian(B), H)
    assert torch.allclose(toy.fisher(A), H) and torch.allclose(toy.fisher(A, noise_var=4.0), H / 4)


def test_loss_is_the_quadratic_bowl(ab):
    A, _ = ab
    w = torch.randn(50, 2, dtype=D, generator=torch.Generator().manual_seed(0)) * 5
    d = w - t(2.0, 2.0)
    bowl = 0.5 * torch.einsum("ni,ij,nj->n", d, toy.hessian(A), d)
    assert torch.allclose(toy.loss(w, A), bowl)
    assert toy.loss(t(2.0, 2.0), A).item() == pytest.approx(0.0, abs=1e-12)
    # by hand at B's optimum: 1/2 (6,8) H (6,8)^T = (180 + 96 + 128) / 6
    assert toy.loss(t(8.0, 10.0), A).item() == pytest.approx(404 / 6)


def test_gradient_matches_autograd(ab):
    A, _ = ab
    w = t(0.3, -1.7).requires_grad_()
    toy.loss(w, A).backward()
    assert torch.allclose(w.grad, toy.gradient(w.detach(), A))


def test_joint_optimum_is_exactly_the_average(ab):
    assert torch.allclose(toy.joint_optimum(ab), t(5.0, 6.0), atol=1e-12)


def test_joint_optimum_general_formula():
    xa, xb = t(1.0, 0.0, 1.0, 3.0).reshape(2, 2), t(2.0, 1.0, 0.0, 1.0, 1.0, 1.0).reshape(3, 2)
    A, B = toy.make_task([2.0, 2.0], xa), toy.make_task([8.0, 10.0], xb)
    Ha, Hb = xa.T @ xa / 2, xb.T @ xb / 3
    expected = torch.linalg.solve(Ha + Hb, Ha @ t(2.0, 2.0) + Hb @ t(8.0, 10.0))
    assert torch.allclose(toy.joint_optimum([A, B]), expected)
    # and it is where joint gradient descent goes
    assert torch.allclose(toy.gradient_descent([0.0, 0.0], [A, B], 0.1, 3000)[-1], expected, atol=1e-8)


def test_sequential_training_moves_from_a_to_b_and_erases_a(ab):
    A, B = ab
    ta, tb = toy.sequential([0.0, 0.0], [A, B], lr=0.1, steps=300)
    assert torch.allclose(ta[-1], t(2.0, 2.0), atol=1e-6)
    assert torch.allclose(tb[0], ta[-1])
    assert torch.allclose(tb[-1], t(8.0, 10.0), atol=1e-6)
    assert toy.loss(tb[-1], A).item() == pytest.approx(404 / 6, rel=1e-6)
    joint = toy.gradient_descent([0.0, 0.0], [A, B], lr=0.1, steps=300)[-1]
    assert torch.allclose(joint, t(5.0, 6.0), atol=1e-6)


def test_trajectory_matches_the_closed_form(ab):
    _, B = ab
    traj = toy.gradient_descent([2.0, 2.0], B, lr=0.3, steps=25)
    assert traj.shape == (26, 2)
    for s in (0, 1, 7, 25):
        assert torch.allclose(traj[s], toy.gd_closed_form([2.0, 2.0], B, 0.3, s), atol=1e-12)


def test_extra_gradient_is_added():
    A, B = toy.two_weight_tasks()
    F = toy.fisher(A)
    # B + full-Fisher penalty lam/2 (w-A)^T F (w-A): optimum (w_B + lam w_A) / (1 + lam) since F = H_B
    for lam in (0.0, 1.0, 3.0):
        eg = lambda w, lam=lam: toy.quadratic_penalty_grad(w, t(2.0, 2.0), F, lam)
        end = toy.gradient_descent([2.0, 2.0], B, lr=0.1, steps=2000, extra_grad=eg)[-1]
        assert torch.allclose(end, (t(8.0, 10.0) + lam * t(2.0, 2.0)) / (1 + lam), atol=1e-8)
    # a diagonal precision is a vector
    g = toy.quadratic_penalty_grad(t(3.0, 5.0), t(2.0, 2.0), t(2.0, 0.5), 2.0)
    assert torch.allclose(g, t(4.0, 3.0))


def test_four_weight_joint_solution_exists_yet_sequential_training_forgets():
    A, B = toy.four_weight_tasks()
    both = toy.joint_optimum([A, B])
    assert torch.allclose(both, t(2.0, 2.0, 6.0, 8.0), atol=1e-10)
    assert toy.loss(both, A).item() < 1e-20 and toy.loss(both, B).item() < 1e-20
    ta, tb = toy.sequential(torch.zeros(4), [A, B], lr=0.1, steps=3000)
    assert torch.allclose(ta[-1], t(2.0, 2.0, 0.0, 0.0), atol=1e-8)  # A only reaches w1, w2
    # B's gradient X_B^T r touches w1, w2 as much as w3, w4: the (6, 8) B still needs is split evenly
    assert torch.allclose(tb[-1], t(5.0, 6.0, 3.0, 4.0), atol=1e-8)
    assert torch.allclose(toy.gd_limit(ta[-1], B), tb[-1], atol=1e-8)
    # A now sees effective weights (5, 6): its loss equals the 2-weight toy's at (5, 6)
    assert toy.loss(tb[-1], A).item() == pytest.approx(101 / 6, rel=1e-8)


def test_distributed_representation_from_zero():
    _, B = toy.four_weight_tasks()
    end = toy.gradient_descent(torch.zeros(4), B, lr=0.1, steps=3000)[-1]
    assert torch.allclose(end, t(4.0, 5.0, 4.0, 5.0), atol=1e-8)  # not the sparse (8,10,0,0) or (0,0,8,10)
    assert torch.allclose(toy.min_norm_solution(B), t(4.0, 5.0, 4.0, 5.0))
    for sparse in (t(8.0, 10.0, 0.0, 0.0), t(0.0, 0.0, 8.0, 10.0)):
        assert toy.loss(sparse, B).item() < 1e-20 and sparse.norm() > end.norm()


def test_loss_grid_is_vectorised_and_oriented(ab):
    A, _ = ab
    w1, w2 = torch.linspace(-1, 11, 7), torch.linspace(0, 12, 5)
    G = toy.loss_grid(A, w1, w2)
    assert G.shape == (5, 7)
    assert G[3, 2].item() == pytest.approx(toy.loss(t(w1[2].item(), w2[3].item()), A).item())


def test_bad_input_raises_clear_errors(ab):
    A, B = ab
    with pytest.raises(ValueError, match="must end in dimension 2"):
        toy.loss(torch.zeros(3), A)
    with pytest.raises(ValueError, match="lr must be > 0"):
        toy.gradient_descent([0.0, 0.0], A, lr=-1.0, steps=3)
    with pytest.raises(ValueError, match="steps"):
        toy.gradient_descent([0.0, 0.0], A, lr=0.1, steps=-1)
    with pytest.raises(ValueError, match="inputs must be a matrix"):
        toy.make_task([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="lambda must be non-negative"):
        toy.quadratic_penalty_grad(torch.zeros(2), torch.zeros(2), torch.ones(2), -1.0)
    with pytest.raises(ValueError, match="two-weight"):
        toy.loss_grid(toy.four_weight_tasks()[0], torch.zeros(2), torch.zeros(2))
    with pytest.raises(ValueError, match="finite"):
        toy.make_task([float("nan"), 1.0])
