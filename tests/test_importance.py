"""Importance estimators against closed forms, hand computations and per-sample loops."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clutils import MLP
from clutils import fisher_diagonal, hebbian_importance, mas_importance, neuron_importance


@pytest.fixture(autouse=True)
def _float64():
    """Exact comparisons in float64; the default dtype is restored after each test."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _data(n=23, d=6, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, c, (n,), generator=g)


def _mlp(d=6, hidden=(5, 4), c=4, heads=1, seed=0):
    torch.manual_seed(seed)
    m = MLP(d, hidden, c, n_heads=heads)
    with torch.no_grad():  # non-zero biases so that bias terms are really tested
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m


def _loop(model, x, per_sample_grads_of, head=0):
    """Reference: average over samples of a function of per-sample autograd gradients (a Python loop)."""
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    ref = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for k in range(len(x)):
        for weight, scalar, fn in per_sample_grads_of(model(x[k:k + 1], head)[0], k):
            grads = torch.autograd.grad(scalar, params, allow_unused=True, retain_graph=True)
            for n, g in zip(names, grads):
                if g is not None:
                    ref[n] += weight * fn(g) / len(x)
    return ref


def _close(a, b, tol=1e-10):
    assert a.keys() == b.keys()
    for n in a:
        assert torch.allclose(a[n], b[n], atol=tol, rtol=0), (n, (a[n] - b[n]).abs().max())


# ----------------------------------------------------------------------------- Fisher
@pytest.mark.parametrize("method", ["linear", "func"])
@pytest.mark.parametrize("n_active", [None, 3])
def test_true_fisher_of_softmax_regression_has_closed_form(method, n_active):
    # d log p_k / d z_c = 1[k=c] - p_c  =>  sum_k p_k (1[k=c]-p_c)^2 = p_c (1-p_c):
    # F_W[c, j] = mean_n p_nc (1 - p_nc) x_nj^2,  F_b[c] = mean_n p_nc (1 - p_nc).
    x, _ = _data()
    m = _mlp(hidden=())
    z = m(x)[:, :n_active]
    p = torch.softmax(z, 1)
    v = (p * (1 - p)).detach()
    fw = v.T @ x.square() / len(x)
    fb = v.mean(0)
    fisher = fisher_diagonal(m, x, kind="true", n_active=n_active, chunk_size=7, method=method)
    k = z.shape[1]
    assert torch.allclose(fisher["heads.0.weight"][:k], fw, atol=1e-12)
    assert torch.allclose(fisher["heads.0.bias"][:k], fb, atol=1e-12)
    assert (fisher["heads.0.weight"][k:] == 0).all()  # inactive outputs carry no information


def test_empirical_fisher_equals_a_per_sample_loop():
    x, y = _data()
    y = y % 3
    m = _mlp(heads=2)

    def grads_of(logits, k):
        return [(1.0, torch.log_softmax(logits[:3], 0)[y[k]], torch.square)]

    ref = _loop(m, x, grads_of, head=1)
    fast = fisher_diagonal(m, x, y, kind="empirical", head=1, n_active=3, chunk_size=5)
    _close(fast, ref, 1e-12)
    assert all((fast[n] == 0).all() for n in fast if n.startswith("heads.0"))  # another task's head
    assert all(fast[n].abs().sum() > 0 for n in fast if not n.startswith("heads.0"))


def test_true_fisher_equals_a_per_sample_loop_over_classes():
    x, _ = _data(n=11)
    m = _mlp()

    def grads_of(logits, k):
        lp = torch.log_softmax(logits, 0)
        return [(lp[c].exp().item(), lp[c], torch.square) for c in range(len(lp))]

    _close(fisher_diagonal(m, x, kind="true", chunk_size=4), _loop(m, x, grads_of))


@pytest.mark.parametrize("kind", ["true", "empirical", "sampled"])
def test_torch_func_fallback_equals_the_fast_route(kind):
    x, y = _data()
    m = _mlp(heads=2)
    kw = dict(kind=kind, head=1, n_active=3, chunk_size=8)
    fast = fisher_diagonal(m, x, y % 3, method="linear", generator=torch.Generator().manual_seed(3), **kw)
    slow = fisher_diagonal(m, x, y % 3, method="func", generator=torch.Generator().manual_seed(3), **kw)
    _close(fast, slow)


def test_sampled_fisher_is_reproducible_and_unbiased_for_the_true_fisher():
    x, _ = _data(n=8)
    m = _mlp()
    one = fisher_diagonal(m, x, kind="sampled", generator=torch.Generator().manual_seed(5), chunk_size=3)
    again = fisher_diagonal(m, x, kind="sampled", generator=torch.Generator().manual_seed(5), chunk_size=8)
    other = fisher_diagonal(m, x, kind="sampled", generator=torch.Generator().manual_seed(6), chunk_size=3)
    for n in one:  # same seed: same labels, whatever the batch size
        assert torch.allclose(one[n], again[n], atol=1e-14, rtol=0)
    assert any(not torch.equal(one[n], other[n]) for n in one)
    g = torch.Generator().manual_seed(0)
    draws = 400
    mean = {n: torch.zeros_like(v) for n, v in one.items()}
    for _ in range(draws):
        for n, v in fisher_diagonal(m, x, kind="sampled", generator=g).items():
            mean[n] += v / draws
    true = fisher_diagonal(m, x, kind="true")
    num = sum((mean[n] - true[n]).abs().sum() for n in true)
    den = sum(true[n].abs().sum() for n in true)
    assert num / den < 0.05  # E over sampled labels = true Fisher (measured 0.012 with 400 draws; one draw: 0.31)
    num1 = sum((one[n] - true[n]).abs().sum() for n in true)
    assert num1 / den > 2 * num / den  # a single draw is much further away


def test_batched_fisher_is_the_squared_minibatch_gradient():
    # softmax regression: the mini-batch gradient of the mean loss is mean_n (p_n - e_yn) x_n^T (by hand)
    x, y = _data(n=10)
    m = _mlp(hidden=())
    p = torch.softmax(m(x), 1).detach()
    r = p - F.one_hot(y, 4)
    B = 4
    fw = torch.zeros(4, 6)
    fb = torch.zeros(4)
    for i in range(0, 10, B):  # batches of 4, 4, 2, weighted by their size
        gw = r[i:i + B].T @ x[i:i + B] / len(r[i:i + B])
        gb = r[i:i + B].mean(0)
        fw += len(r[i:i + B]) * gw.square() / 10
        fb += len(r[i:i + B]) * gb.square() / 10
    batched = fisher_diagonal(m, x, y, kind="batched", batch_size=B)
    assert torch.allclose(batched["heads.0.weight"], fw, atol=1e-12)
    assert torch.allclose(batched["heads.0.bias"], fb, atol=1e-12)
    # batch size 1 is the empirical Fisher; larger batches are biased away from it
    _close(fisher_diagonal(m, x, y, kind="batched", batch_size=1), fisher_diagonal(m, x, y, kind="empirical"))
    emp = fisher_diagonal(m, x, y, kind="empirical")
    assert not torch.allclose(batched["heads.0.weight"], emp["heads.0.weight"], atol=1e-3)


def test_batched_fisher_expectation_shows_its_bias():
    # Over random partitions into batches of B (without replacement), with s = empirical Fisher and
    # mu = mean per-sample gradient:  E[F_batched] = (s + (B-1) (N mu^2 - s) / (N-1)) / B  -- about s/B.
    x, y = _data(n=12)
    m = _mlp(hidden=())
    N, B, draws = 12, 4, 300
    s = fisher_diagonal(m, x, y, kind="empirical")["heads.0.weight"]
    p = torch.softmax(m(x), 1).detach()
    mu = (p - F.one_hot(y, 4)).T @ x / N
    want = (s + (B - 1) * (N * mu.square() - s) / (N - 1)) / B
    g = torch.Generator().manual_seed(0)
    mean = torch.zeros_like(s)
    for _ in range(draws):
        idx = torch.randperm(N, generator=g)
        mean += fisher_diagonal(m, x[idx], y[idx], kind="batched", batch_size=B)["heads.0.weight"] / draws
    assert (mean - want).abs().sum() / want.abs().sum() < 0.05  # measured 0.019 with 300 partitions
    assert want.sum() < 0.5 * s.sum()  # the bias is large: here E[F_batched] is 0.25 of the Fisher


# ----------------------------------------------------------------------------- MAS
class _Linear(nn.Module):
    """F(x) = W x, no bias, with the (x, task) call signature of the book's models."""

    def __init__(self, d, c):
        super().__init__()
        self.lin = nn.Linear(d, c, bias=False)

    def forward(self, x, task=0):
        return self.lin(x)


@pytest.mark.parametrize("method", ["linear", "func"])
def test_mas_of_a_linear_model_has_closed_form(method):
    x, _ = _data()
    torch.manual_seed(0)
    m = _Linear(6, 4)
    W = m.lin.weight.detach()
    z = x @ W.T
    expected = (2 * z[:, :, None] * x[:, None, :]).abs().mean(0)  # mean_k |2 (W x_k) x_k^T|
    omega = mas_importance(m, x, chunk_size=5, method=method)
    assert torch.allclose(omega["lin.weight"], expected, atol=1e-12)


def test_mas_per_sample_equals_a_per_sample_loop():
    x, _ = _data()
    m = _mlp(heads=2)

    def grads_of(logits, k):
        return [(1.0, logits[:3].square().sum(), torch.abs)]

    ref = _loop(m, x, grads_of, head=1)
    _close(mas_importance(m, x, head=1, n_active=3, chunk_size=6), ref)
    _close(mas_importance(m, x, head=1, n_active=3, chunk_size=6, method="func"), ref)


def test_mas_batch_variant_depends_on_the_batch_size():
    x, _ = _data(n=24)
    m = _mlp()
    per_sample = mas_importance(m, x)
    _close(mas_importance(m, x, kind="batch", batch_size=1), per_sample)
    previous = per_sample
    total = lambda om: sum(v.sum() for v in om.values())  # noqa: E731
    for B in (2, 4, 8, 24):  # nested partitions: |sum| over a union <= sum of |sums| (triangle inequality)
        omega = mas_importance(m, x, kind="batch", batch_size=B)
        for n in omega:
            assert (omega[n] <= previous[n] + 1e-12).all()
        assert total(omega) < total(previous) - 0.1  # strictly smaller (measured steps of 0.6 to 1.2)
        previous = omega
    assert total(previous) < 0.9 * total(per_sample)  # one batch of 24: 15% below the paper's value
    # the whole set in one batch, by hand for the linear head: |sum_k 2 F_k h_k^T| / N
    logits, hidden = m(x, return_hidden=True)
    full = (2 * logits.T @ hidden[-1]).abs() / len(x)
    assert torch.allclose(previous["heads.0.weight"], full.detach(), atol=1e-12)


def test_hebbian_importance_of_a_two_layer_net_by_hand():
    x, _ = _data()
    m = _mlp(hidden=(5,))
    W1, b1 = m.layers[0].weight.detach(), m.layers[0].bias.detach()
    W2, b2 = m.heads[0].weight.detach(), m.heads[0].bias.detach()
    h = torch.relu(x @ W1.T + b1)
    z = h @ W2.T + b2
    omega = hebbian_importance(m, x, chunk_size=7)
    assert torch.allclose(omega["layers.0.weight"], (h[:, :, None] * x[:, None, :]).abs().mean(0), atol=1e-12)
    assert torch.allclose(omega["layers.0.bias"], h.abs().mean(0), atol=1e-12)  # pre-synaptic "1"
    assert torch.allclose(omega["heads.0.weight"], (z[:, :, None] * h[:, None, :]).abs().mean(0), atol=1e-12)
    assert torch.allclose(omega["heads.0.bias"], z.abs().mean(0), atol=1e-12)
    part = hebbian_importance(m, x, n_active=2)
    assert torch.allclose(part["heads.0.weight"][:2], omega["heads.0.weight"][:2], atol=1e-12)
    assert (part["heads.0.weight"][2:] == 0).all()


# ----------------------------------------------------------------------------- neurons
def test_neuron_importance_by_hand():
    # F = W3 h2 + b3, h2 = relu(W2 h1 + b2):  dF^2/dh2 = 2 W3^T F;  dF^2/dh1 = W2^T (1[z2>0] * 2 W3^T F)
    x, _ = _data()
    m = _mlp(hidden=(5, 4), heads=2)
    W2, b2 = m.layers[1].weight.detach(), m.layers[1].bias.detach()
    W3 = m.heads[1].weight.detach()[:3]
    logits, (h1, h2) = m(x, 1, return_hidden=True)
    Fx = logits.detach()[:, :3]
    d2 = 2 * Fx @ W3
    d1 = (d2 * ((h1.detach() @ W2.T + b2) > 0)) @ W2
    alpha = neuron_importance(m, x, head=1, n_active=3, chunk_size=4)
    assert len(alpha) == 2
    assert torch.allclose(alpha[1], d2.abs().mean(0), atol=1e-12)
    assert torch.allclose(alpha[0], d1.abs().mean(0), atol=1e-12)


# ----------------------------------------------------------------------------- behaviour
class _Twice(nn.Module):
    """One nn.Linear applied twice: the per-sample outer-product route does not apply."""

    def __init__(self, d):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x, task=0):
        return self.lin(torch.tanh(self.lin(x)))


def test_a_layer_used_twice_takes_the_torch_func_route():
    x, y = _data()
    torch.manual_seed(0)
    m = _Twice(6)
    yy = y % 6

    def grads_of(logits, k):
        return [(1.0, torch.log_softmax(logits, 0)[yy[k]], torch.square)]

    _close(fisher_diagonal(m, x, yy, kind="empirical", chunk_size=5), _loop(m, x, grads_of))
    with pytest.raises(ValueError, match="method='linear' needs"):
        fisher_diagonal(m, x, yy, kind="empirical", method="linear")


class _WithDropout(nn.Module):
    def __init__(self, d, c):
        super().__init__()
        self.lin = nn.Linear(d, c)
        self.drop = nn.Dropout(0.5)

    def forward(self, x, task=0):
        return self.lin(self.drop(x))


def test_estimators_run_in_eval_mode_leave_no_grad_and_restore_the_mode():
    x, y = _data()
    torch.manual_seed(0)
    m = _WithDropout(6, 4)
    plain = _Linear(6, 4)
    plain.lin = m.lin  # the same layer without dropout
    m.train()
    for fn in (lambda mod: fisher_diagonal(mod, x, y, kind="empirical"),
               lambda mod: fisher_diagonal(mod, x, y, kind="batched", batch_size=5),
               lambda mod: mas_importance(mod, x),
               lambda mod: mas_importance(mod, x, kind="batch", batch_size=5)):
        got = fn(m)
        want = fn(plain)
        assert torch.allclose(got["lin.weight"], want["lin.weight"], atol=1e-12)  # dropout was off
        assert m.training
        assert all(p.grad is None for p in m.parameters())


def test_frozen_layers_still_get_their_importance():
    x, y = _data()
    m = _mlp()
    before = fisher_diagonal(m, x, y, kind="empirical")
    for p in m.shared_parameters():
        p.requires_grad_(False)
    _close(fisher_diagonal(m, x, y, kind="empirical"), before)
    alpha = neuron_importance(m, x)
    assert all(a.abs().sum() > 0 for a in alpha)


def test_bad_input_raises_clear_errors():
    x, y = _data()
    m = _mlp()
    with pytest.raises(ValueError, match="'true', 'sampled', 'empirical', 'batched'"):
        fisher_diagonal(m, x, y, kind="exact")
    with pytest.raises(ValueError, match="pass y"):
        fisher_diagonal(m, x, kind="empirical")
    with pytest.raises(ValueError, match="one label per sample"):
        fisher_diagonal(m, x, y[:-1], kind="empirical")
    with pytest.raises(ValueError, match="n_active"):
        mas_importance(m, x, n_active=5)
    with pytest.raises(ValueError, match="chunk_size"):
        neuron_importance(m, x, chunk_size=0)
    with pytest.raises(ValueError, match="'per_sample', 'batch'"):
        mas_importance(m, x, kind="hebbian")
    with pytest.raises(ValueError, match="at least one"):
        mas_importance(m, x[:0])
    with pytest.raises(ValueError, match="'auto', 'linear', 'func'"):
        mas_importance(m, x, method="vmap")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_estimators_on_cuda_match_cpu():
    x, y = _data()
    m = _mlp()
    cpu = fisher_diagonal(m, x, y, kind="true")
    gpu = fisher_diagonal(m.cuda(), x, y, kind="true")  # data moved to the model's device chunk by chunk
    assert all(v.device.type == "cuda" for v in gpu.values())
    _close({n: v.cpu() for n, v in gpu.items()}, cpu, 1e-9)
    assert [a.device.type for a in neuron_importance(m, x.cuda())] == ["cuda", "cuda"]
