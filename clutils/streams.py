"""Task streams built from a :class:`~clutils.datasets.Dataset`: ``permuted`` (each task a fixed
pixel permutation), ``split`` (consecutive classes per task) and ``disjoint`` (any groups of
classes), each in one of the three scenarios of van de Ven & Tolias (2019):

* ``task``   -- task-incremental: task id known at test time, one head per task,
  labels renumbered inside each task;
* ``domain`` -- domain-incremental: one shared head, labels renumbered inside
  each task, task id not given;
* ``class``  -- class-incremental: one shared head over every class seen so far,
  no task id; the model must tell all classes apart.

A stream knows what it holds: :meth:`Stream.digest` is a digest of every task's tensors, which is
what a run's fingerprint sees (never only its name).
"""
from __future__ import annotations

import hashlib
import inspect
import os
import sys
import threading
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from ._checks import check_int, check_int_sequence, check_name, resolve_device
from ._digest import tensor_digest
from .datasets import DATASETS, Dataset, load_dataset

__all__ = ["SCENARIOS", "STREAMS", "Task", "Stream", "permuted", "split", "disjoint", "make_stream", "hold_out",
           "permutations"]

SCENARIOS = ("task", "domain", "class")
STREAMS = ("permuted", "split", "disjoint")


# Permuted evaluation sets kept per stream: evaluating T tasks after every task would otherwise permute
# each test (and validation) set again T times.  Within this budget every task's evaluation copy is
# built once and kept; the sets beyond it (a long stream) are permuted at each evaluation into one
# reused buffer, so memory stays bounded whatever the number of tasks.  512 MiB holds the test and
# validation sets of a 10-task permuted MNIST stream (10 x (31.4 + 18.8) MB).
EVAL_MEMO_BYTES = 512 << 20


def _unshared(t: Tensor, names: int) -> bool:
    """``t`` is held by ``names`` Python references and nothing else: no other name, no view of its
    memory (then writing into it cannot change a tensor anyone else reads)."""
    use_count = getattr(torch._C, "_storage_Use_Count", None)
    if use_count is None:  # a PyTorch without it: never reuse
        return False
    # +2: this function's parameter and getrefcount's own argument; on the storage side, +1: the
    # temporary untyped_storage() object
    return sys.getrefcount(t) <= names + 2 and use_count(t.untyped_storage()._cdata) <= 2


class _Memo:
    """Permuted tensors shared by the tasks of one stream, computed when first read.

    * ``train``: one slot, the task being trained (the trainer may read it more than once).  The
      next task's permuted training set is written into the same memory when nothing else holds
      the old one (no name, no view): a fresh 188 MB tensor per MNIST task would cost more in page
      faults than the permutation itself (~95 ms against ~45 ms on one CPU thread).
    * ``test`` / ``val``: one copy per task, kept once built while they fit in
      :data:`EVAL_MEMO_BYTES` (first come, first kept: evaluation reads the tasks in the same order
      every time, and evicting the oldest would make every read miss once the stream outgrows the
      budget); a set beyond the budget is permuted at each read into one reused buffer per split.

    Reading is guarded by a lock (threads of a sweep may share a stream).  Never pickled (a worker
    rebuilds it).
    """

    def __init__(self, budget: int | None = None) -> None:
        self.slots: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}  # kept: (base, perm, out)
        self.scratch: dict[str, tuple[Tensor, Tensor, Tensor]] = {}  # the latest read per split, not kept
        self.budget = EVAL_MEMO_BYTES if budget is None else budget
        self.lock = threading.Lock()

    def get(self, split: str, base: Tensor, perm: Tensor) -> Tensor:
        key = (split,) if split == "train" else (split, id(perm))
        hit = self.slots.get(key) or self.scratch.get(split)  # one read each: safe without the lock
        if hit is not None and hit[0] is base and hit[1] is perm:
            return hit[2]
        del hit  # a stale slot's tensor must not be held here: its memory may be reused
        with self.lock:
            return self._build(split, key, base, perm)

    def used(self) -> int:
        """Bytes held by the kept evaluation copies (the training slot and the scratch buffers aside)."""
        return sum(o.numel() * o.element_size() for k, (_, _, o) in self.slots.items() if k[0] != "train")

    def _build(self, split: str, key: tuple, base: Tensor, perm: Tensor) -> Tensor:
        size = base.shape[0] * perm.numel() * base.element_size()
        keep = split == "train" or self.used() + size <= self.budget
        old = self.slots.pop(key, None) if split == "train" else (None if keep else self.scratch.pop(split, None))
        spare = None
        if old is not None and old[2].shape == (base.shape[0], perm.numel()) and old[2].dtype == base.dtype \
                and old[2].device == base.device:
            spare = old[2]
            old = None  # the tuple's reference gone: ``spare`` is the one name left here
            if not _unshared(spare, 1):
                spare = None
        # a normal tensor even when first read inside torch.inference_mode() (evaluation):
        # an inference tensor could not be used later by code that needs autograd
        with torch.inference_mode(False), torch.no_grad():
            if spare is not None:
                out = torch.index_select(base, 1, perm, out=spare)  # == base[:, perm], memory reused
            else:
                out = torch.index_select(base, 1, perm)  # == base[:, perm], ~2.7x faster than indexing
        if keep:
            self.slots[key] = (base, perm, out)
        else:
            self.scratch[split] = (base, perm, out)
        return out

    def __getstate__(self) -> dict:
        return {"slots": {}, "scratch": {}, "budget": self.budget}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.lock = threading.Lock()


class Task:
    r"""One task of a stream.  ``y_*`` are the targets as the model sees them.

    A task either holds its images (``perm is None``) or, in a permuted stream, the
    *unpermuted* images shared by every task plus its pixel permutation :math:`\pi_t`:
    ``task.x_train`` is then :math:`x^{(t)}_{n,d} = x_{n,\pi_t(d)}`, i.e. ``base[:, perm]``,
    computed when read (the last one read is kept, one per split, for the whole stream).
    Likewise ``label_offset`` :math:`o_t` gives ``y = base_y + o_t`` (class-incremental
    permuted streams) without a copy of the labels per task.  Either way ``x_train``,
    ``y_train``, ``x_test`` and ``y_test`` are plain tensors.
    """

    def __init__(self, id: int, name: str, x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor,
                 classes: tuple[int, ...], perm: Tensor | None = None, label_offset: int = 0,
                 memo: _Memo | None = None, x_val: Tensor | None = None, y_val: Tensor | None = None) -> None:
        self.id = id
        self.name = name
        self.classes = tuple(classes)  # original dataset classes in this task
        self.perm = perm
        self.label_offset = int(label_offset)
        self._x = {"train": x_train, "test": x_test}
        self._y = {"train": y_train, "test": y_test}
        if (x_val is None) != (y_val is None):
            raise ValueError("give both x_val and y_val, or neither.")
        if x_val is not None:
            self._x["val"], self._y["val"] = x_val, y_val
        self._memo = memo if memo is not None else _Memo()

    def _images(self, split: str) -> Tensor:
        base = self._x[split]
        return base if self.perm is None else self._memo.get(split, base, self.perm)

    def _labels(self, split: str) -> Tensor:
        base = self._y[split]
        return base if self.label_offset == 0 else base + self.label_offset

    x_train = property(lambda self: self._images("train"), doc="(N, D) training images of this task.")
    x_test = property(lambda self: self._images("test"), doc="(N, D) test images of this task.")
    y_train = property(lambda self: self._labels("train"), doc="(N,) training targets of this task.")
    y_test = property(lambda self: self._labels("test"), doc="(N,) test targets of this task.")
    x_val = property(lambda self: self._images("val") if "val" in self._x else None,
                     doc="(N, D) validation images held out of the training set (None without a validation split).")
    y_val = property(lambda self: self._labels("val") if "val" in self._y else None,
                     doc="(N,) validation targets (None without a validation split).")

    @property
    def has_val(self) -> bool:
        return "val" in self._x

    def split(self, which: str) -> tuple[Tensor, Tensor]:
        """``(x, y)`` of ``"train"``, ``"val"`` or ``"test"``."""
        if which not in self._x:
            raise ValueError(f"task {self.name} has no {which!r} split"
                             + ("; build the stream with make_stream(..., val_fraction=0.1)." if which == "val" else "."))
        return self._images(which), self._labels(which)

    @property
    def n_train(self) -> int:
        return len(self._y["train"])

    @property
    def device(self) -> torch.device:
        return self._x["train"].device

    def digest(self) -> str:
        """A digest of what this task holds: its images and labels of every split, its permutation and
        label offset, its classes.  Two tasks that differ in one pixel or one label differ here."""
        parts = [self.name, repr(self.classes), str(self.label_offset),
                 "none" if self.perm is None else tensor_digest(self.perm)]
        for split_ in sorted(self._x):
            parts += [split_, tensor_digest(self._x[split_]), tensor_digest(self._y[split_])]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    def stored(self) -> list[Tensor]:
        """The tensors this task holds (shared images and labels included; nothing computed)."""
        out = [*self._x.values(), *self._y.values()]
        return out if self.perm is None else out + [self.perm]

    def to(self, device: str | torch.device, moved: dict[int, Tensor] | None = None,
           memo: _Memo | None = None) -> "Task":
        """This task on ``device``; ``moved`` maps ``id(tensor)`` to its copy so shared tensors move once."""
        moved = {} if moved is None else moved

        def mv(x: Tensor) -> Tensor:
            if id(x) not in moved:
                moved[id(x)] = x.to(device)
            return moved[id(x)]

        val = (mv(self._x["val"]), mv(self._y["val"])) if self.has_val else (None, None)
        return Task(self.id, self.name, mv(self._x["train"]), mv(self._y["train"]), mv(self._x["test"]),
                    mv(self._y["test"]), self.classes, None if self.perm is None else mv(self.perm),
                    self.label_offset, memo, *val)

    def __repr__(self) -> str:
        kind = "" if self.perm is None else ", permuted"
        return f"Task(id={self.id}, name={self.name!r}, n_train={self.n_train}, classes={self.classes}{kind})"


@dataclass
class Stream:
    """A sequence of tasks in one scenario, with what a model needs to know about it."""

    name: str
    scenario: str
    tasks: list[Task]
    n_features: int
    n_outputs: int  # outputs of each head
    n_heads: int
    description: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self):
        return iter(self.tasks)

    def __getitem__(self, i: int) -> Task:
        return self.tasks[i]

    def head_of(self, task: int) -> int:
        """Which head answers for ``task`` (its own in task-incremental, else 0)."""
        return task if self.scenario == "task" else 0

    def active_outputs(self, task: int) -> int:
        """Outputs in play after training ``task``: all classes seen so far (class-incremental)."""
        if self.scenario != "class":
            return self.n_outputs
        return sum(len(set(t.y_train.unique().tolist())) for t in self.tasks[: task + 1])

    def to(self, device: str | torch.device) -> "Stream":
        """The stream on ``device``; tensors shared between tasks (a permuted stream's images) move once."""
        moved: dict[int, Tensor] = {}
        memo = _Memo()
        tasks = [t.to(device, moved, memo) for t in self.tasks]
        return Stream(self.name, self.scenario, tasks, self.n_features, self.n_outputs, self.n_heads, dict(self.description))

    def check_splits(self) -> "Stream":
        """Refuse a task whose training, test or validation split is empty (its accuracy would be 0/0 = NaN)."""
        for t in self.tasks:
            for split_ in t._y:
                if len(t._y[split_]) == 0:
                    fix = ("use a larger val_fraction (every class needs round(fraction * its count) >= 1 image)"
                           if split_ == "val" else "give every task images of its classes in that split")
                    raise ValueError(f"task {t.id} ({t.name}) of the {self.name} stream has no {split_} examples: "
                                     f"its accuracy would be NaN. {fix[0].upper() + fix[1:]}.")
        return self

    def digest(self) -> str:
        """A digest of the stream's content: scenario, heads, outputs and every task's :meth:`Task.digest`
        (each tensor is hashed once, then remembered until it changes in place)."""
        parts = [self.scenario, str(self.n_heads), str(self.n_outputs), str(self.n_features),
                 *(t.digest() for t in self.tasks)]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]

    @property
    def has_val(self) -> bool:
        """Every task holds a validation split (``make_stream(..., val_fraction=...)``)."""
        return all(t.has_val for t in self.tasks)

    def storage_bytes(self) -> int:
        """Bytes of the distinct tensor storages the tasks hold (shared images counted once, cached copies not)."""
        seen: dict[tuple, int] = {}
        for t in self.tasks:
            for x in t.stored():
                st = x.untyped_storage()
                seen[(x.device.type, x.device.index, st.data_ptr())] = st.nbytes()
        return sum(seen.values())


def _relabel(y: Tensor, classes: Sequence[int], offset: int) -> Tensor:
    lut = torch.full((int(max(classes)) + 1,), -1, dtype=torch.int64, device=y.device)
    lut[torch.tensor(list(classes), device=y.device)] = torch.arange(len(classes), device=y.device) + offset
    return lut[y]


def _class_stream(ds: Dataset, groups: Sequence[Sequence[int]], scenario: str, name: str) -> Stream:
    scenario = check_name(scenario, SCENARIOS, "scenario")
    groups = _check_groups(groups)
    if len(groups) == 0:
        raise ValueError("a stream needs at least one task; got zero class groups.")
    known = set(ds.classes)
    seen: set[int] = set()
    for g in groups:
        if len(g) == 0:
            raise ValueError(f"empty class group in {groups}; every task needs a class.")
        twice = sorted({c for c in g if g.count(c) > 1})
        if twice:
            raise ValueError(f"class group {g} lists classes {twice} more than once; list each class once "
                             f"(a repeated class would leave an output no example ever trains).")
        bad = [c for c in g if c not in known]
        if bad:
            raise ValueError(f"classes {bad} do not exist in {ds.name} (its classes are {sorted(known)}).")
        dup = seen.intersection(g)
        if dup:
            raise ValueError(f"classes {sorted(dup)} appear in more than one task; groups must be disjoint.")
        seen.update(g)
    tasks, offset = [], 0
    for t, g in enumerate(groups):
        g = tuple(int(c) for c in g)
        cls_t = torch.tensor(g, device=ds.y_train.device)
        tr = torch.isin(ds.y_train, cls_t)
        te = torch.isin(ds.y_test, cls_t)
        off = offset if scenario == "class" else 0
        tasks.append(Task(t, "{" + ",".join(map(str, g)) + "}", ds.x_train[tr], _relabel(ds.y_train[tr], g, off),
                          ds.x_test[te], _relabel(ds.y_test[te], g, off), g))
        offset += len(g)
    n_out = offset if scenario == "class" else max(len(g) for g in groups)
    return Stream(name, scenario, tasks, ds.n_features, n_out, len(groups) if scenario == "task" else 1,
                  {"stream": name, "dataset": ds.name, "groups": [list(map(int, g)) for g in groups],
                   "scenario": scenario}).check_splits()


def _check_groups(groups: Sequence[Sequence[int]]) -> list[list[int]]:
    """``groups`` as a list of lists of ints, or a ``TypeError`` that shows the expected shape."""
    example = "[[0, 1], [2, 3]]"
    if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence):
        raise TypeError(f"groups must be a list of class lists, one per task, such as {example}; got {groups!r}.")
    out = []
    for g in groups:
        if isinstance(g, (str, bytes)) or not isinstance(g, (Sequence, Tensor)):
            raise TypeError(f"groups must be a list of class lists, one per task, such as {example}; "
                            f"got the entry {g!r} in {groups!r}.")
        out.append([check_int(c, "every class in groups") for c in g])
    return out


def split(ds: Dataset, classes_per_task: int = 2, scenario: str = "task",
          order: Sequence[int] | None = None) -> Stream:
    """Split a dataset into tasks of ``classes_per_task`` consecutive classes of ``order``.

    ``order`` (default: every class, ascending) lists each class at most once; a subset is allowed.
    """
    classes_per_task = check_int(classes_per_task, "classes_per_task")
    order = ds.classes if order is None else check_int_sequence(order, "order", example="[3, 1, 0, 2]")
    twice = sorted({c for c in order if order.count(c) > 1})
    if twice:
        missing = sorted(set(ds.classes) - set(order))
        raise ValueError(f"order lists classes {twice} more than once"
                         + (f" (and leaves out {missing})" if missing else "")
                         + "; list each class once.")
    if classes_per_task < 1 or len(order) % classes_per_task:
        raise ValueError(f"cannot split {len(order)} classes into tasks of {classes_per_task}; "
                         f"choose a divisor of {len(order)}.")
    groups = [order[i:i + classes_per_task] for i in range(0, len(order), classes_per_task)]
    return _class_stream(ds, groups, scenario, "split")


def disjoint(ds: Dataset, groups: Sequence[Sequence[int]], scenario: str = "class") -> Stream:
    """Tasks made of arbitrary disjoint class groups, e.g. ``[[0,1,2],[4,5,6],[7,8,9]]``."""
    return _class_stream(ds, groups, scenario, "disjoint")


# Bound on a permuted stream's length.  The trainer evaluates every task after each task, so T tasks
# cost T(T+1)/2 test-set passes (5e7 at T = 1e4), a class-incremental stream needs 10 T outputs and a
# task-incremental one T heads: beyond 10_000 tasks no run finishes, it only exhausts memory.
MAX_PERMUTED_TASKS = 10_000
# and the permutations themselves (int64, T x D) may take at most this many bytes
MAX_PERMUTATION_BYTES = 1 << 30


def _check_n_tasks(n_tasks: int, n_features: int | None = None) -> int:
    """Refuse a task count that is not an int in [1, MAX_PERMUTED_TASKS], before anything is allocated."""
    n_tasks = check_int(n_tasks, "n_tasks (e.g. n_tasks=10)")
    if n_tasks < 1:
        raise ValueError(f"a stream needs at least one task; got n_tasks={n_tasks}.")
    if n_tasks > MAX_PERMUTED_TASKS:
        raise ValueError(f"n_tasks={n_tasks} is more than clutils allows for a permuted stream "
                         f"({MAX_PERMUTED_TASKS}): evaluating every task after each task would take "
                         f"{n_tasks * (n_tasks + 1) // 2:.2e} test-set passes. Use at most {MAX_PERMUTED_TASKS} tasks.")
    if n_features is not None and n_tasks * n_features * 8 > MAX_PERMUTATION_BYTES:
        raise ValueError(f"{n_tasks} permutations of {n_features} pixels would take "
                         f"{n_tasks * n_features * 8 / 2**30:.1f} GiB (limit {MAX_PERMUTATION_BYTES / 2**30:.0f} GiB); "
                         f"use fewer tasks (at most {MAX_PERMUTATION_BYTES // (8 * n_features)}).")
    return n_tasks


def permutations(n_tasks: int, n_features: int, seed: int = 0, first_unpermuted: bool = False) -> list[Tensor]:
    """``n_tasks`` seeded pixel permutations (the first the identity if asked); ``n_tasks`` is bounded as in :func:`permuted`."""
    n_tasks = _check_n_tasks(n_tasks, n_features)
    g = torch.Generator().manual_seed(check_int(seed, "seed"))
    perms = [torch.randperm(n_features, generator=g) for _ in range(n_tasks)]
    if first_unpermuted and n_tasks:
        perms[0] = torch.arange(n_features)
    return perms


def permuted(ds: Dataset, n_tasks: int = 10, seed: int = 0, first_unpermuted: bool = False,
             scenario: str = "domain") -> Stream:
    r"""Permuted-pixel tasks: task t sees every image with its pixels shuffled by permutation :math:`\pi_t`.

    The stream stores the images once plus one permutation per task
    (:math:`T \cdot D` int64 values): task t's images :math:`x_{n,\pi_t(d)}` are computed when
    read (see :class:`Task`), so memory is flat in the number of tasks and the results are those
    of one permuted copy per task, bit for bit.  ``n_tasks`` may be at most
    :data:`MAX_PERMUTED_TASKS`; a larger value is refused before anything is allocated.
    """
    scenario = check_name(scenario, SCENARIOS, "scenario")
    n_tasks, seed = _check_n_tasks(n_tasks, ds.n_features), check_int(seed, "seed")
    n_cls = len(ds.classes)
    if ds.classes != list(range(n_cls)) or any(int(c) not in range(n_cls) for c in torch.unique(ds.y_test)):
        raise ValueError(f"a permuted stream keeps the data set's labels, which must be 0..{n_cls - 1} for its "
                         f"{n_cls} classes; {ds.name!r} has classes {ds.classes[:10]} (test labels "
                         f"{sorted(int(c) for c in torch.unique(ds.y_test))[:10]}). Relabel them (e.g. with "
                         f"torch.unique(y, return_inverse=True)) or use a split / disjoint stream, which renumbers.")
    memo = _Memo()
    tasks = []
    for t, p in enumerate(permutations(n_tasks, ds.n_features, seed, first_unpermuted)):
        p = p.to(ds.x_train.device)
        off = t * n_cls if scenario == "class" else 0
        tasks.append(Task(t, f"perm{t}", ds.x_train, ds.y_train, ds.x_test, ds.y_test, tuple(ds.classes),
                          perm=p, label_offset=off, memo=memo))
    n_out = n_cls * n_tasks if scenario == "class" else n_cls
    return Stream("permuted", scenario, tasks, ds.n_features, n_out, n_tasks if scenario == "task" else 1,
                  {"stream": "permuted", "dataset": ds.name, "n_tasks": n_tasks, "seed": seed,
                   "first_unpermuted": first_unpermuted, "scenario": scenario})


def _stratified_holdout(y: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """``(train_idx, val_idx)``: ``round(fraction * n_c)`` seeded random samples of every class ``c`` held out."""
    g = torch.Generator().manual_seed(int(seed))
    y_cpu = y.cpu()
    val = []
    for c in torch.unique(y_cpu).tolist():  # one draw per class, not per sample
        idx = (y_cpu == c).nonzero().squeeze(1)
        val.append(idx[torch.randperm(len(idx), generator=g)[: round(fraction * len(idx))]])
    keep = torch.ones(len(y_cpu), dtype=torch.bool)
    val_idx = torch.cat(val).sort().values
    keep[val_idx] = False
    return keep.nonzero().squeeze(1).to(y.device), val_idx.to(y.device)


def hold_out(stream: Stream, fraction: float, seed: int = 0) -> Stream:
    """The stream with a seeded, class-stratified ``fraction`` of each task's training set held out as ``x_val, y_val``.

    Validation images are never trained on; hyper-parameters are chosen on them, and the test
    sets are used once, for the chosen setting.  In a permuted stream every task holds out the
    same images (the split is made once on the shared images, so memory stays flat).
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ValueError(f"val_fraction must be a number in (0, 1), e.g. 0.1; got {fraction!r}.")
    if stream.has_val:
        raise ValueError("the stream already holds a validation split.")
    splits: dict[int, tuple[Tensor, Tensor, Tensor, Tensor]] = {}  # shared images are split once
    tasks = []
    for t in stream:
        xb, yb = t._x["train"], t._y["train"]
        if id(xb) not in splits:
            tr, va = _stratified_holdout(yb, fraction, seed)
            splits[id(xb)] = (xb[tr], yb[tr], xb[va], yb[va])
        x_tr, y_tr, x_va, y_va = splits[id(xb)]
        tasks.append(Task(t.id, t.name, x_tr, y_tr, t._x["test"], t._y["test"], t.classes, t.perm,
                          t.label_offset, t._memo, x_va, y_va))
    return Stream(stream.name, stream.scenario, tasks, stream.n_features, stream.n_outputs, stream.n_heads,
                  {**stream.description, "val_fraction": float(fraction), "val_seed": int(seed)}).check_splits()


def make_stream(kind: str, dataset: str | Dataset = "mnist", *, scenario: str | None = None,
                root: str | os.PathLike | None = None, device: str | torch.device | None = None,
                val_fraction: float = 0.0, val_seed: int = 0, **kwargs) -> Stream:
    """Build a stream by name: ``make_stream("split", "mnist", scenario="class")``.

    ``kwargs`` go to :func:`permuted`, :func:`split` or :func:`disjoint`.  Names are
    checked before any data is loaded.  ``device=None`` keeps a given ``Dataset`` where
    it is (a name is loaded on the CPU).  ``val_fraction > 0`` holds out that fraction of
    every task's training set for validation (:func:`hold_out`, seeded by ``val_seed``).
    """
    if val_fraction:
        stream = make_stream(kind, dataset, scenario=scenario, root=root, device=device, **kwargs)
        return hold_out(stream, val_fraction, val_seed)
    kind = check_name(kind, STREAMS, "stream")
    build = {"permuted": permuted, "split": split, "disjoint": disjoint}[kind]
    accepted = [k for k in inspect.signature(build).parameters if k != "ds"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"make_stream({kind!r}) got unknown argument(s) {unknown}; a {kind} stream takes "
                        f"{', '.join(accepted)}.")
    if scenario is not None:
        kwargs["scenario"] = check_name(scenario, SCENARIOS, "scenario")
    if kind == "permuted":
        _check_n_tasks(kwargs.get("n_tasks", 10))  # before any data is loaded
        if "seed" in kwargs:
            check_int(kwargs["seed"], "seed")
    if kind == "disjoint":
        if kwargs.get("groups") is None or (isinstance(kwargs["groups"], Sequence) and len(kwargs["groups"]) == 0):
            raise ValueError("a disjoint stream needs groups=[[...], [...]] of classes, one list per task.")
        _check_groups(kwargs["groups"])
    if kind == "split":
        check_int(kwargs.get("classes_per_task", 2), "classes_per_task")
        if kwargs.get("order") is not None:
            check_int_sequence(kwargs["order"], "order", example="[3, 1, 0, 2]")
    if isinstance(dataset, Dataset):
        ds = dataset if device is None else dataset.to(resolve_device(device))
    elif isinstance(dataset, str):
        ds = load_dataset(dataset, root=root, device="cpu" if device is None else device)
    else:
        raise TypeError(f"dataset must be a name ({', '.join(DATASETS)}) or a Dataset, got {dataset!r} "
                        f"({type(dataset).__name__}).")
    return build(ds, **kwargs)
