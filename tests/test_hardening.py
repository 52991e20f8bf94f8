"""Hardening (issue 15): every bad input is a clear early error, every run's state its own,
no silent wrong result.

Each case of the issue is one row of a table below: the call, the error type it must raise and
a key part of the message (which names what is wrong and what to do), or, where the fix is a
correct behaviour rather than an error, a test of that behaviour.  Small: digits, tiny MLPs.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

import clutils as cl
from clutils import datasets as cldata

MNIST_RAW = cldata.data_root() / "MNIST" / "raw"  # $CLUTILS_DATA (CI points it at ../shared/data)


def _digits() -> cl.Dataset:
    return cl.load_dataset("digits")


def check(call: Callable[[], object], exc: type[BaseException], fragment: str) -> None:
    """``call()`` raises ``exc`` whose message holds the fragments of ``fragment`` split at " … "
    (each literally, in that order): what matters -- the argument's name, the fix -- not the wording between."""
    with pytest.raises(exc, match="(?s)" + ".*".join(re.escape(f) for f in fragment.split(" … "))):
        call()


# --------------------------------------------------------------------------------------------
# data: argument types, duplicate classes, devices

DATA_ERRORS = {
    # duplicate classes: silently an unused output / a dropped class before
    "group lists a class twice": (lambda: cl.make_stream("disjoint", "digits", groups=[[0, 0, 1], [2, 3]]),
                                  ValueError, "lists classes [0] more than once"),
    "disjoint() lists a class twice": (lambda: cl.disjoint(_digits(), [[4, 5, 5]]),
                                       ValueError, "lists classes [5] more than once"),
    "split order lists a class twice": (lambda: cl.split(_digits(), order=[0, 1, 2, 3, 4, 5, 6, 7, 8, 8]),
                                        ValueError, "order lists classes [8] more than once (and leaves out [9])"),
    "make_stream split order twice": (lambda: cl.make_stream("split", "digits", order=[1, 1, 2, 3]),
                                      ValueError, "order lists classes [1] more than once"),
    # floats or strings where integers are expected
    "classes_per_task float": (lambda: cl.split(_digits(), classes_per_task=2.0),
                               TypeError, "classes_per_task must be an integer, got 2.0 (float) (write 2)"),
    "classes_per_task string": (lambda: cl.make_stream("split", "digits", classes_per_task="2"),
                                TypeError, "classes_per_task must be an integer, got '2'"),
    "order of floats": (lambda: cl.split(_digits(), order=[0.0, 1.0]),
                        TypeError, "every entry of order must be an integer"),
    "order a bare number": (lambda: cl.split(_digits(), order=3), TypeError, "order must be a sequence of integers"),
    "groups flat list": (lambda: cl.make_stream("disjoint", "digits", groups=[0, 1, 2]),
                         TypeError, "groups must be a list of class lists"),
    "groups class a float": (lambda: cl.disjoint(_digits(), [[0, 1.5]]),
                             TypeError, "every class in groups must be an integer, got 1.5"),
    "permuted n_tasks float": (lambda: cl.make_stream("permuted", "digits", n_tasks=2.5),
                               TypeError, "n_tasks … must be an integer … 2.5"),
    "permuted seed string": (lambda: cl.make_stream("permuted", "digits", seed="0"),
                             TypeError, "seed must be an integer, got '0'"),
    "make_stream unknown argument": (lambda: cl.make_stream("split", "digits", groups=[[0, 1]]),
                                     TypeError, "got unknown argument(s) ['groups']; a split stream takes"),
    "make_stream dataset not a name": (lambda: cl.make_stream("split", 3),
                                       TypeError, "dataset must be a name (mnist, fashion_mnist, digits) or a Dataset"),
    "load_dataset name not a string": (lambda: cl.load_dataset(None), TypeError, "dataset must be a string"),
    "load_dataset root not a path": (lambda: cl.load_dataset("digits", root=3), TypeError, "root must be a folder path"),
    "device not a string": (lambda: cl.load_dataset("digits", device=0.5), TypeError, "device must be a string"),
    # a Dataset built by hand with inconsistent tensors
    "Dataset labels uint8": (lambda: cl.Dataset("toy", torch.zeros(4, 3), torch.zeros(4, dtype=torch.uint8),
                                                torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64), (1, 3)),
                             ValueError, "y_train must be an int64 tensor of shape (N,), got torch.uint8"),
    "Dataset rows and labels differ": (lambda: cl.Dataset("toy", torch.zeros(4, 3), torch.zeros(3, dtype=torch.int64),
                                                          torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64), (1, 3)),
                                       ValueError, "x_train has 4 rows but y_train 3 labels"),
    "Dataset images not flat": (lambda: cl.Dataset("toy", torch.zeros(4, 1, 3), torch.zeros(4, dtype=torch.int64),
                                                   torch.zeros(2, 3), torch.zeros(2, dtype=torch.int64), (1, 3)),
                                ValueError, "x_train must be a float tensor of shape (N, features)"),
}


@pytest.mark.parametrize("case", list(DATA_ERRORS))
def test_data_bad_input_is_a_clear_error(case):
    call, exc, fragment = DATA_ERRORS[case]
    check(call, exc, fragment)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("call", [lambda: cl.load_dataset("digits", device="cuda"),
                                  lambda: cl.make_stream("split", "digits", device="cuda:0"),
                                  lambda: cl.make_stream("split", _digits(), device="cuda")],
                         ids=["load_dataset", "make_stream name", "make_stream Dataset"])
def test_cuda_device_without_cuda_is_refused(call):
    check(call, RuntimeError, "CUDA is not available; use device='auto' or 'cpu'")


@pytest.mark.parametrize("call", [lambda: cl.load_dataset("digits", device="auto").x_train,
                                  lambda: cl.make_stream("split", "digits", device="auto")[0].x_train,
                                  lambda: cl.make_stream("split", _digits(), device="auto")[0].x_train],
                         ids=["load_dataset", "make_stream name", "make_stream Dataset"])
def test_device_auto_is_accepted(call):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert call().device.type == expected


def test_dataset_cache_cannot_be_corrupted_by_a_caller():
    """In-place edits of a loaded dataset reach neither later loads nor streams built from the name."""
    first = cl.load_dataset("digits")
    pristine_mean = first.x_train.mean().item()
    first.x_train -= first.x_train.mean(0)  # centring in place, as a user might
    first.y_train.zero_()
    again = cl.load_dataset("digits")
    assert again.x_train.mean().item() == pytest.approx(pristine_mean)
    assert again.x_train.min().item() >= 0.0  # pixels are in [0, 1]; the centred copy has negatives
    assert len(again.classes) == 10
    task0 = cl.make_stream("split", "digits")[0]
    assert task0.x_train.min().item() >= 0.0 and task0.classes == (0, 1)
    # and editing what one call returned does not reach the next call either
    again.x_test.fill_(7.0)
    assert cl.load_dataset("digits").x_test.max().item() <= 1.0


def test_dataset_copies_share_no_memory():
    a, b = cl.load_dataset("digits"), cl.load_dataset("digits")
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert getattr(a, name).data_ptr() != getattr(b, name).data_ptr()
        assert torch.equal(getattr(a, name), getattr(b, name))


# --------------------------------------------------------------------------------------------
# MNIST files: corrupted, truncated, empty; a failed download leaves no empty folders

LABELS = "train-labels-idx1-ubyte"


def _label_file_variants(raw: Path) -> dict[str, bytes]:
    """A real MNIST label file (if present; else a synthetic valid one) and three damaged copies."""
    if (MNIST_RAW / LABELS).exists():
        good = (MNIST_RAW / LABELS).read_bytes()
    else:
        good = bytes([0, 0, 8, 1]) + (60000).to_bytes(4, "big") + bytes(60000)
    return {"bad header": b"\x00\x00\x09\x09" + good[4:], "truncated": good[: len(good) // 2], "empty": b"",
            "ends in header": good[:6]}


@pytest.mark.parametrize("damage, fragment", [("bad header", "is not an IDX header"),
                                              ("truncated", "holds 30004"),
                                              ("empty", "header (empty)"),
                                              ("ends in header", "ends inside its header")])
def test_damaged_mnist_file_is_named_with_what_to_do(tmp_path, damage, fragment):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / LABELS).write_bytes(_label_file_variants(raw)[damage])
    cldata.clear_cache()
    with pytest.raises(ValueError) as err:
        cl.load_dataset("mnist", root=tmp_path)
    msg = str(err.value)
    assert str(raw / LABELS) in msg and fragment in msg and "Delete it" in msg and "re-download" in msg


@pytest.mark.skipif(not MNIST_RAW.exists(), reason="real MNIST not available")
def test_intact_mnist_files_pass_the_idx_check():
    names = [Path(url).name.removesuffix(".gz") for url, _ in __import__("torchvision").datasets.MNIST.resources]
    cldata._check_idx_files(MNIST_RAW, names)  # raises on any damage


def test_failed_mnist_download_leaves_no_empty_folders(tmp_path, monkeypatch):
    """torchvision creates MNIST/raw before downloading; a failed download removes what it created."""
    import torchvision

    def no_network(self):
        Path(self.raw_folder).mkdir(parents=True, exist_ok=True)
        raise RuntimeError("no network (simulated)")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    root = tmp_path / "fresh"
    cldata.clear_cache()
    check(lambda: cl.load_dataset("mnist", root=root), FileNotFoundError, "could not be downloaded")
    assert not root.exists()
    (tmp_path / "kept").mkdir()  # a folder the user made stays; only the created ones go
    check(lambda: cl.load_dataset("mnist", root=tmp_path / "kept"), FileNotFoundError, "could not be downloaded")
    assert (tmp_path / "kept").is_dir() and not (tmp_path / "kept" / "MNIST").exists()


# --------------------------------------------------------------------------------------------
# MLP constructor

MODEL_ERRORS = {
    "hidden an int": (lambda: cl.MLP(64, 64, 10), TypeError, "hidden must be a sequence of layer sizes such as "
                                                             "(100, 100) or () for none, got 64; for one hidden "
                                                             "layer of 64 units write MLP(64, (64,), 10)"),
    "hidden a string": (lambda: cl.MLP(64, "64", 10), TypeError, "hidden must be a sequence"),
    "in_features float": (lambda: cl.MLP(64.0, (32,), 10), TypeError, "in_features must be an integer, got 64.0"),
    "out_features string": (lambda: cl.MLP(64, (32,), "10"), TypeError, "out_features must be an integer, got '10'"),
    "hidden entry float": (lambda: cl.MLP(64, (32.5,), 10), TypeError, "every entry of hidden must be an integer"),
    "n_heads float": (lambda: cl.MLP(64, (32,), 10, n_heads=2.0), TypeError, "n_heads must be an integer"),
    "n_heads bool": (lambda: cl.MLP(64, (32,), 10, n_heads=True), TypeError, "n_heads must be an integer, got the bool"),
    "hidden size zero": (lambda: cl.MLP(64, (0,), 10), ValueError, "layer sizes must be positive"),
}


@pytest.mark.parametrize("case", list(MODEL_ERRORS))
def test_mlp_bad_arguments_are_clear_errors(case):
    call, exc, fragment = MODEL_ERRORS[case]
    check(call, exc, fragment)


def test_mlp_accepts_numpy_integers():
    m = cl.MLP(np.int64(64), np.array([16, 8]), np.int32(10))
    assert m.hidden == (16, 8) and m(torch.zeros(2, 64)).shape == (2, 10)


# --------------------------------------------------------------------------------------------
# RunResult.load

def _record(**changes) -> dict:
    d = {"config": {"a": 1}, "acc": [[0.9, 0.1], [0.5, 0.8]], "timings": {}, "curves": [], "extras": {}}
    d.update(changes)
    return {k: v for k, v in d.items() if v is not ...}


RESULT_ERRORS = {
    "malformed JSON": ('{"config": {}, "acc": [[0.9', "is not valid JSON"),
    "a JSON list": ("[[0.9]]", "holds a JSON list, not a run record"),
    "missing acc": (json.dumps(_record(acc=...)), "missing field(s) ['acc']"),
    "unknown fields (another version)": (json.dumps(_record(matrix=[[1.0]])), "unknown field(s) ['matrix']"),
    "newer format": (json.dumps({"format": 2, "clutils_version": "9.0", **_record()}),
                     "was written by clutils 9.0 in record format 2"),
    "ragged acc": (json.dumps(_record(acc=[[0.9, 0.1], [0.5]])), "the accuracy matrix is ragged"),
    "acc of strings": (json.dumps(_record(acc=[["0.9"]])), "acc row 0 is not a list of numbers"),
    "acc a number": (json.dumps(_record(acc=0.9)), "field 'acc' must be a JSON array"),
    "acc in percent": (json.dumps(_record(acc=[[90.0, 10.0]])), "outside [0, 1]"),
    "more rows than tasks": (json.dumps(_record(acc=[[0.9], [0.8]])), "2 rows (tasks trained) but only 1 columns"),
    "config a string": (json.dumps(_record(config="x")), "field 'config' must be a JSON object"),
}


@pytest.mark.parametrize("case", list(RESULT_ERRORS))
def test_runresult_load_names_the_file_and_the_problem(tmp_path, case):
    text, fragment = RESULT_ERRORS[case]
    path = tmp_path / "run.json"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        cl.RunResult.load(path)
    assert str(path) in str(err.value) and fragment in str(err.value)


def test_runresult_round_trip_and_files_without_a_format_field(tmp_path):
    res = cl.RunResult(config={"k": [1, 2]}, acc=[[1.0, 0.25], [0.5, 0.75]], timings={"train_s": [0.1]})
    back = cl.RunResult.load(res.save(tmp_path / "r.json"))
    assert back == res and json.loads((tmp_path / "r.json").read_text())["format"] == 1
    (tmp_path / "old.json").write_text(json.dumps(_record()))  # as written before the format field existed
    assert cl.RunResult.load(tmp_path / "old.json").R[1, 1] == 0.8


# --------------------------------------------------------------------------------------------
# training, strategies, checkpoints, importance, SSL

@pytest.fixture(scope="module")
def stream2() -> cl.Stream:
    """Two domain-incremental tasks of digits (5 classes each), ~670 training images per task."""
    return cl.make_stream("split", "digits", classes_per_task=5, scenario="domain")


def _model(stream: cl.Stream, hidden=(8,), seed: int = 0) -> cl.MLP:
    torch.manual_seed(seed)
    return cl.MLP(stream.n_features, hidden, stream.n_outputs, stream.n_heads)


CFG = cl.TrainConfig(epochs=1, batch_size=128, lr=0.05)


def _train(stream, strategy=None, cfg=CFG, model=None, **kw) -> cl.RunResult:
    return cl.train_stream(model if model is not None else _model(stream), stream, strategy, cfg,
                           device="cpu", progress=False, **kw)


def test_a_used_strategy_is_refused_with_how_to_get_a_fresh_one(stream2):
    e = cl.EWC(10.0)
    first = _train(stream2, e)
    check(lambda: _train(stream2, e), ValueError, "already trained a run")
    # a fresh instance with the same settings reproduces the first run exactly
    assert _train(stream2, cl.EWC(10.0)).acc == first.acc
    # a used strategy inside Compose is refused too
    check(lambda: _train(stream2, cl.Compose(e, cl.SSL("l1", 1e-4))), ValueError, "already trained a run")


def test_a_used_strategy_may_resume_its_own_checkpoint(stream2, tmp_path):
    """Reusing the object to resume from a checkpoint is fine: the checkpoint replaces its state."""
    m = cl.MAS(0.5)
    _train(stream2, m, model=_model(stream2), checkpoint_dir=tmp_path, stop_after_task=0)
    resumed = _train(stream2, m, model=_model(stream2), checkpoint_dir=tmp_path)
    assert resumed.acc == _train(stream2, cl.MAS(0.5)).acc


def test_compose_refuses_one_instance_twice():
    m = cl.MAS(0.1)
    check(lambda: cl.Compose(m, m), ValueError, "the same MAS object appears twice")
    check(lambda: cl.Compose(m, cl.Compose(cl.SSL("l1", 1e-3), m)), ValueError, "appears twice")


class _BlowUpOnLastStep(cl.Strategy):
    """A penalty whose value stays finite but whose gradient (1e38 per weight) sends every
    first-layer weight to -inf on the step it is applied: the loss of the steps taken is finite."""

    def penalty(self, model, t, hidden):
        w = model.layers[0].weight
        return 1e38 * (w - w.detach()).sum()  # value 0, gradient 1e38


def test_nan_guard_sees_parameters_that_blew_up_on_the_last_step(stream2):
    cfg = cl.TrainConfig(epochs=1, batch_size=10_000, lr=10.0)  # one step per epoch: the last step
    with pytest.raises(cl.NonFiniteLossError, match="parameters became non-finite") as err:
        _train(stream2, _BlowUpOnLastStep(), cfg)
    assert "layers.0.weight" in str(err.value) and "task 0" in str(err.value)


TRAINCONFIG_ERRORS = {
    "lr infinite": (dict(lr=float("inf")), ValueError, "lr must be finite"),
    "lr NaN": (dict(lr=float("nan")), ValueError, "lr must be finite"),
    "lr a string": (dict(lr="0.1"), TypeError, "lr must be a number"),
    "fractional epochs in a list": (dict(epochs=[1, 1.9]), TypeError, "every entry of epochs must be an integer, got 1.9"),
    "fractional epochs": (dict(epochs=1.5), TypeError, "epochs must be an integer or one integer per task"),
    "epochs a string": (dict(epochs="2"), TypeError, "epochs must be an integer or one integer per task"),
    "adam with momentum": (dict(optimizer="adam", momentum=0.9), ValueError, "optimizer='adam' has no momentum"),
    "batch_size float": (dict(batch_size=128.0), TypeError, "batch_size must be an integer, got 128.0"),
    "batch_size zero": (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
    "seed float": (dict(seed=1.0), TypeError, "seed must be an integer"),
    "eval_batch_size zero": (dict(eval_batch_size=0), ValueError, "eval_batch_size must be >= 1"),
    "eval_batch_size string": (dict(eval_batch_size="1000"), TypeError, "eval_batch_size must be an integer"),
    "momentum negative": (dict(momentum=-0.5), ValueError, "momentum must be >= 0"),
    "weight_decay infinite": (dict(weight_decay=float("inf")), ValueError, "weight_decay must be finite"),
    "optimizer not a string": (dict(optimizer=None), ValueError, "unknown optimizer None"),
}


@pytest.mark.parametrize("case", list(TRAINCONFIG_ERRORS))
def test_trainconfig_bad_values_are_refused_before_training(stream2, case):
    kwargs, exc, fragment = TRAINCONFIG_ERRORS[case]
    probe = _CountSteps()
    check(lambda: _train(stream2, probe, cl.TrainConfig(**kwargs)), exc, fragment)
    assert probe.steps == 0  # refused before the first step


class _CountSteps(cl.Strategy):
    def __init__(self):
        super().__init__()
        self.steps = 0

    def after_step(self, model, t):
        self.steps += 1


def test_trainconfig_accepts_numpy_integers(stream2):
    cfg = cl.TrainConfig(epochs=[np.int64(1), 0], batch_size=np.int32(256), seed=np.int64(3))
    assert len(_train(stream2, None, cfg).acc) == 2


STRATEGY_ERRORS = {
    "strategy class, not instance": (lambda s: _train(s, cl.EWC), TypeError, "pass an instance such as EWC(...)"),
    "Compose of a class": (lambda s: cl.Compose(cl.MAS, cl.SSL()), TypeError, "Compose takes Strategy instances"),
    "plain nn.Sequential": (lambda s: _train(s, model=torch.nn.Sequential(torch.nn.Linear(64, 5))),
                            TypeError, "does not follow the model contract"),
    "strategy not a strategy": (lambda s: _train(s, "ewc"), TypeError, "strategy must be a clutils Strategy"),
    "SSL without hidden layer": (lambda s: _train(s, cl.SSL("slni", 1e-3), model=cl.MLP(64, (), 5)),
                                 ValueError, "SSL regularises hidden activations but the model has no hidden layer"),
    "SSL layer out of range": (lambda s: _train(s, cl.SSL("l1", 1e-3, layers=[3])),
                               ValueError, "SSL layers [3] do not exist"),
    "SSL importance_samples float": (lambda s: cl.SSL("slnid", importance_samples=100.0),
                                     TypeError, "importance_samples … must be an integer … write 100"),
    "MAS n_samples float": (lambda s: cl.MAS(1.0, n_samples=100.0), ValueError, "n_samples must be a positive integer"),
    "EWC n_samples string": (lambda s: cl.EWC(1.0, n_samples="100"), ValueError, "n_samples must be a positive integer"),
    "EWC lam infinite": (lambda s: cl.EWC(float("inf")), ValueError, "must be a finite number"),
}


@pytest.mark.parametrize("case", list(STRATEGY_ERRORS))
def test_strategy_and_model_mistakes_are_clear_errors(stream2, case):
    call, exc, fragment = STRATEGY_ERRORS[case]
    check(lambda: call(stream2), exc, fragment)


def test_ssl_without_hidden_layer_is_refused_before_any_step(stream2):
    probe = _CountSteps()
    check(lambda: _train(stream2, cl.Compose(probe, cl.SSL("l1", 1e-3)), model=cl.MLP(64, (), 5)),
          ValueError, "no hidden layer")
    assert probe.steps == 0


# fingerprints: everything that changes a run changes its configuration

class _Scaled(cl.Strategy):
    """A user strategy with a setting and no config() of its own."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def penalty(self, model, t, hidden):
        return self.scale * 1e-3 * hidden[-1].mean()


def test_subclass_settings_are_in_the_config_and_a_changed_value_does_not_resume(stream2, tmp_path):
    assert _Scaled(2.0).config() != _Scaled(3.0).config()
    _train(stream2, _Scaled(2.0), checkpoint_dir=tmp_path, stop_after_task=0)
    check(lambda: _train(stream2, _Scaled(3.0), checkpoint_dir=tmp_path), cl.checkpoint.ConfigMismatchError,
          "was written by a different configuration")


def _closure_over(x: torch.Tensor):
    def importance(model, stream, t):
        return cl.mas_importance(model, x, n_active=stream.n_outputs)
    return importance


def test_custom_importance_closure_is_fingerprinted_by_what_it_captures(stream2, tmp_path):
    xa, xb = stream2[0].x_train[:50], stream2[0].x_train[50:100]
    a, b, a2 = cl.Consolidation(1.0, _closure_over(xa)), cl.Consolidation(1.0, _closure_over(xb)), \
        cl.Consolidation(1.0, _closure_over(xa.clone()))
    assert a.config() != b.config()  # same code, other data
    assert a.config() == a2.config()  # same code, equal data: the same run
    lam_only = cl.Consolidation(1.0, lambda m, s, t: {n: torch.ones_like(p) for n, p in m.named_parameters()})
    other_body = cl.Consolidation(1.0, lambda m, s, t: {n: 2 * torch.ones_like(p) for n, p in m.named_parameters()})
    assert lam_only.config() != other_body.config()  # same name (<lambda>), other code
    _train(stream2, a, checkpoint_dir=tmp_path, stop_after_task=0)
    check(lambda: _train(stream2, b, checkpoint_dir=tmp_path), cl.checkpoint.ConfigMismatchError,
          "different configuration")


class _Opaque:
    """An object whose repr changes from process to process (it shows the address)."""


def test_a_strategy_that_cannot_be_described_is_not_checkpointed(stream2, tmp_path):
    opaque = _Opaque()
    s = cl.Consolidation(1.0, lambda m, st, t: {n: torch.ones_like(p) * (opaque is not None)
                                                for n, p in m.named_parameters()})
    check(lambda: _train(stream2, s, checkpoint_dir=tmp_path), ValueError, "cannot be described")
    check(lambda: _train(stream2, s, cache_dir=tmp_path), ValueError, "cannot be described")
    assert len(_train(stream2, s).acc) == 2  # without a checkpoint it trains


# checkpoints: damaged files and unusable folders, found before training

def _write_checkpoint_variant(folder: Path, variant: str, stream) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "checkpoint.pt"
    if variant in ("truncated", "empty"):
        _train(stream, cl.Naive(), checkpoint_dir=folder, stop_after_task=0)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3] if variant == "truncated" else b"")
    elif variant == "foreign state_dict":
        torch.save(_model(stream).state_dict(), path)
    elif variant == "foreign tensor":
        torch.save(torch.zeros(3), path)
    elif variant == "text file":
        path.write_text("not a checkpoint\n")
    elif variant == "pickled object":  # would run code on load if unpickled
        torch.save({"fingerprint": "0" * 16, "task": 0, "payload": _Opaque()}, path)


@pytest.mark.parametrize("variant, fragment", [("truncated", "is damaged"), ("empty", "is empty"),
                                               ("foreign state_dict", "is not a clutils checkpoint"),
                                               ("foreign tensor", "is not a clutils checkpoint"),
                                               ("text file", "is damaged"),
                                               ("pickled object", "holds Python objects other than tensors")])
def test_damaged_or_foreign_checkpoint_names_the_file(stream2, tmp_path, variant, fragment):
    _write_checkpoint_variant(tmp_path, variant, stream2)
    probe = _CountSteps()
    with pytest.raises(cl.checkpoint.CheckpointError) as err:
        _train(stream2, probe, checkpoint_dir=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "checkpoint.pt") in msg and fragment in msg and "delete" in msg.lower()
    assert probe.steps == 0


def test_checkpoint_folder_that_is_a_file_is_refused_before_training(stream2, tmp_path):
    target = tmp_path / "ckpt"
    target.write_text("I am a file")
    probe = _CountSteps()
    check(lambda: _train(stream2, probe, checkpoint_dir=target), NotADirectoryError, "is a file, not a folder")
    check(lambda: _train(stream2, probe, cache_dir=target), NotADirectoryError, "is a file, not a folder")
    assert probe.steps == 0


def _unwritable_folder(tmp_path: Path) -> Path:
    import os

    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o500)
        return folder / "run"
    sysfs = Path("/sys/clutils-hardening-probe")  # even root cannot create folders in sysfs
    if Path("/sys").is_dir():
        try:
            sysfs.mkdir()
        except OSError:
            return sysfs
        sysfs.rmdir()
    pytest.skip("no unwritable location on this machine (running as root without a read-only sysfs)")


def test_unwritable_checkpoint_folder_is_refused_before_training(stream2, tmp_path):
    folder = _unwritable_folder(tmp_path)
    probe = _CountSteps()
    check(lambda: _train(stream2, probe, checkpoint_dir=folder), PermissionError, "cannot write to")
    assert probe.steps == 0


# importance functions: inputs of the wrong width, dtype, labels, NaN

def _imp_inputs():
    torch.manual_seed(0)
    return cl.MLP(64, (8,), 5), torch.rand(20, 64), torch.randint(0, 5, (20,))


IMPORTANCE_ERRORS = {
    "wrong width": (lambda m, x, y: cl.mas_importance(m, x[:, :50]), ValueError,
                    "x has 50 features per sample but the model takes 64"),
    "float64 inputs": (lambda m, x, y: cl.fisher_diagonal(m, x.double()), TypeError,
                       "x is torch.float64 but the model's parameters are torch.float32"),
    "uint8 inputs": (lambda m, x, y: cl.mas_importance(m, (x * 255).to(torch.uint8)), TypeError,
                     "x is torch.uint8"),
    "labels out of range": (lambda m, x, y: cl.fisher_diagonal(m, x, y + 5, kind="empirical"), ValueError,
                            "labels must lie in [0, 5)"),
    "negative labels": (lambda m, x, y: cl.fisher_diagonal(m, x, y - 10, kind="empirical"), ValueError,
                        "labels must lie in [0, 5)"),
    "float labels": (lambda m, x, y: cl.fisher_diagonal(m, x, y.float(), kind="empirical"), TypeError,
                     "y must hold integer class labels"),
    "labels beyond n_active": (lambda m, x, y: cl.fisher_diagonal(m, x, y, kind="empirical", n_active=2),
                               ValueError, "labels must lie in [0, 2)"),
    "NaN pixels (MAS)": (lambda m, x, y: cl.mas_importance(m, x.index_fill(0, torch.tensor([3]), float("nan"))),
                         ValueError, "x holds 64 non-finite values (NaN or inf)"),
    "NaN pixels (Fisher)": (lambda m, x, y: cl.fisher_diagonal(m, x.index_fill(1, torch.tensor([0]), float("nan"))),
                            ValueError, "non-finite values"),
    "NaN pixels (neurons)": (lambda m, x, y: cl.neuron_importance(m, x.index_fill(1, torch.tensor([0]), float("inf"))),
                             ValueError, "non-finite values"),
    "wrong width (neurons)": (lambda m, x, y: cl.neuron_importance(m, x[:, :10]), ValueError,
                              "x has 10 features per sample but the model takes 64"),
    "chunk_size float": (lambda m, x, y: cl.mas_importance(m, x, chunk_size=10.5), TypeError,
                         "chunk_size must be an integer"),
}


@pytest.mark.parametrize("case", list(IMPORTANCE_ERRORS))
def test_importance_bad_inputs_are_clear_errors(case):
    call, exc, fragment = IMPORTANCE_ERRORS[case]
    check(lambda: call(*_imp_inputs()), exc, fragment)
