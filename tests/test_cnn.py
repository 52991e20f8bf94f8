"""The convolutional model through the ContinualModel contract: shapes, the importance estimators against
loops over samples (the per-sample engine takes its torch.func route: a convolution is not an nn.Linear),
and zero-strength strategies equal to Naive bit for bit.  CPU, float64 for the comparisons with loops.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import clutils
from clutils.models import check_model
from clutils.selfless import neuron_importance


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(n_heads: int = 1, dtype=torch.float64) -> clutils.CNN:
    torch.manual_seed(0)
    return clutils.CNN((1, 8, 8), (3, 4), 5, 4, n_heads=n_heads).to(dtype)


def images(n: int = 13, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 64, generator=g, dtype=dtype), torch.randint(0, 3, (n,), generator=g)


def loop_sums(model, x, fn):
    """sum_n fn(model, x_n) -> dict of per-parameter gradients, one sample at a time."""
    names, params = zip(*model.named_parameters())
    out = {n: torch.zeros_like(p) for n, p in zip(names, params)}
    for n in range(len(x)):
        for k, g in fn(x[n:n + 1], n, params):
            for name, gi in zip(names, g):
                out[name] += k * gi
    return out


def close(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-10, atol=1e-14, msg=k)


def test_contract_shapes_and_flat_or_image_inputs():
    m = tiny(n_heads=2)
    check_model(m)
    x, _ = images(6)
    logits, hs = m(x, 1, return_hidden=True)
    assert logits.shape == (6, 4) and m.in_features == 64
    assert [tuple(h.shape) for h in hs] == [(6, 3, 4, 4), (6, 4, 2, 2), (6, 5)]
    torch.testing.assert_close(m(x.reshape(6, 1, 8, 8), 1), logits, rtol=0, atol=0)
    heads = torch.tensor([0, 1, 1, 0, 1, 0])
    per = m(x, heads)
    torch.testing.assert_close(per[heads == 1], logits[heads == 1], rtol=0, atol=0)
    assert set(map(id, m.shared_parameters())) | set(map(id, m.head_parameters(0))) | \
        set(map(id, m.head_parameters(1))) == set(map(id, m.parameters()))


@pytest.mark.parametrize("kwargs,match", [(dict(input_shape=(64,)), "channels, height, width"),
                                          (dict(channels=(4, 4, 4, 4)), "pools shrink"),
                                          (dict(kernel_size=4), "odd"), (dict(channels=()), "non-empty")])
def test_bad_shapes_are_refused(kwargs, match):
    args = {**dict(input_shape=(1, 8, 8), channels=(3, 4), hidden=5, out_features=4), **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        clutils.CNN(**args)


@pytest.mark.parametrize("kind", ["true", "sampled", "empirical"])
def test_fisher_on_a_cnn_equals_the_loop_over_samples(kind):
    m = tiny()
    x, y = images()
    n_active = 3
    gen = torch.Generator().manual_seed(5)
    u = torch.rand(len(x), generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def per_sample(xn, n, params):
        logp = torch.log_softmax(m(xn, 0)[0, :n_active], 0)
        if kind == "true":
            return [(logp[c].exp().detach(), [g ** 2 for g in torch.autograd.grad(logp[c], params, retain_graph=True)])
                    for c in range(n_active)]
        lab = y[n] if kind == "empirical" else torch.searchsorted(logp.exp().detach().cumsum(0), u[n]).clamp(max=2)
        return [(1.0, [g ** 2 for g in torch.autograd.grad(logp[lab], params)])]

    want = {k: v / len(x) for k, v in loop_sums(m, x, per_sample).items()}
    got = clutils.fisher_diagonal(m, x, y, kind=kind, n_active=n_active, chunk_size=5, generator=gen)
    close(got, want)
    with pytest.raises(ValueError, match="method='linear' needs a model made of nn.Linear"):
        clutils.fisher_diagonal(m, x, y, kind=kind, n_active=n_active, method="linear")


def test_batched_fisher_of_batch_one_is_the_empirical_one_on_a_cnn():
    m = tiny()
    x, y = images()
    close(clutils.fisher_diagonal(m, x, y, kind="batched", batch_size=1, n_active=3),
          clutils.fisher_diagonal(m, x, y, kind="empirical", n_active=3))


def test_mas_on_a_cnn_equals_the_loop_over_samples():
    m = tiny()
    x, _ = images()

    def per_sample(xn, n, params):
        return [(1.0, [g.abs() for g in torch.autograd.grad(m(xn, 0)[0].square().sum(), params)])]

    want = {k: v / len(x) for k, v in loop_sums(m, x, per_sample).items()}
    close(clutils.mas_importance(m, x, chunk_size=4), want)


def test_neuron_importance_on_a_cnn_equals_the_loop_over_samples():
    m = tiny()
    x, _ = images()
    want = None
    for n in range(len(x)):
        logits, hs = m(x[n:n + 1], 0, return_hidden=True)
        gs = torch.autograd.grad(logits.square().sum(), hs)
        gs = [g.abs().flatten() for g in gs]
        want = gs if want is None else [w + g for w, g in zip(want, gs)]
    got = neuron_importance(m, x, chunk_size=4)
    assert [g.shape for g in got] == [(48,), (16,), (5,)]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b / len(x), rtol=1e-10, atol=1e-14)


def test_ssl_on_the_fully_connected_layer_of_a_cnn_penalises_that_layer_alone():
    m = tiny()
    x, _ = images()
    ssl = clutils.SSL("slni", 0.5, layers=[2])
    ssl.before_task(m, None, 0)
    _, hs = m(x, 0, return_hidden=True)
    torch.testing.assert_close(ssl.penalty(m, 0, hs), 0.5 * clutils.slni(hs[2]), rtol=1e-12, atol=0)


def train(strategy, scenario="class", epochs=2):
    stream = clutils.make_stream("split", "digits", scenario=scenario)
    clutils.seed_everything(0)
    model = clutils.CNN((1, 8, 8), (4, 8), 16, stream.n_outputs, stream.n_heads)
    cfg = clutils.TrainConfig(epochs=epochs, batch_size=32, lr=0.01, optimizer="adam")
    r = clutils.train_stream(model, stream, strategy, cfg,
                             device="cpu", progress=False)
    return model, r


@pytest.fixture(scope="module")
def naive_cnn():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train(clutils.Naive())
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("make", [lambda: clutils.EWC(0.0), lambda: clutils.EWC(0.0, fisher="empirical"),
                                  lambda: clutils.MAS(0.0), lambda: clutils.SI(0.0), lambda: clutils.L2(0.0),
                                  lambda: clutils.Replay(0)],
                         ids=["ewc", "ewc-empirical", "mas", "si", "l2", "replay"])
def test_zero_strength_strategies_equal_naive_bit_for_bit_on_a_cnn(naive_cnn, make):
    m_naive, r_naive = naive_cnn
    m, r = train(make())
    assert r.acc == r_naive.acc
    for (k, a), (_, b) in zip(m_naive.state_dict().items(), m.state_dict().items()):
        assert torch.equal(a, b), k


def test_every_strategy_trains_a_cnn_and_learns_the_first_task():
    for strategy in (clutils.EWC(10.0), clutils.MAS(1.0), clutils.SI(1.0), clutils.SSL("slnid", 1e-4, layers=[2]),
                     clutils.Compose(clutils.Replay(100), clutils.EWC(10.0))):
        _, r = train(strategy, scenario="task", epochs=3)
        assert r.acc[0][0] > 0.9, (strategy.name, r.acc[0])
