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
from clutils import data as cldata

MNIST_RAW = Path("/work/shared/data/MNIST/raw")


def _digits() -> cl.Dataset:
    return cl.load_dataset("digits")


def check(call: Callable[[], object], exc: type[BaseException], fragment: str) -> None:
    """``call()`` raises ``exc`` whose message contains ``fragment`` (literally)."""
    with pytest.raises(exc, match=re.escape(fragment)):
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
                               TypeError, "n_tasks must be an integer, got 2.5"),
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
    cldata._load_cpu.cache_clear()
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
    cldata._load_cpu.cache_clear()
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
