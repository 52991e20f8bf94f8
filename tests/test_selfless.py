"""Selfless Sequential Learning regularisers against hand computations, and the SSL strategy."""
import math

import numpy as np
import pytest
import torch

from clutils import MLP, Compose, TrainConfig, make_stream, seed_everything, train_stream
from clutils.selfless import (SSL, active_neurons, coactivation, decov, gaussian_neighbourhood,
                                importance_discount, l1_rep, mean_activation, sni, slni)

# M = 2 samples, N = 3 neurons.  H^T H = [[1, 2, 1], [2, 5, 5], [1, 5, 10]]
H = torch.tensor([[1.0, 2.0, 1.0],
                  [0.0, 1.0, 3.0]], dtype=torch.float64)


def test_sni_by_hand():
    # off-diagonal of H^T H: 2 * (2 + 1 + 5) = 16, divided by M = 2 -> 8
    # (per sample: (sum h)^2 - sum h^2 = 16 - 6 = 10 and 16 - 10 = 6, mean 8)
    assert sni(H).item() == pytest.approx(8.0)
    per_sample = (H.sum(1) ** 2 - (H ** 2).sum(1)).mean()
    assert sni(H).item() == pytest.approx(per_sample.item())


def test_slni_by_hand():
    # sigma = 1: neighbours at distance 1 weigh e^{-1/2}, at distance 2 e^{-2}
    # pairs (0,1): 2, (1,2): 5 at distance 1; (0,2): 1 at distance 2; both orders, / M = 2
    expected = 7 * math.exp(-0.5) + 1 * math.exp(-2.0)
    assert slni(H, sigma=1.0).item() == pytest.approx(expected)
    # default sigma = N/6 = 0.5: e^{-2} and e^{-8}
    assert slni(H).item() == pytest.approx(7 * math.exp(-2.0) + math.exp(-8.0))


def test_sni_is_the_infinite_sigma_limit_of_slni():
    torch.manual_seed(0)
    h = torch.relu(torch.randn(50, 40, dtype=torch.float64))
    assert slni(h, sigma=1e6).item() == pytest.approx(sni(h).item(), rel=1e-9)
    assert slni(h, sigma=math.inf).item() == pytest.approx(sni(h).item(), rel=1e-12)
    # and a finite sigma discounts distant pairs: strictly smaller for positive activations
    assert slni(h, sigma=40 / 6).item() < sni(h).item()


def test_importance_discount_sum_and_max_by_hand():
    alpha = torch.tensor([0.0, math.log(2), math.log(3)], dtype=torch.float64)
    # d = e^{-alpha} = [1, 1/2, 1/3]; "sum": D_ij = d_i d_j; "max": min(d_i, d_j)
    D_sum = importance_discount(alpha, "sum")
    D_max = importance_discount(alpha, "max")
    assert D_sum[0, 1].item() == pytest.approx(1 / 2) and D_sum[1, 2].item() == pytest.approx(1 / 6)
    assert D_max[0, 1].item() == pytest.approx(1 / 2) and D_max[1, 2].item() == pytest.approx(1 / 3)
    # SNID: pairs (0,1): 2 * 1/2, (0,2): 1 * 1/3, (1,2): 5 * 1/6 -> 1 + 1/3 + 5/6; "max": 5 * 1/3
    assert sni(H, alpha).item() == pytest.approx(13 / 6)
    assert sni(H, alpha, discount="max").item() == pytest.approx(1 + 1 / 3 + 5 / 3)
    # SLNID = SLNI weights times the same discount
    expected = (2 * 0.5 * math.exp(-0.5) + 5 / 6 * math.exp(-0.5) + 1 / 3 * math.exp(-2.0))
    assert slni(H, sigma=1.0, alpha=alpha).item() == pytest.approx(expected)


def test_discount_multiplies_each_pair_exactly():
    torch.manual_seed(1)
    h = torch.relu(torch.randn(30, 8, dtype=torch.float64))
    alpha = torch.rand(8, dtype=torch.float64) * 3
    # put the discount on one pair only: the regulariser changes by exactly that pair's term
    for i, j in [(0, 1), (2, 7)]:
        pair = 2 * (h[:, i] * h[:, j]).mean()
        a = torch.zeros(8, dtype=torch.float64)
        a[i], a[j] = alpha[i], alpha[j]
        others = torch.ones(8, dtype=bool)
        others[[i, j]] = False
        hi = h.clone()
        hi[:, others] = 0  # only neurons i and j fire
        assert sni(hi, a).item() == pytest.approx(math.exp(-(alpha[i] + alpha[j]).item()) * pair.item())
        assert sni(hi, a, "max").item() == pytest.approx(math.exp(-max(alpha[i], alpha[j]).item()) * pair.item())
    # zero importance leaves SNI / SLNI unchanged, bit for bit
    z = torch.zeros(8, dtype=torch.float64)
    assert torch.equal(sni(h, z), sni(h)) and torch.equal(slni(h, None, z), slni(h))


def test_l1_rep_and_decov_by_hand():
    assert l1_rep(H).item() == pytest.approx((1 + 2 + 1 + 0 + 1 + 3) / 2)
    # centred rows are +-[0.5, 0.5, -1], so C = r r^T; ||C||_F^2 = 2.25, ||diag C||^2 = 1.125
    assert decov(H).item() == pytest.approx(0.5 * (2.25 - 1.125))
    # DeCov is blind to a constant shift of a neuron, SNI is not
    shifted = H + torch.tensor([5.0, 0.0, 0.0], dtype=torch.float64)
    assert decov(shifted).item() == pytest.approx(decov(H).item())
    assert sni(shifted).item() > sni(H).item()


def test_gaussian_neighbourhood_is_cached_with_zero_diagonal():
    w = gaussian_neighbourhood(16, 2.0)
    assert w is gaussian_neighbourhood(16, 2.0, "cpu", torch.float32)
    assert torch.all(torch.diagonal(w) == 0)
    assert w[3, 5].item() == pytest.approx(math.exp(-4 / 8))
    assert torch.equal(w, w.t())
    assert gaussian_neighbourhood(12) is gaussian_neighbourhood(12, 2.0)  # sigma defaults to N/6


def test_regularisers_match_a_per_sample_loop_and_their_gradient():
    torch.manual_seed(2)
    h = torch.relu(torch.randn(7, 6, dtype=torch.float64)).requires_grad_()
    alpha = torch.rand(6, dtype=torch.float64)
    W = gaussian_neighbourhood(6, 1.5, "cpu", torch.float64) * torch.exp(-(alpha[:, None] + alpha[None, :]))
    loop = sum(h[m] @ W @ h[m] for m in range(7)) / 7
    r = slni(h, 1.5, alpha)
    assert r.item() == pytest.approx(loop.item())
    (g,) = torch.autograd.grad(r, h)
    assert torch.allclose(g, 2 * h.detach() @ W / 7)
    assert torch.autograd.gradcheck(lambda x: coactivation(x, W), (h,))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="2-D"):
        sni(torch.ones(3))
    with pytest.raises(ValueError, match="one importance per neuron"):
        sni(torch.ones(4, 3), alpha=torch.zeros(4))
    with pytest.raises(ValueError, match=">= 0"):
        sni(torch.ones(4, 3), alpha=torch.tensor([0.0, -1.0, 0.0]))
    with pytest.raises(ValueError, match="discount"):
        sni(torch.ones(4, 3), alpha=torch.zeros(3), discount="min")
    with pytest.raises(ValueError, match="sigma"):
        slni(torch.ones(4, 3), sigma=0.0)
    with pytest.raises(ValueError, match="unknown SSL method"):
        SSL("slnd")
    with pytest.raises(ValueError, match="lambda_SSL"):
        SSL("slnid", -1e-3)
    with pytest.raises(ValueError, match="discount"):
        SSL("snid", 1e-3, discount="mean")
    with pytest.raises(ValueError, match="do not exist"):
        SSL("sni", 1.0, layers=[2]).penalty(None, 0, [torch.ones(2, 3), torch.ones(2, 3)])


def test_ssl_penalty_sums_layers_times_lambda():
    torch.manual_seed(3)
    hs = [torch.relu(torch.randn(10, 12)), torch.relu(torch.randn(10, 6))]
    assert SSL("slni", 0.5).penalty(None, 0, hs).item() == pytest.approx(0.5 * (slni(hs[0]) + slni(hs[1])).item())
    assert SSL("sni", 2.0, layers=[1]).penalty(None, 0, hs).item() == pytest.approx(2.0 * sni(hs[1]).item())
    assert SSL("decov", 1.0).penalty(None, 0, hs).item() == pytest.approx((decov(hs[0]) + decov(hs[1])).item())
    assert SSL("l1", 1.0).penalty(None, 0, hs).item() == pytest.approx((l1_rep(hs[0]) + l1_rep(hs[1])).item())
    assert SSL("none", 1.0).penalty(None, 0, hs) is None
    # before any importance is known, SLNID is SLNI
    assert torch.equal(SSL("slnid", 0.5).penalty(None, 0, hs), SSL("slni", 0.5).penalty(None, 0, hs))


def test_mean_activation_and_active_neurons():
    m = MLP(2, [3], 2)
    with torch.no_grad():
        m.layers[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        m.layers[0].bias.zero_()
    x = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    (a,) = mean_activation(m, x)
    assert torch.allclose(a, torch.tensor([2.0, 1.0, 0.0]))
    assert active_neurons(a, 0.5).tolist() == [True, True, False]
    assert active_neurons(a, 0.6).tolist() == [True, False, False]


def test_neuron_importance_of_linear_then_relu_by_hand():
    # h = relu(x) (W1 = I, b1 = 0), F = W2 h with W2 = [[1, 2], [0, -1]]: dF^2/dh = 2 W2^T F
    from clutils import neuron_importance

    m = MLP(2, [2], 2)
    with torch.no_grad():
        m.layers[0].weight.copy_(torch.eye(2))
        m.layers[0].bias.zero_()
        m.heads[0].weight.copy_(torch.tensor([[1.0, 2.0], [0.0, -1.0]]))
        m.heads[0].bias.zero_()
    x = torch.tensor([[1.0, 1.0], [2.0, -1.0]])
    # x1: h = [1, 1], F = [3, -1], 2 W2^T F = [6, 14];  x2: h = [2, 0], F = [2, 0], 2 W2^T F = [4, 8]
    (alpha,) = neuron_importance(m, x)
    assert torch.allclose(alpha, torch.tensor([5.0, 11.0]))
    # only the first output in play: F = [3] and [2] -> 2 F W2[0] = [6, 12] and [4, 8]
    (alpha1,) = neuron_importance(m, x, n_active=1)
    assert torch.allclose(alpha1, torch.tensor([5.0, 10.0]))


def _digits_stream():
    return make_stream("permuted", "digits", n_tasks=3, seed=0, first_unpermuted=True)


def test_ssl_importance_accumulates_over_tasks():
    from clutils import neuron_importance

    stream = _digits_stream()
    seed_everything(0)
    model = MLP(64, [16, 16], 10)
    ssl = SSL("slnid", 1e-3)
    # zero epochs: the model never changes, so the accumulated alpha is a plain sum over tasks
    train_stream(model, stream, ssl, TrainConfig(epochs=0), device="cpu", progress=False)
    expected = [sum(a) for a in zip(*(neuron_importance(model, t.x_train) for t in stream))]
    for got, want in zip(ssl.alpha.values(), expected):
        assert torch.allclose(got, want)
    # the layer weights now carry the discount exp(-(a_i + a_j))
    h = torch.relu(torch.randn(5, 16))
    assert ssl.penalty(model, 1, [h, h]).item() == pytest.approx(
        1e-3 * (slni(h, alpha=ssl.alpha["layer0"]) + slni(h, alpha=ssl.alpha["layer1"])).item(), rel=1e-5)
    restored = SSL("slnid", 1e-3)
    restored.load_state_dict(ssl.state_dict())
    assert torch.equal(restored.penalty(model, 1, [h, h]), ssl.penalty(model, 1, [h, h]))


def _run(strategy, seed=0):
    seed_everything(seed)
    model = MLP(64, [32, 32], 10)
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05, momentum=0.9, seed=seed)
    return train_stream(model, _digits_stream(), strategy, cfg, device="cpu", progress=False), model


def test_zero_lambda_reduces_to_the_plain_method_bit_for_bit():
    from clutils import MAS

    plain, m_plain = _run(MAS(0.5))
    with_zero, m_zero = _run(Compose(MAS(0.5), SSL("slnid", 0.0)))
    assert plain.acc == with_zero.acc  # exact equality of every entry of R
    for p, q in zip(m_plain.parameters(), m_zero.parameters()):
        assert torch.equal(p, q)
    # and a positive lambda does change the run, in the direction it should: fewer co-activations
    with_ssl, m_ssl = _run(Compose(MAS(0.5), SSL("slnid", 1e-2)))
    assert with_ssl.acc != plain.acc
    x = _digits_stream()[0].x_test
    assert sni(m_ssl.features(x)[0]).item() < sni(m_plain.features(x)[0]).item()


def test_large_importance_gives_zero_weights_not_subnormal_ones():
    # exp(-(a_i + a_j)) with a ~ 60 is ~1e-52: below float32's smallest normal number, so the weight
    # is stored as exactly 0 (a product with subnormal numbers is many times slower on CPUs)
    hs = [torch.relu(torch.randn(8, 16))]
    ssl = SSL("slnid", 1.0)
    ssl.load_state_dict({"alpha.layer0": torch.linspace(0, 120, 16)})
    w = ssl.pair_weights(0, hs[0])
    tiny = torch.finfo(torch.float32).tiny
    assert not bool(((w > 0) & (w < tiny)).any())
    assert w[0, 1].item() > 0 and w[14, 15].item() == 0.0


def test_the_pair_weights_are_built_once_per_layer_and_task_not_per_step(monkeypatch):
    import clutils as cl

    """exp(-(i-j)^2 / 2 sigma^2) times the importance discount is constant while a task trains: a
    3-task SLNID run over 2 hidden layers builds it 2 x 3 times, whatever the number of steps."""
    from clutils import selfless

    calls = []
    real = selfless._weights
    monkeypatch.setattr(selfless, "_weights", lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    stream = cl.disjoint(cl.load_dataset("digits"), [[0, 1, 2], [3, 4, 5], [6, 7, 8]], scenario="domain")
    model = cl.MLP(64, (12, 8), 3)
    res = cl.train_stream(model, stream, cl.SSL("slnid", 1e-3),
                          cl.TrainConfig(epochs=2, batch_size=16, lr=0.01), progress=False)
    steps = sum(2 * -(-t.n_train // 16) for t in stream)
    assert len(stream) == 3 and steps > 100 and res.R.shape == (3, 3)
    assert sorted(calls) == [8, 8, 8, 12, 12, 12]
