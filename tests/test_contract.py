"""The researcher's own model and data: a model or data set that breaks the contract is refused before
training, with what to do (issue 20's cases: each once failed late, inside torch, or silently)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import clutils as cl

CFG = cl.TrainConfig(epochs=1, batch_size=32)


def _ds(**kw):
    g = torch.Generator().manual_seed(0)
    base = dict(x_train=torch.rand(80, 16, generator=g), y_train=torch.arange(80) % 4,
                x_test=torch.rand(40, 16, generator=g), y_test=torch.arange(40) % 4)
    base.update(kw)
    return cl.Dataset("mine", image_shape=(4, 4), **base)


def test_nan_pixels_are_refused_where_the_data_set_is_built():
    x = torch.rand(80, 16)
    x[5, 3] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite pixels in 1 image.*nan_to_num"):
        _ds(x_train=x)


def test_raw_bytes_are_refused_with_the_scaling_to_apply():
    with pytest.raises(ValueError, match=r"0\.\.255 pixels.*x / 255"):
        _ds(x_train=torch.randint(0, 256, (80, 16)).float())
    _ds(x_train=(torch.rand(80, 16) - 0.13) / 0.3)  # standardised inputs (values above 1) are fine


def test_train_and_test_of_different_dtypes_are_refused():
    with pytest.raises(ValueError, match="x_train is torch.float32 but x_test torch.float64"):
        _ds(x_test=torch.rand(40, 16, dtype=torch.float64))


def test_labels_outside_0_to_c_minus_1_in_a_permuted_stream_are_refused():
    y = torch.where(torch.arange(80) % 2 == 0, 3, 7)
    yt = torch.where(torch.arange(40) % 2 == 0, 3, 7)
    ds = _ds(y_train=y, y_test=yt)
    with pytest.raises(ValueError, match=r"must be 0\.\.1.*classes \[3, 7\].*Relabel"):
        cl.make_stream("permuted", ds, n_tasks=2)
    assert len(cl.make_stream("split", ds, classes_per_task=2)) == 1  # a split stream renumbers them


class NoHidden(cl.MLP):
    def forward(self, x, task=0):  # no return_hidden
        return super().forward(x, task)


class TensorHidden(cl.MLP):
    def forward(self, x, task=0, return_hidden=False):
        logits, hs = super().forward(x, task, return_hidden=True)
        return (logits, hs[-1]) if return_hidden else logits


class NoneShared(cl.MLP):
    def shared_parameters(self):
        return None


class ShortHead(cl.MLP):
    def forward(self, x, task=0, return_hidden=False):
        logits, hs = super().forward(x, task, return_hidden=True)
        return (logits[:, :2], hs) if return_hidden else logits[:, :2]


@pytest.mark.parametrize("cls, exc, fragment", [
    (NoHidden, TypeError, "must accept (x, task, return_hidden"),
    (TensorHidden, TypeError, "second item is a list"),
    (NoneShared, TypeError, "shared_parameters() must return a list"),
    (ShortHead, ValueError, "the stream needs (2, 4)"),
])
def test_a_model_that_breaks_the_contract_fails_before_the_first_step(cls, exc, fragment):
    stream = cl.make_stream("permuted", _ds(), n_tasks=2)
    model = cls(16, (8,), 4)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(exc, match=__import__("re").escape(fragment)):
        cl.train_stream(model, stream, cl.Naive(), CFG, device="cpu", progress=False)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # nothing trained


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_a_model_of_another_dtype_is_refused_with_the_conversion(dtype):
    stream = cl.make_stream("permuted", _ds(), n_tasks=2)
    with pytest.raises(TypeError, match=rf"parameters are {dtype} but the stream's images torch.float32.*model.float"):
        cl.train_stream(cl.MLP(16, (8,), 4).to(dtype), stream, cl.Naive(), CFG, device="cpu", progress=False)


@pytest.mark.parametrize("cfg, cause", [
    (cl.TrainConfig(epochs=20, lr=0.5, weight_decay=1e4), "weight_decay=10000.0 with lr=0.5"),
])
def test_the_nan_guard_names_the_cause_it_can_see(cfg, cause):
    stream = cl.make_stream("permuted", _ds(), n_tasks=1)
    with pytest.raises(cl.NonFiniteLossError, match=__import__("re").escape(cause)):
        cl.train_stream(cl.MLP(16, (8,), 4), stream, cl.Naive(), cfg, device="cpu", progress=False)


def test_momentum_of_one_or_more_is_refused_before_training():
    with pytest.raises(ValueError, match="momentum must be below 1"):
        cl.TrainConfig(momentum=1.5).validate(1)


def test_non_finite_inputs_are_named_by_the_nan_guard():
    from clutils.training import _likely_cause

    assert "inputs hold NaN" in _likely_cause(cl.TrainConfig(), torch.tensor([[float("nan")]]))


class SmallCNN(nn.Module):
    """Two conv layers on 4x4 images (one with BatchNorm) and a linear head, through the model contract."""

    def __init__(self, out=4, n_heads=1):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 2, 3, padding=1)
        self.heads = nn.ModuleList(nn.Linear(32, out) for _ in range(n_heads))
        self.n_heads, self.in_features, self.out_features = n_heads, 16, out

    def features(self, x):
        h1 = torch.relu(self.bn(self.conv1(x.view(-1, 1, 4, 4))))
        h2 = torch.relu(self.conv2(h1))
        return [h1, h2]

    def head(self, h, task=0):
        return self.heads[task](h.flatten(1))

    def forward(self, x, task=0, return_hidden=False):
        hs = self.features(x)
        logits = self.head(hs[-1], task)
        return (logits, hs) if return_hidden else logits

    def shared_parameters(self):
        return [*self.conv1.parameters(), *self.bn.parameters(), *self.conv2.parameters()]

    def head_parameters(self, task):
        return list(self.heads[task].parameters())


@pytest.mark.parametrize("method", ["slnid", "snid", "l1"])
def test_ssl_trains_a_cnn_with_batchnorm_past_its_first_task(method):
    """Conv feature maps count as neurons flattened (channel x position): the neuron importance after task 1
    has the penalty's shape (it once had (C, H, W) and failed), and BatchNorm is probed in eval mode."""
    stream = cl.make_stream("permuted", _ds(), n_tasks=2)
    ssl = cl.SSL(method, 1e-3)
    torch.manual_seed(0)
    r = cl.train_stream(SmallCNN(), stream, ssl, CFG, device="cpu", progress=False)
    assert len(r.acc) == 2
    if ssl.uses_importance:
        assert [tuple(a.shape) for a in ssl.alpha.values()] == [(48,), (32,)]
