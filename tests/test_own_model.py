"""The "bring your own model" page: its worked example runs as written, and a model with BatchNorm and
Dropout gets its importance in eval mode, equal to a loop over samples, with its mode restored after."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import clutils as cl
from conftest import BOOK

PAGE = BOOK / "own_model.md"


@pytest.fixture(scope="module")
def page_namespace():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)
        assert len(blocks) == 1
        ns: dict = {}
        exec(compile(blocks[0], str(PAGE), "exec"), ns)
        return ns
    finally:
        torch.set_num_threads(threads)


def test_the_page_example_trains_the_wrapped_sequential(page_namespace):
    result, model = page_namespace["result"], page_namespace["model"]
    assert isinstance(model, cl.ContinualModel)
    assert len(result.acc) == 5 and result.summary()["acc"] > 0.9  # chance: 50 % on each two-class task


def test_the_wrapped_sequential_takes_the_linear_route_and_it_agrees_with_torch_func(page_namespace):
    model, stream = page_namespace["model"], page_namespace["stream"]
    x, y = stream[0].x_train[:40], stream[0].y_train[:40]
    lin = cl.fisher_diagonal(model, x, y, kind="true", method="linear")
    fun = cl.fisher_diagonal(model, x, y, kind="true", method="func")
    for k in lin:
        torch.testing.assert_close(lin[k], fun[k], rtol=1e-4, atol=1e-9)


class Normed(nn.Module):
    """An MLP with BatchNorm and Dropout, through the contract (one head)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Dropout(0.5))
        self.heads = nn.ModuleList([nn.Linear(5, 3)])
        self.in_features, self.out_features, self.n_heads = 6, 3, 1

    def features(self, x):
        return [self.body(x)]

    def head(self, h, task=0):
        return self.heads[0](h)

    def forward(self, x, task=0, return_hidden=False):
        hs = self.features(x)
        return (self.head(hs[-1]), hs) if return_hidden else self.head(hs[-1])

    def shared_parameters(self):
        return list(self.body.parameters())

    def head_parameters(self, task):
        return list(self.heads[0].parameters())


def test_batchnorm_and_dropout_importance_is_the_eval_mode_per_sample_average():
    torch.manual_seed(0)
    model = Normed().double()
    model.train()
    for _ in range(3):  # give BatchNorm running statistics other than (0, 1)
        model(torch.randn(16, 6, dtype=torch.float64) * 2 + 1)
    x = torch.randn(9, 6, dtype=torch.float64)
    got = cl.fisher_diagonal(model, x, kind="true")  # parameters outside nn.Linear: the torch.func route
    assert model.training  # its mode comes back
    model.eval()
    names, params = zip(*model.named_parameters())
    want = {n: torch.zeros_like(p) for n, p in zip(names, params)}
    for n in range(len(x)):  # eval mode: running statistics, no dropout, each sample on its own
        logp = torch.log_softmax(model(x[n:n + 1])[0], 0)
        for c in range(3):
            g = torch.autograd.grad(logp[c], params, retain_graph=True)
            for name, gi in zip(names, g):
                want[name] += logp[c].exp().detach() * gi ** 2 / len(x)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-14)


def test_batchnorm_running_statistics_drift_to_the_last_task():
    """What the page says: after a task, BatchNorm's running mean is that task's, not the earlier ones'.

    The linear layer before the BatchNorm is frozen, so its outputs on each task have a fixed mean; the running
    mean, an exponential average (momentum 0.1) over the batches, ends within a few hundredths of the
    last task's and far from the first's."""
    stream, model = _bn_model_on_digits()
    cfg = cl.TrainConfig(epochs=3, batch_size=32)
    with torch.no_grad():
        task_means = [model.body[0](stream[t].x_train).mean(0) for t in (0, 1)]
    gap = (task_means[0] - task_means[1]).abs().max()
    for t, rec in enumerate(cl.training.train_tasks(model, stream, cl.Naive(), cfg, progress=False)):
        rm = model.body[1].running_mean
        assert (rm - task_means[t]).abs().max() < 0.25 * gap, t
        if t == 1:
            assert (rm - task_means[0]).abs().max() > 0.75 * gap
            break


def _bn_model_on_digits():
    stream = cl.make_stream("split", "digits", scenario="domain")
    torch.manual_seed(0)
    model = Normed()
    model.body[0], model.in_features = nn.Linear(64, 5), 64
    model.heads[0], model.out_features = nn.Linear(5, 2), 2
    model.body[0].requires_grad_(False)
    return stream, model


def test_batchnorm_freeze_keeps_the_first_tasks_statistics_and_trains_the_scale():
    """The remedy: with batchnorm="freeze" the running mean and variance after tasks 2 and 3 are, bit for bit,
    those after task 1 (no batch counted), while BatchNorm's scale and shift still move; with "track" they
    follow task 2 (the drift test above)."""
    stream, model = _bn_model_on_digits()
    cfg = cl.TrainConfig(epochs=2, batch_size=32, batchnorm="freeze", eval_every_epoch=True)  # evaluations too
    bn = model.body[1]
    after = []
    for t, rec in enumerate(cl.training.train_tasks(model, stream, cl.Naive(), cfg, progress=False)):
        after.append((bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked),
                      bn.weight.detach().clone()))
        if t == 2:
            break
    n_batches = 2 * -(-stream[0].n_train // 32)
    assert after[0][2] == n_batches and after[1][2] == after[2][2] == n_batches
    for t in (1, 2):
        assert torch.equal(after[t][0], after[0][0]) and torch.equal(after[t][1], after[0][1])
        assert not torch.equal(after[t][3], after[t - 1][3])  # the affine weights trained on task t
    with torch.no_grad():
        task1_mean = model.body[0](stream[1].x_train).mean(0)
    assert (after[0][0] - task1_mean).abs().max() > 0.05  # frozen at task 0's, not task 1's
    assert cl.freeze_batchnorm(cl.MLP(4, (3,), 2)) == 0 and cl.freeze_batchnorm(model) == 1 and not bn.training


def test_batchnorm_setting_is_checked_and_fingerprinted():
    with pytest.raises(ValueError, match="batchnorm must be 'track'.*or 'freeze'"):
        cl.TrainConfig(batchnorm="frozen").validate(2)
    assert cl.TrainConfig().to_dict() == {} and cl.TrainConfig(batchnorm="freeze").to_dict() == {"batchnorm": "freeze"}
