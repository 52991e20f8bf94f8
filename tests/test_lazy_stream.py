"""Permuted streams hold the images once plus one permutation per task, and behave as one copy per task."""
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import clutils as cl
from clutils import streams as data


@pytest.fixture(scope="module")
def digits():
    return cl.load_dataset("digits")


def materialised(stream: cl.Stream) -> cl.Stream:
    """The same stream with one permuted copy of the images (and labels) per task: the old form."""
    tasks = [cl.Task(t.id, t.name, t.x_train.clone(), t.y_train.clone(), t.x_test.clone(), t.y_test.clone(), t.classes)
             for t in stream]
    return cl.Stream(stream.name, stream.scenario, tasks, stream.n_features, stream.n_outputs, stream.n_heads,
                     dict(stream.description))


@pytest.mark.parametrize("scenario", ["domain", "class", "task"])
def test_every_task_is_base_permuted(digits, scenario):
    s = cl.permuted(digits, n_tasks=4, seed=5, first_unpermuted=True, scenario=scenario)
    perms = data.permutations(4, 64, seed=5, first_unpermuted=True)
    assert torch.equal(perms[0], torch.arange(64))
    for t, (task, p) in enumerate(zip(s, perms)):
        off = 10 * t if scenario == "class" else 0
        assert torch.equal(task.x_train, digits.x_train[:, p])
        assert torch.equal(task.x_test, digits.x_test[:, p])
        assert torch.equal(task.y_train, digits.y_train + off)
        assert torch.equal(task.y_test, digits.y_test + off)
        assert task.n_train == 1348
    # reading another task and coming back gives the same values (the memo never serves a stale copy)
    assert torch.equal(s[1].x_test[:7], digits.x_test[:7, perms[1]])
    assert torch.equal(s[3].x_test[:7], digits.x_test[:7, perms[3]])


def test_memory_is_images_once_plus_one_permutation_per_task(digits):
    s = cl.permuted(digits, n_tasks=100)
    dataset_bytes = sum(x.untyped_storage().nbytes() for x in (digits.x_train, digits.y_train, digits.x_test, digits.y_test))
    # exactly: the dataset's own tensors (shared, not copied) + 100 permutations of 64 int64 indices
    assert s.storage_bytes() == dataset_bytes + 100 * 64 * 8
    _ = [t.x_test for t in s]  # reading tasks keeps at most one permuted copy per split
    assert s.storage_bytes() == dataset_bytes + 100 * 64 * 8
    moved = s.to("cpu")
    assert moved.storage_bytes() == s.storage_bytes()
    # a pickled stream (what an executor ships to a worker) carries the images once, too
    assert len(pickle.dumps(s)) < 1.5 * dataset_bytes + 100 * 64 * 8 + 100_000


@pytest.mark.skipif(not (Path(os.environ.get("CLUTILS_DATA", "/nonexistent")) / "MNIST" / "raw").exists(),
                    reason="real MNIST not available (set CLUTILS_DATA to a folder with MNIST/raw)")
def test_hundred_task_permuted_mnist_adds_under_100_mb():
    ds = cl.load_dataset("mnist")
    base = sum(x.untyped_storage().nbytes() for x in (ds.x_train, ds.y_train, ds.x_test, ds.y_test))
    s = cl.permuted(ds, n_tasks=100)
    assert s.storage_bytes() - base == 100 * 784 * 8  # 0.6 MB; one copy per task would add 21 GB


def test_training_matches_materialised_stream_bit_for_bit(digits):
    lazy = cl.permuted(digits, n_tasks=3, seed=2, scenario="class")
    cfg = cl.TrainConfig(epochs=1, batch_size=32, lr=0.05, seed=1, eval_batch_size=100)  # several eval batches
    runs = []
    for s in (lazy, materialised(lazy)):
        cl.seed_everything(0)
        model = cl.MLP(64, (32,), s.n_outputs)
        runs.append(cl.train_stream(model, s, cfg=cfg, device="cpu", progress=False))
    np.testing.assert_array_equal(runs[0].R, runs[1].R)
    assert runs[0].R[0, 0] > 0.5  # the first task was learned: the matrices compared are not trivial


def test_test_set_read_in_inference_mode_can_still_be_used_with_autograd(digits):
    s = cl.permuted(digits, n_tasks=2)
    with torch.inference_mode():
        s[1].x_test.sum()
    w = torch.ones(64, requires_grad=True)
    (s[1].x_test @ w).sum().backward()  # would fail if the memo kept an inference tensor
    assert torch.allclose(w.grad, s[1].x_test.sum(0))


@pytest.mark.parametrize("n_tasks", [10 ** 6, data.MAX_PERMUTED_TASKS + 1])
def test_absurd_task_count_is_refused_before_loading_or_allocating(n_tasks, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("data was loaded before n_tasks was checked")

    monkeypatch.setattr(data, "load_dataset", no_load)
    with pytest.raises(ValueError, match=rf"n_tasks={n_tasks} is more than .* at most {data.MAX_PERMUTED_TASKS} tasks"):
        cl.make_stream("permuted", "digits", n_tasks=n_tasks)
    with pytest.raises(ValueError, match="at most"):
        data.permutations(n_tasks, 784)


def test_permutation_bytes_and_types_are_checked(digits):
    wide = cl.Dataset("wide", torch.zeros(2, 200_000), torch.zeros(2, dtype=torch.long), torch.zeros(1, 200_000),
                      torch.zeros(1, dtype=torch.long), (400, 500))
    with pytest.raises(ValueError, match=r"1000 permutations of 200000 pixels would take 1\.5 GiB.*at most 671"):
        cl.permuted(wide, n_tasks=1000)
    with pytest.raises(TypeError, match="n_tasks.*must be an integer"):
        cl.permuted(digits, n_tasks=2.5)
    with pytest.raises(ValueError, match="at least one task"):
        cl.make_stream("permuted", "digits", n_tasks=0)


def test_evaluation_permutes_each_test_set_once_within_the_memo_budget(monkeypatch):
    """Evaluating every task after each task reads each permuted test set T times: it is built once (the
    same values as a fresh permutation), and the kept copies never exceed the stream's budget."""
    import clutils as cl

    digits = cl.load_dataset("digits")
    stream = cl.make_stream("permuted", digits, n_tasks=4, seed=2)
    calls = []
    real = torch.index_select
    monkeypatch.setattr(torch, "index_select", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = cl.MLP(64, (16,), 10)
    first = cl.evaluate(model, stream, 3)
    n = len(calls)
    assert cl.evaluate(model, stream, 3) == first and len(calls) == n  # the second pass permutes nothing
    for t in stream:
        assert torch.equal(t.x_test, digits.x_test[:, t.perm])
    one = stream[0].x_test.numel() * 4
    memo = stream[0]._memo
    memo.budget, memo.slots, memo.scratch = 2 * one, {}, {}
    cl.evaluate(model, stream, 3)
    kept = [k for k in memo.slots if k[0] == "test"]
    # first come, first kept: tasks 0 and 1 (evicting the oldest would make every later pass miss)
    assert kept == [("test", id(stream[0].perm)), ("test", id(stream[1].perm))] and memo.used() == 2 * one
    n = len(calls)
    assert cl.evaluate(model, stream, 3) == first
    assert len(calls) == n + 2  # only the two sets beyond the budget are permuted again
    for t in stream:
        assert torch.equal(t.x_test, digits.x_test[:, t.perm])


def _count_writes(monkeypatch) -> dict:
    """Count torch.index_select calls that allocate and those that write into reused memory (out=)."""
    counts = {"fresh": 0, "reused": 0}
    real = torch.index_select

    def counted(*a, **k):
        counts["reused" if "out" in k else "fresh"] += 1
        return real(*a, **k)

    monkeypatch.setattr(torch, "index_select", counted)
    return counts


def test_a_long_stream_evaluates_in_bounded_memory_through_one_reused_buffer(monkeypatch):
    """Beyond the budget, each evaluation set is permuted into one reused buffer: memory stays flat in the
    number of tasks, and every accuracy equals the one on a materialised copy."""
    digits = cl.load_dataset("digits")
    stream = cl.make_stream("permuted", digits, n_tasks=40, seed=3)
    memo = stream[0]._memo
    one = stream[0]._x["test"].numel() * 4
    memo.budget = 3 * one
    torch.manual_seed(0)
    model = cl.MLP(64, (16,), 10)
    counts = _count_writes(monkeypatch)
    lazy = cl.evaluate(model, stream, 39)
    assert memo.used() == 3 * one and len(memo.slots) == 3 and set(memo.scratch) == {"test"}
    assert counts == {"fresh": 4, "reused": 36}  # 3 kept + the first beyond the budget; then one buffer
    buffer = memo.scratch["test"][2].data_ptr()
    cl.evaluate(model, stream, 39)
    assert counts == {"fresh": 4, "reused": 36 + 37} and memo.scratch["test"][2].data_ptr() == buffer
    assert memo.used() == 3 * one  # no new memory
    assert cl.evaluate(model, materialised(stream), 39) == lazy


def test_the_training_slot_reuses_its_memory_only_when_nothing_else_holds_it(digits, monkeypatch):
    """Reading the next task's training set writes into the previous one's memory (no page faults for a
    fresh copy per task), unless a name, a view or a NumPy array still holds it: then it stays intact."""
    stream = cl.make_stream("permuted", digits, n_tasks=5, seed=4)
    base = digits.x_train

    def right(t):
        return torch.equal(stream[t].x_train, base[:, stream[t].perm])

    counts = _count_writes(monkeypatch)
    stream[0].x_train
    assert counts == {"fresh": 1, "reused": 0}
    stream[1].x_train  # nothing held task 0's copy: its memory is reused
    assert counts == {"fresh": 1, "reused": 1}
    assert right(1)
    holders = {"name": lambda x: x, "view": lambda x: x[:10], "numpy": lambda x: x.numpy()}
    for kind, hold in holders.items():
        stream[3].x_train  # the slot now holds task 3 (nothing else does)
        keep = hold(stream[1].x_train)
        before = keep.copy() if kind == "numpy" else keep.clone()
        fresh = counts["fresh"]
        assert right(2)
        assert counts["fresh"] == fresh + 1, kind  # held: a fresh tensor, the held one left alone
        assert (np.array_equal(keep, before) if kind == "numpy" else torch.equal(keep, before)), kind
        del keep
