"""Datasets and task streams: the right classes, seeded permutations, clear errors."""
import os
import urllib.error
from pathlib import Path

import pytest
import torch

import clutils as cl
from clutils import datasets, streams



def test_digits_is_real_and_split(digits):
    assert digits.x_train.shape == (1348, 64) and digits.x_test.shape == (449, 64)
    assert digits.classes == list(range(10))
    assert 0.0 <= float(digits.x_train.min()) and float(digits.x_train.max()) <= 1.0
    assert digits.x_train.dtype == torch.float32 and digits.y_train.dtype == torch.int64


def test_permutations_are_seeded_permutations():
    p1 = streams.permutations(5, 784, seed=3)
    p2 = streams.permutations(5, 784, seed=3)
    p3 = streams.permutations(5, 784, seed=4)
    for a, b in zip(p1, p2):
        assert torch.equal(a, b)
        assert torch.equal(torch.sort(a).values, torch.arange(784))
    assert not torch.equal(p1[1], p3[1])
    assert len({tuple(p.tolist()) for p in p1}) == 5
    assert torch.equal(streams.permutations(3, 64, first_unpermuted=True)[0], torch.arange(64))


def test_permuted_stream_moves_pixels_and_keeps_labels(digits):
    s = cl.permuted(digits, n_tasks=3, seed=1)
    perm = streams.permutations(3, 64, seed=1)[2]
    assert torch.equal(s[2].x_train, digits.x_train[:, perm])
    assert torch.equal(s[2].y_test, digits.y_test)
    assert (s.n_heads, s.n_outputs, s.scenario) == (1, 10, "domain")
    c = cl.permuted(digits, n_tasks=3, scenario="class")
    assert c.n_outputs == 30 and int(c[2].y_train.min()) == 20
    t = cl.permuted(digits, n_tasks=3, scenario="task")
    assert t.n_heads == 3 and t.head_of(2) == 2


def test_split_stream_contains_exactly_its_classes(digits):
    s = cl.split(digits, 2, scenario="task")
    assert [t.classes for t in s] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    for t in s:
        assert set(t.y_train.tolist()) == {0, 1}  # renumbered inside each task
        n_expected = int(torch.isin(digits.y_train, torch.tensor(t.classes)).sum())
        assert t.n_train == n_expected
    assert s.n_heads == 5 and s.n_outputs == 2


def test_split_with_order(digits):
    s = cl.split(digits, 2, order=[1, 2, 3, 4, 5, 6, 7, 8, 9, 0])
    assert s[4].classes == (9, 0)
    # 9 -> 0, 0 -> 1 inside the last task
    y9 = digits.y_test[torch.isin(digits.y_test, torch.tensor([9, 0]))]
    assert torch.equal(s[4].y_test, (y9 == 0).long())


def test_disjoint_class_incremental_labels_and_active_outputs(digits):
    s = cl.disjoint(digits, [[0, 1, 2], [4, 5, 6], [7, 8, 9]])
    assert s.scenario == "class" and s.n_outputs == 9 and s.n_heads == 1
    assert set(s[1].y_train.tolist()) == {3, 4, 5}
    assert [s.active_outputs(t) for t in range(3)] == [3, 6, 9]
    # class 3 is in no task: the tasks hold exactly the images of the other nine classes, each once
    assert sum(len(t.y_train) for t in s) == int((digits.y_train != 3).sum())
    assert len(s[0].y_train) == int(torch.isin(digits.y_train, torch.tensor([0, 1, 2])).sum())
    d = cl.disjoint(digits, [[0, 1, 2], [4, 5, 6]], scenario="domain")
    assert d.n_outputs == 3 and d.active_outputs(0) == 3


@pytest.mark.parametrize("call, message", [
    (lambda ds: cl.split(ds, 3), "cannot split 10 classes"),
    (lambda ds: cl.disjoint(ds, [[0, 1], [1, 2]]), "more than one task"),
    (lambda ds: cl.disjoint(ds, [[0, 11]]), r"classes \[11\] do not exist"),
    (lambda ds: cl.disjoint(ds, []), "at least one task"),
    (lambda ds: cl.permuted(ds, n_tasks=0), "at least one task"),
    (lambda ds: cl.split(ds, 2, scenario="online"), "unknown scenario 'online'"),
])
def test_bad_streams_are_refused(digits, call, message):
    with pytest.raises(ValueError, match=message):
        call(digits)


def test_make_stream_checks_names_before_loading(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("data must not be loaded for a bad name")

    monkeypatch.setattr(streams, "load_dataset", boom)
    with pytest.raises(ValueError, match="unknown stream 'rotated'"):
        cl.make_stream("rotated", "mnist")
    with pytest.raises(ValueError, match="unknown scenario"):
        cl.make_stream("split", "mnist", scenario="tasks")
    with pytest.raises(ValueError, match="at least one task"):
        cl.make_stream("permuted", "mnist", n_tasks=0)
    with pytest.raises(ValueError, match="groups="):
        cl.make_stream("disjoint", "mnist")


def test_unknown_dataset():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*mnist, fashion_mnist, digits"):
        cl.load_dataset("cifar")


def test_data_root_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("CLUTILS_DATA", str(tmp_path / "env"))
    assert datasets.data_root() == tmp_path / "env"
    assert datasets.data_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("CLUTILS_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert datasets.data_root() == tmp_path / "cache" / "clutils"


def test_missing_mnist_offline_says_what_to_do(monkeypatch, tmp_path):
    import torchvision

    def offline(self):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    with pytest.raises(FileNotFoundError, match=r"(?s)mnist is not under .*CLUTILS_DATA.*'digits'"):
        cl.load_dataset("mnist", root=tmp_path)


@pytest.mark.skipif(not os.environ.get("CLUTILS_DATA") or not (Path(os.environ.get("CLUTILS_DATA", ".")) / "MNIST" / "raw").exists(),
                    reason="real MNIST not available (set CLUTILS_DATA to a folder with MNIST/raw)")
def test_real_mnist_from_data_root():
    ds = cl.load_dataset("mnist")
    assert ds.x_train.shape == (60000, 784) and ds.x_test.shape == (10000, 784)
    assert torch.bincount(ds.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert float(ds.x_train.max()) == 1.0 and float(ds.x_train.min()) == 0.0
