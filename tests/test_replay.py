"""Replay: a class-balanced memory that never overflows, draws uniformly, resumes exactly and costs what it stores.

CPU, the offline ``digits`` split stream (5 tasks of two classes, about 270 training images each).
"""
from __future__ import annotations

import pytest
import torch

import clutils
from clutils.replay import balanced_quota
from clutils.runs import fingerprint, run_config
from clutils.streams import Stream, Task

CFG = dict(epochs=3, batch_size=32, lr=0.05)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # identical float reductions between the runs compared with ==
    yield
    torch.set_num_threads(threads)


def split(scenario: str) -> Stream:
    return clutils.make_stream("split", "digits", scenario=scenario)


def train(stream: Stream, strategy, seed: int = 0, epochs: int = CFG["epochs"], **kw):
    clutils.seed_everything(seed)
    model = clutils.MLP(stream.n_features, (32,), stream.n_outputs, stream.n_heads)
    cfg = clutils.TrainConfig(**{**CFG, "seed": seed, "epochs": epochs})
    r = clutils.train_stream(model, stream, strategy, cfg, device="cpu",
                             progress=False, **kw)
    return model, r


def fill(stream: Stream, replay: clutils.Replay, upto: int | None = None):
    """The memory after each task (no training: only what after_task stores), as (x, y, task) copies."""
    model = clutils.MLP(stream.n_features, (8,), stream.n_outputs, stream.n_heads)
    out = []
    for t in range(len(stream) if upto is None else upto):
        replay.before_task(model, stream, t)
        replay.after_task(model, stream, t)
        out.append({k: replay.store[k].clone() for k in ("x", "y", "task", "head")})
    return out


@pytest.mark.parametrize("memory,counts", [(10, [3, 3, 3]), (7, [5, 5, 5]), (100, [10, 2, 40, 7]), (5, [0, 9, 9]),
                                           (0, [4, 4]), (1000, [3, 4])])
def test_balanced_quota_shares_equally_within_what_each_class_has(memory, counts):
    q = balanced_quota(memory, counts)
    assert sum(q) == min(memory, sum(counts))
    assert all(0 <= qi <= n for qi, n in zip(q, counts))
    uncapped = [qi for qi, n in zip(q, counts) if qi < n]
    assert not uncapped or max(uncapped) - min(uncapped) <= 1
    # a class holding all its examples holds no more than an uncapped one: its unused places went to the others
    capped = [qi for qi, n in zip(q, counts) if qi == n]
    if capped and uncapped:
        assert max(capped) <= min(uncapped)


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
@pytest.mark.parametrize("memory", [7, 50, 333])
def test_memory_is_full_balanced_and_holds_real_training_examples(scenario, memory):
    stream = split(scenario)
    for t, mem in enumerate(fill(stream, clutils.Replay(memory))):
        n_classes = 2 * (t + 1)
        assert len(mem["y"]) == min(memory, sum(k.n_train for k in stream.tasks[:t + 1])) <= memory
        counts = torch.stack([((mem["task"] == k) & (mem["y"] == lab)).sum()
                              for k in range(t + 1) for lab in stream[k].y_train.unique()])
        have = torch.stack([(stream[k].y_train == lab).sum() for k in range(t + 1) for lab in stream[k].y_train.unique()])
        assert len(counts) == n_classes and (counts <= have).all()
        short = counts < have  # classes with more examples than places: their counts differ by at most one
        assert counts[short].max() - counts[short].min() <= 1 if short.any() else True
        assert (counts[~short] <= counts[short].min()).all() if short.any() else True
        for k in range(t + 1):  # every stored row is one of task k's training images with its label
            rows = mem["task"] == k
            xs, ys = mem["x"][rows], mem["y"][rows]
            match = (xs[:, None, :] == stream[k].x_train[None]).all(-1)  # (stored, train)
            assert (match.sum(1) >= 1).all()
            j = match.float().argmax(1)
            assert torch.equal(stream[k].y_train[j], ys)
            assert (mem["head"][rows] == stream.head_of(k)).all()
            assert len(torch.unique(j)) == len(j)  # drawn without replacement


def test_old_classes_keep_a_prefix_of_their_earlier_draw():
    stream = split("class")
    mems = fill(stream, clutils.Replay(100))
    for before, after in zip(mems, mems[1:]):
        for lab in before["y"].unique():
            old, new = before["x"][before["y"] == lab], after["x"][after["y"] == lab]
            assert len(new) <= len(old) and torch.equal(new, old[:len(new)])


def test_each_example_of_a_class_is_stored_with_probability_quota_over_count():
    """Uniform draw: 10 examples per class, 6 places for 2 classes -> each example kept with probability 0.3."""
    x = torch.arange(20, dtype=torch.float32)[:, None]
    y = torch.tensor([0, 1] * 10)
    task = Task(0, "t0", x, y, x, y, [0, 1])
    stream = Stream("fake", "class", [task], 1, 2, 1)
    n_runs, hits = 1500, torch.zeros(20)
    for seed in range(n_runs):
        r = clutils.Replay(6, seed=seed)
        fill(stream, r)
        hits[r.store["x"].flatten().long()] += 1
    freq = hits / n_runs
    sd = (0.3 * 0.7 / n_runs) ** 0.5
    assert (freq - 0.3).abs().max() < 5 * sd, freq


def test_mix_batch_adds_round_ratio_b_stored_examples_without_replacement():
    stream = split("task")
    r = clutils.Replay(40, ratio=0.5)
    fill(stream, r, upto=2)
    model = clutils.MLP(64, (8,), 2, stream.n_heads)
    r.before_task(model, stream, 2)
    assert r.extra_heads() == [0, 1]
    x, y = stream[2].x_train[:30], stream[2].y_train[:30]
    xb, yb, hb = r.mix_batch(x, y, 2, 2)
    assert len(yb) == 45 and torch.equal(xb[:30], x) and torch.equal(yb[:30], y)
    assert isinstance(hb, torch.Tensor) and (hb[:30] == 2).all() and set(hb[30:].tolist()) <= {0, 1}
    stored = (xb[30:, None, :] == r.store["x"][None]).all(-1).float().argmax(1)
    assert len(stored.unique()) == 15  # no stored example twice in one batch
    assert torch.equal(r.store["y"][stored], yb[30:]) and torch.equal(r.store["head"][stored], hb[30:])
    x, y = stream[2].x_train[:200], stream[2].y_train[:200]  # more asked (100) than stored (40): the memory, once
    xb, yb, _ = r.mix_batch(x, y, 2, 2)
    assert len(yb) == 240 and len((xb[200:, None, :] == r.store["x"][None]).all(-1).float().argmax(1).unique()) == 40
    r2 = clutils.Replay(40, ratio=5.0)
    fill(stream, r2, upto=2)
    r2.before_task(model, stream, 2)
    assert len(r2.mix_batch(x[:30], y[:30], 2, 2)[1]) == 30 + 40


@pytest.mark.parametrize("scenario", ["task", "class"])
def test_replay_zero_is_naive_bit_for_bit(scenario):
    stream = split(scenario)
    m_naive, r_naive = train(stream, clutils.Naive())
    m_rep, r_rep = train(stream, clutils.Replay(0))
    assert r_rep.acc == r_naive.acc
    for (k, a), (_, b) in zip(m_naive.state_dict().items(), m_rep.state_dict().items()):
        assert torch.equal(a, b), k


def test_task_incremental_replay_trains_the_old_heads_naive_leaves_them():
    stream = split("task")
    for strategy, moves in ((clutils.Naive(), False), (clutils.Replay(100), True)):
        clutils.seed_everything(0)
        model = clutils.MLP(64, (32,), 2, stream.n_heads)
        cfg = clutils.TrainConfig(**CFG)
        clutils.train_stream(model, stream, strategy, cfg, device="cpu", progress=False, stop_after_task=0)
        # stop_after_task without checkpoint_dir just stops: train on task 1 by hand through the loop
        head0 = [p.detach().clone() for p in model.head_parameters(0)]
        list(clutils.training.train_tasks(model, stream, strategy, cfg, start=1, progress=False))
        changed = any(not torch.equal(a, b) for a, b in zip(head0, model.head_parameters(0)))
        assert changed is moves


def test_replay_improves_class_incremental_accuracy_on_old_tasks():
    """The point of a memory: under Naive the old classes of class-IL are gone (0 %), with 100 images they are not."""
    stream = split("class")
    _, naive = train(stream, clutils.Naive(), epochs=10)
    _, rep = train(stream, clutils.Replay(100), epochs=10)
    old_naive, old_rep = sum(naive.acc[-1][:-1]) / 4, sum(rep.acc[-1][:-1]) / 4
    assert old_naive < 0.05 and old_rep > old_naive + 0.3


@pytest.mark.parametrize("penalty", [lambda: clutils.EWC(50.0), lambda: clutils.MAS(1.0)])
def test_state_round_trip_and_resume_are_exact_composed_with_a_penalty(tmp_path, penalty):
    stream = split("class")
    make = lambda: clutils.Compose(clutils.Replay(60, seed=3), penalty())  # noqa: E731
    _, whole = train(stream, make())
    ck = tmp_path / "ck"
    _, part = train(stream, make(), checkpoint_dir=ck, stop_after_task=2)
    assert len(part.acc) == 3
    fresh = make()
    m, resumed = train(stream, fresh, checkpoint_dir=ck)
    assert resumed.acc == whole.acc
    assert len(fresh.parts[0]) == 60
    again = make()
    again.load_state_dict(fresh.state_dict())
    for k, v in fresh.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_fingerprint_follows_memory_ratio_and_seed():
    stream = split("class")
    model = clutils.MLP(64, (32,), 10)
    cfg = clutils.TrainConfig()
    key = lambda s: fingerprint(run_config(model, stream, s, cfg))  # noqa: E731
    assert key(clutils.Replay(100)) == key(clutils.Replay(100))
    keys = {key(clutils.Replay(100)), key(clutils.Replay(500)), key(clutils.Replay(100, ratio=0.5)),
            key(clutils.Replay(100, seed=1)), key(clutils.Naive())}
    assert len(keys) == 5


def test_cost_counts_examples_and_bytes_as_stored():
    stream = split("class")
    r = clutils.Replay(123)
    assert r.cost() == {"examples": 0, "bytes": 0, "input_bytes": 0}
    fill(stream, r)
    n, d = 123, stream.n_features
    assert r.cost() == {"examples": n, "input_bytes": n * d * 4, "bytes": n * d * 4 + 3 * n * 8}


@pytest.mark.parametrize("bad,message", [(dict(memory=-1), "memory"), (dict(memory=2.5), "memory"),
                                         (dict(memory=10, ratio=-1.0), "ratio"),
                                         (dict(memory=10, ratio=float("nan")), "ratio")])
def test_bad_settings_are_refused_at_construction(bad, message):
    with pytest.raises((TypeError, ValueError), match=message):
        clutils.Replay(**bad)
