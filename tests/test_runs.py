"""The runs layer: a cache entry is served only to the run that made it.

Every case below once returned another run's result from the cache, silently (issue 19's probe):
two runs that read different bytes must never share an entry, and the same run must reload.
"""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

import clutils as cl
from clutils.checkpoint import ConfigMismatchError
from clutils.results import CacheError
from clutils.runs import FINGERPRINT_VERSION, fingerprint, run_config

CFG = cl.TrainConfig(epochs=1, batch_size=32, lr=0.05)


def _dataset(name="mine", seed=0, n=120, d=16, classes=4) -> cl.Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g)
    y = torch.arange(n) % classes
    xt = torch.rand(n // 2, d, generator=g)
    yt = torch.arange(n // 2) % classes
    return cl.Dataset(name, x, y, xt, yt, (1, d))


def _run(stream, cache, strategy=None, model=None, seed=0, **kw):
    cl.seed_everything(seed)
    model = model if model is not None else cl.MLP(stream.n_features, (8,), stream.n_outputs, stream.n_heads)
    return cl.train_stream(model, stream, strategy or cl.Naive(), CFG, device="cpu", cache_dir=cache,
                           progress=False, **kw), model


def _split(ds):
    return cl.make_stream("split", ds, scenario="task", classes_per_task=2)


def test_same_name_other_tensors_is_another_run(tmp_path):
    """The defect itself: two Dataset("mine", ...) with different tensors, one cache folder."""
    a, _ = _run(_split(_dataset(seed=0)), tmp_path)
    b, _ = _run(_split(_dataset(seed=1)), tmp_path)
    assert not a.from_cache and not b.from_cache
    assert a.config["stream"]["content"] != b.config["stream"]["content"]
    assert len(list(tmp_path.glob("*.json"))) == 2
    again, _ = _run(_split(_dataset(seed=1)), tmp_path)  # the same bytes reload
    assert again.from_cache and again.acc == b.acc


@pytest.mark.parametrize("change", ["pixel", "label"])
def test_one_pixel_or_one_label_changes_the_fingerprint(tmp_path, change):
    ds = _dataset()
    _run(_split(ds), tmp_path)
    ds2 = ds.clone()
    if change == "pixel":
        ds2.x_test[3, 5] += 0.25  # the test split is read too
    else:
        ds2.y_train[0] = (ds2.y_train[0] + 2) % 4  # 0 -> 2: same task count, another label
    r, _ = _run(_split(ds2), tmp_path)
    assert not r.from_cache


def test_changed_in_place_is_hashed_again(tmp_path):
    """A data set changed in place after a run (digits, passed as a Dataset) is another run."""
    ds = cl.load_dataset("digits")
    stream = cl.make_stream("permuted", ds, n_tasks=2, seed=0)  # shares the data set's tensors
    _run(stream, tmp_path)
    ds.x_train.mul_(0.5)  # the permuted tasks read these very tensors
    r, _ = _run(stream, tmp_path)
    assert not r.from_cache


def test_subset_and_permutation_seed(tmp_path):
    ds = _dataset(classes=4)
    full = cl.make_stream("split", ds, scenario="task", classes_per_task=2)
    sub = cl.make_stream("split", ds, scenario="task", classes_per_task=2, order=[0, 1])
    assert run_config(cl.MLP(16, (8,), 2, 2), full, cl.Naive(), CFG)["stream"]["content"] != \
        run_config(cl.MLP(16, (8,), 2, 1), sub, cl.Naive(), CFG)["stream"]["content"]
    p0 = cl.make_stream("permuted", ds, n_tasks=2, seed=0)
    p1 = cl.make_stream("permuted", ds, n_tasks=2, seed=1)
    assert p0.digest() != p1.digest()
    assert p0.digest() == cl.make_stream("permuted", ds, n_tasks=2, seed=0).digest()


def test_hand_built_stream_is_seen_by_content(tmp_path):
    ds1, ds2 = _dataset(seed=0), _dataset(seed=3)

    def hand(ds):
        tasks = [cl.Task(0, "t0", ds.x_train, ds.y_train, ds.x_test, ds.y_test, (0, 1, 2, 3))]
        return cl.Stream("mine", "domain", tasks, 16, 4, 1)  # description {}

    a, _ = _run(hand(ds1), tmp_path)
    b, _ = _run(hand(ds2), tmp_path)
    assert not b.from_cache
    assert fingerprint(a.config) != fingerprint(b.config)


class MyNet(cl.MLP):
    def forward(self, x, task=0, return_hidden=False):
        return super().forward(x, task, return_hidden)


def test_model_code_and_frozen_layers_are_part_of_the_run(tmp_path):
    stream = _split(_dataset())
    _, _ = _run(stream, tmp_path, model=MyNet(16, (8,), 2, 2))

    def changed_forward(x, task=0, return_hidden=False):
        return cl.MLP.forward(m, x * 2, task, return_hidden)

    cl.seed_everything(0)
    m = MyNet(16, (8,), 2, 2)
    m.forward = changed_forward  # the same repr and weights, another forward
    r = cl.train_stream(m, stream, cl.Naive(), CFG, device="cpu", cache_dir=tmp_path, progress=False)
    assert not r.from_cache

    cl.seed_everything(0)
    frozen = MyNet(16, (8,), 2, 2)
    frozen.layers[0].requires_grad_(False)
    r = cl.train_stream(frozen, stream, cl.Naive(), CFG, device="cpu", cache_dir=tmp_path, progress=False)
    assert not r.from_cache and r.config["model"]["frozen"] == ["layers.0.weight", "layers.0.bias"]


def _class_with_penalty(scale):
    code = f"""
class Pull(cl.Strategy):
    def penalty(self, model, t, hidden):
        return {scale} * sum(h.square().mean() for h in hidden)
"""
    ns = {"cl": cl}
    exec(compile(code, "<user strategy>", "exec"), ns)
    return ns["Pull"]


def test_strategy_subclass_code_is_part_of_the_run(tmp_path):
    stream = _split(_dataset())
    a, _ = _run(stream, tmp_path, strategy=_class_with_penalty(0.1)())
    b, _ = _run(stream, tmp_path, strategy=_class_with_penalty(0.5)())  # same class name, new penalty code
    assert not b.from_cache and a.config["strategy"]["code"] != b.config["strategy"]["code"]


def test_a_result_file_copied_under_another_runs_name_is_refused(tmp_path):
    stream = _split(_dataset())
    a, _ = _run(stream, tmp_path, strategy=cl.L2(1.0))
    b, _ = _run(stream, tmp_path, strategy=cl.L2(2.0))
    ka, kb = fingerprint(a.config), fingerprint(b.config)
    shutil.copy(tmp_path / f"{ka}.json", tmp_path / f"{kb}.json")  # a's result under b's name
    with pytest.raises(CacheError, match=r"another run's result.*strategy.lam"):
        _run(stream, tmp_path, strategy=cl.L2(2.0))
    # an edited configuration inside the right name is refused the same way
    rec = json.loads((tmp_path / f"{ka}.json").read_text())
    rec["config"]["train"]["lr"] = 0.5
    (tmp_path / f"{ka}.json").write_text(json.dumps(rec))
    with pytest.raises(CacheError, match="(?i)delete it"):
        _run(stream, tmp_path, strategy=cl.L2(1.0))


def test_a_checkpoint_with_a_forged_fingerprint_is_not_resumed(tmp_path):
    stream = _split(_dataset())
    cl.seed_everything(0)
    cl.train_stream(cl.MLP(16, (8,), 2, 2), stream, cl.L2(1.0), CFG, device="cpu", checkpoint_dir=tmp_path,
                    progress=False, stop_after_task=0)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    state["fingerprint"] = "forged"
    state["config"]["strategy"]["lam"] = 2.0  # it now claims to be the L2(2.0) run's
    torch.save(state, tmp_path / "checkpoint.pt")
    cl.seed_everything(0)
    with pytest.raises(ConfigMismatchError, match="different configuration"):
        cl.train_stream(cl.MLP(16, (8,), 2, 2), stream, cl.L2(3.0), CFG, device="cpu", checkpoint_dir=tmp_path,
                        progress=False)


def test_a_cache_hit_gives_back_the_trained_model_and_strategy(tmp_path):
    stream = _split(_dataset())
    a, ma = _run(stream, tmp_path, strategy=cl.EWC(5.0))
    s = cl.EWC(5.0)
    b, mb = _run(stream, tmp_path, strategy=s)
    assert b.from_cache and b.model_restored
    for (k, va), vb in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(va, vb), k
    assert int(s.n_tasks) == 2  # the strategy's state came back too
    assert cl.evaluate(mb, stream.to("cpu"), 1) == a.acc[-1]


class _TaskLog(cl.Strategy):
    """Records the task index after each task; its log is extra state, so it travels with the weights."""
    name = "tasklog"

    def __init__(self):
        super().__init__()
        self.seen: list[int] = []

    def after_task(self, model, stream, t):
        self.seen.append(t)

    def get_extra_state(self):
        return {"seen": self.seen}

    def set_extra_state(self, state):
        self.seen = list(state["seen"])


def test_a_strategys_extra_state_comes_back_inside_compose_on_a_cache_hit(tmp_path):
    stream = _split(_dataset())
    _run(stream, tmp_path, strategy=cl.Compose(cl.MAS(0.1), _TaskLog()))
    log = _TaskLog()
    b, _ = _run(stream, tmp_path, strategy=cl.Compose(cl.MAS(0.1), log))
    assert b.from_cache and b.model_restored and log.seen == [0, 1]


def test_select_epoch_snapshots_a_strategy_with_extra_state(tmp_path):
    """select_epoch copies the strategy's state each better epoch; extra state (a log) is copied too, and
    the log of the kept epoch is the one restored."""
    ds = _dataset()
    stream = cl.make_stream("split", ds, scenario="task", classes_per_task=2, val_fraction=0.25)
    cfg = cl.TrainConfig(epochs=3, batch_size=32, lr=0.05, select_epoch="val")
    cl.seed_everything(0)
    log = _TaskLog()
    r = cl.train_stream(cl.MLP(stream.n_features, (8,), stream.n_outputs, stream.n_heads), stream,
                        cl.Compose(cl.MAS(0.1), log), cfg, device="cpu", progress=False)
    assert len(r.acc) == 2 and log.seen == [0, 1]


def test_keep_model_false_writes_no_weights(tmp_path):
    stream = _split(_dataset())
    _run(stream, tmp_path, keep_model=False)
    assert not list(tmp_path.glob("*.pt"))
    r, m = _run(stream, tmp_path, keep_model=False)
    assert r.from_cache and not r.model_restored


def test_defaults_are_omitted_so_later_settings_keep_fingerprints():
    """One rule: a setting equal to its default is not recorded (neither in strategies nor in TrainConfig)."""
    assert cl.EWC(10.0).config() == {"name": "ewc", "class": "EWC", "lam": 10.0}
    assert cl.EWC(10.0, mode="separate").config() == cl.EWC(10.0).config()
    assert cl.EWC(10.0, mode="online").config()["mode"] == "online"
    assert cl.TrainConfig().to_dict() == {}
    assert cl.TrainConfig(lr=0.1, momentum=0).to_dict() == {"lr": 0.1}
    stream = cl.make_stream("permuted", _dataset(d=4), n_tasks=1)
    config = run_config(cl.MLP(4, (2,), 4), stream, cl.Naive(), cl.TrainConfig())
    assert config["fingerprint_version"] == FINGERPRINT_VERSION and config["train"] == {}


def test_one_version_for_the_package():
    import tomllib
    from pathlib import Path

    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "version" not in meta["project"] and meta["project"]["dynamic"] == ["version"]
    from importlib.metadata import version
    assert version("clutils") == cl.__version__


def test_numpy_integers_are_accepted_and_floats_never_truncated():
    import numpy as np

    s = cl.make_stream("permuted", "digits", n_tasks=np.int64(2), seed=np.int64(1))
    assert len(s) == 2 and s.description["n_tasks"] == 2 and type(s.description["seed"]) is int
    with pytest.raises(TypeError, match="chunk_size"):
        cl.SSL("slnid", 1e-3, chunk_size=10.5)


def test_empty_splits_are_refused_when_the_stream_is_built():
    ds = _dataset(classes=4)
    no_test = cl.Dataset("mine", ds.x_train, ds.y_train, ds.x_test[ds.y_test < 2], ds.y_test[ds.y_test < 2], (4, 4))
    with pytest.raises(ValueError, match=r"task 1 .* has no test examples"):
        cl.make_stream("split", no_test, classes_per_task=2)
    with pytest.raises(ValueError, match=r"no val examples.*larger val_fraction"):
        cl.make_stream("split", ds, classes_per_task=2, val_fraction=0.01)  # 30 images a class: round(0.3) = 0
    tasks = [cl.Task(0, "t0", ds.x_train, ds.y_train, ds.x_test[:0], ds.y_test[:0], (0, 1, 2, 3))]
    with pytest.raises(ValueError, match="no test examples"):  # a hand-built stream: refused before training
        cl.train_stream(cl.MLP(16, (8,), 4), cl.Stream("mine", "domain", tasks, 16, 4, 1), cl.Naive(), CFG,
                        device="cpu", progress=False)


def test_a_checkpoint_that_does_not_fit_the_run_is_refused_with_delete_it(tmp_path):
    stream = _split(_dataset())
    cl.seed_everything(0)
    cl.train_stream(cl.MLP(16, (8,), 2, 2), stream, cl.Naive(), CFG, device="cpu", checkpoint_dir=tmp_path,
                    progress=False, stop_after_task=0)
    path = tmp_path / "checkpoint.pt"
    good = torch.load(path, weights_only=True)
    for name, edit in [("task beyond the stream", lambda s: s.update(task=7)),
                       ("missing entry", lambda s: s.pop("strategy")),
                       ("wrong shape", lambda s: s["model"].update({"layers.0.weight": torch.zeros(3, 3)}))]:
        state = {k: (dict(v) if isinstance(v, dict) else v) for k, v in good.items()}
        edit(state)
        torch.save(state, path)
        cl.seed_everything(0)
        with pytest.raises(cl.checkpoint.CheckpointError, match="(?i)delete"):
            cl.train_stream(cl.MLP(16, (8,), 2, 2), stream, cl.Naive(), CFG, device="cpu", checkpoint_dir=tmp_path,
                            progress=False)


def test_temporary_files_are_unique_and_never_follow_a_planted_link(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    cache = tmp_path / "cache"
    cache.mkdir()
    stream = _split(_dataset())
    cl.seed_everything(0)
    key = fingerprint(run_config(cl.MLP(16, (8,), 2, 2), stream, cl.Naive(), CFG))
    for name in (f"{key}.json.tmp", "checkpoint.tmp", f"{key}.pt.tmp"):  # the old fixed names
        (cache / name).symlink_to(target)
    r, _ = _run(stream, cache)
    assert target.read_text() == "keep me" and (cache / f"{key}.json").exists()
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp") and not p.is_symlink()]  # none left behind


def test_a_full_disk_is_named_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    from clutils import _files

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:671] . unexpected pos 123 vs 456")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(_files.DiskFullError, match=r"no space left on device: .*cache"):
        _run(_split(_dataset()), tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.tmp"))


class _Counting(cl.Strategy):
    name = "counting"

    def __init__(self):
        super().__init__()
        self.tasks_started = 0

    def before_task(self, model, stream, t):
        self.tasks_started += 1


def test_too_little_free_space_is_refused_before_any_training(tmp_path, monkeypatch):
    from collections import namedtuple
    from clutils import _files, runs
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(runs.shutil, "disk_usage", lambda p: usage(10 ** 9, 10 ** 9 - 50_000, 50_000))
    s = _Counting()
    with pytest.raises(_files.DiskFullError, match=r"no space left on device: .* MiB free .* writes about"):
        _run(_split(_dataset()), tmp_path / "cache", strategy=s)
    assert s.tasks_started == 0 and not list((tmp_path / "cache").glob("*.json"))
    monkeypatch.undo()  # room again: the same run trains
    r, _ = _run(_split(_dataset()), tmp_path / "cache", strategy=_Counting())
    assert not r.from_cache and len(r.acc) == 2


def test_a_folder_that_turns_read_only_mid_run_is_named_and_the_finished_tasks_kept(tmp_path, monkeypatch):
    """Before task 2's checkpoint the folder refuses writes (EROFS): a clear PermissionError, not torch's."""
    import errno
    import tempfile as tf
    from clutils import _files

    class ReadOnlyAfterFirst(cl.Strategy):
        name = "ro"

        def after_task(self, model, stream, t):
            if t == 1:  # after task 2 trained, before its checkpoint is written
                def refuse(*a, **k):
                    raise OSError(errno.EROFS, "Read-only file system")
                monkeypatch.setattr(_files.tempfile, "mkstemp", refuse)

    ck = tmp_path / "ck"
    with pytest.raises(PermissionError, match=r"cannot write .*ck.*read-only"):
        _run(_split(_dataset()), None, strategy=ReadOnlyAfterFirst(), checkpoint_dir=ck)
    monkeypatch.setattr(_files.tempfile, "mkstemp", tf.mkstemp)
    assert (ck / "checkpoint.pt").is_file()  # task 1's checkpoint was written before the folder changed


def test_a_record_without_weights_is_trained_once_more_when_the_model_is_asked_for(tmp_path):
    stream = _split(_dataset())
    a, _ = _run(stream, tmp_path, strategy=cl.L2(1.0), keep_model=False)  # a sweep's run: the record only
    b, mb = _run(stream, tmp_path, strategy=cl.L2(1.0))  # the model wanted: trained again, weights kept
    assert not b.from_cache and b.acc == a.acc and list(tmp_path.glob("*.pt"))
    c, mc = _run(stream, tmp_path, strategy=cl.L2(1.0))
    assert c.from_cache and c.model_restored
    assert all(torch.equal(x, y) for x, y in zip(mb.state_dict().values(), mc.state_dict().values()))


def test_run_seeds_passes_the_seed_to_a_strategy_maker_that_takes_it(tmp_path):
    from clutils.sweeps import run_seeds

    stream = _split(_dataset())
    runs = run_seeds(lambda s: cl.EWC(1.0, fisher="sampled", seed=s),
                     lambda: cl.MLP(16, (8,), 2, 2), stream, CFG, [0, 3], device="cpu")
    assert [r.config["strategy"].get("seed", 0) for r in runs] == [0, 3]


_WRITER = """
import json, sys, torch, clutils as cl
ds = cl.load_dataset("digits")
stream = cl.make_stream("permuted", ds, n_tasks=3, seed=0)
cl.seed_everything(0)
r = cl.train_stream(cl.MLP(64, (32,), 10), stream, cl.EWC(5.0), cl.TrainConfig(epochs=2, batch_size=32),
                    device="cpu", cache_dir=sys.argv[1], progress=False)
print(json.dumps({"from_cache": r.from_cache, "acc": r.acc}))
"""


def test_two_processes_writing_one_run_train_it_once(tmp_path):
    """Two writers of one run into one cache_dir (real processes): the second waits on the lock file and
    reloads the first's result; no raw FileNotFoundError, no temporary or lock file left behind."""
    import subprocess
    import sys

    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, str(script), str(cache)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"}) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    res = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert res[0]["acc"] == res[1]["acc"]
    assert sorted(r["from_cache"] for r in res) == [False, True]  # trained once, loaded once
    assert sorted(p.suffix for p in cache.iterdir()) == [".json", ".pt"]


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    stream = _split(_dataset())
    cl.seed_everything(0)
    key = fingerprint(run_config(cl.MLP(16, (8,), 2, 2), stream, cl.Naive(), CFG))
    (tmp_path / f"{key}.lock").write_text("999999999")  # no such process
    r, _ = _run(stream, tmp_path)
    assert not r.from_cache and not (tmp_path / f"{key}.lock").exists()


def test_a_read_only_cache_that_holds_the_run_is_read(tmp_path, monkeypatch):
    import os

    from clutils import runs

    stream = _split(_dataset())
    a, _ = _run(stream, tmp_path, strategy=cl.L2(1.0))
    # the folder turns read-only (simulated: tests may run as root, for whom chmod does not bite)
    monkeypatch.setattr(runs.os, "access", lambda path, mode: mode != os.W_OK)
    monkeypatch.setattr(runs, "check_writable_folder", lambda *a, **k: (_ for _ in ()).throw(PermissionError("ro")))
    b, mb = _run(stream, tmp_path, strategy=cl.L2(1.0))
    assert b.from_cache and b.model_restored and b.acc == a.acc
    assert not list(tmp_path.glob("*.lock"))


def test_the_fingerprint_of_a_config_and_of_its_stored_form_agree():
    stream = _split(_dataset())
    cl.seed_everything(0)
    m = cl.MLP(stream.n_features, (8,), stream.n_outputs, stream.n_heads)
    config = run_config(m, stream, cl.Compose(cl.EWC(3.0), cl.SSL("slnid", 1e-3)), CFG)
    stored = json.loads(json.dumps(config, sort_keys=True, default=str))  # as a record reads back
    assert fingerprint(stored) == fingerprint(config)


def test_the_in_process_lock_table_does_not_grow_with_the_runs(tmp_path):
    from clutils import _files
    for i in range(50):
        with _files.run_lock(tmp_path / f"{i}.lock"):
            pass
    assert _files._THREAD_LOCKS == {}


def test_a_cache_hit_marks_its_files_used_and_leaves_their_contents(tmp_path):
    import os

    stream = _split(_dataset())
    _run(stream, tmp_path, strategy=cl.L2(1.0))
    _run(stream, tmp_path, strategy=cl.L2(2.0))
    files = sorted(tmp_path.glob("*.json")) + sorted(tmp_path.glob("*.pt"))
    assert len(files) == 4
    before = {f: f.read_bytes() for f in files}
    for f in files:  # an old cache: every file last written a day ago
        os.utime(f, (os.path.getatime(f) - 86400, os.path.getmtime(f) - 86400))
    marker = max(f.stat().st_mtime for f in files) + 1
    b, _ = _run(stream, tmp_path, strategy=cl.L2(1.0))  # hits one run only
    assert b.from_cache
    used = {f.name for f in files if f.stat().st_mtime > marker}
    key = fingerprint(b.config)
    assert used == {f"{key}.json", f"{key}.pt"}  # the other run's two files are the stale ones
    assert {f: f.read_bytes() for f in files} == before
