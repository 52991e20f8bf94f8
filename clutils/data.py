"""Datasets held in memory as tensors, and the task streams built from them.

Datasets: ``mnist`` and ``fashion_mnist`` (through torchvision) and ``digits``
(scikit-learn's embedded 8x8 handwritten digits; offline, for quick runs).

Streams: ``permuted`` (each task a fixed pixel permutation), ``split`` (consecutive
classes per task) and ``disjoint`` (any groups of classes), each in one of the
three scenarios of van de Ven & Tolias (2019):

* ``task``   -- task-incremental: task id known at test time, one head per task,
  labels renumbered inside each task;
* ``domain`` -- domain-incremental: one shared head, labels renumbered inside
  each task, task id not given;
* ``class``  -- class-incremental: one shared head over every class seen so far,
  no task id; the model must tell all classes apart.
"""
from __future__ import annotations

import functools
import inspect
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from ._checks import check_int, check_int_sequence, check_str

__all__ = [
    "DATASETS", "SCENARIOS", "STREAMS", "Dataset", "Task", "Stream", "data_root",
    "load_dataset", "permuted", "split", "disjoint", "make_stream",
]

DATASETS = ("mnist", "fashion_mnist", "digits")
SCENARIOS = ("task", "domain", "class")
STREAMS = ("permuted", "split", "disjoint")
ENV_VAR = "CLUTILS_DATA"


@dataclass
class Dataset:
    """A labelled image dataset as flat float tensors in [0, 1]."""

    name: str
    x_train: Tensor  # (N, D) float32
    y_train: Tensor  # (N,) int64
    x_test: Tensor
    y_test: Tensor
    image_shape: tuple[int, int]

    def __post_init__(self) -> None:
        for split_, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if not isinstance(x, Tensor) or not isinstance(y, Tensor):
                raise TypeError(f"Dataset {self.name!r}: x_{split_} and y_{split_} must be torch tensors, got "
                                f"{type(x).__name__} and {type(y).__name__}.")
            if x.ndim != 2 or not x.is_floating_point():
                raise ValueError(f"Dataset {self.name!r}: x_{split_} must be a float tensor of shape (N, features), "
                                 f"got {x.dtype} of shape {tuple(x.shape)}; flatten the images and scale them to [0, 1].")
            if y.ndim != 1 or y.dtype != torch.int64:
                raise ValueError(f"Dataset {self.name!r}: y_{split_} must be an int64 tensor of shape (N,), got "
                                 f"{y.dtype} of shape {tuple(y.shape)}; convert it with y.long().")
            if len(x) != len(y):
                raise ValueError(f"Dataset {self.name!r}: x_{split_} has {len(x)} rows but y_{split_} {len(y)} labels.")
        if self.x_train.shape[1] != self.x_test.shape[1]:
            raise ValueError(f"Dataset {self.name!r}: train images have {self.x_train.shape[1]} features, "
                             f"test images {self.x_test.shape[1]}.")

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def classes(self) -> list[int]:
        return sorted(int(c) for c in torch.unique(self.y_train))

    def to(self, device: str | torch.device) -> "Dataset":
        return Dataset(self.name, self.x_train.to(device), self.y_train.to(device),
                       self.x_test.to(device), self.y_test.to(device), self.image_shape)

    def clone(self) -> "Dataset":
        """A copy whose tensors share no memory with this one."""
        return Dataset(self.name, self.x_train.clone(), self.y_train.clone(), self.x_test.clone(),
                       self.y_test.clone(), self.image_shape)


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Where datasets live: ``root`` if given, else ``$CLUTILS_DATA``, else ``~/.cache/clutils``."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clutils"


def _check_name(name: str, allowed: Sequence[str], what: str) -> str:
    key = check_str(name, what, allowed).lower().replace("-", "_")
    if key not in allowed:
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(allowed)}.")
    return key


@functools.lru_cache(maxsize=4)
def _load_cpu(name: str, root: str) -> Dataset:
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        x = torch.tensor(d.data, dtype=torch.float32) / 16.0
        y = torch.tensor(d.target, dtype=torch.int64)
        # fixed stratified-by-chance split: 1/4 of the images for testing
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        n_test = len(y) // 4
        te, tr = perm[:n_test], perm[n_test:]
        return Dataset("digits", x[tr], y[tr], x[te], y[te], (8, 8))

    import torchvision

    cls = {"mnist": torchvision.datasets.MNIST, "fashion_mnist": torchvision.datasets.FashionMNIST}[name]
    raw = Path(root) / cls.__name__ / "raw"
    _check_idx_files(raw, [Path(url).name.removesuffix(".gz") for url, _ in cls.resources])
    created = [d for d in (Path(root), raw.parent, raw) if not d.exists()]
    parts = []
    for train in (True, False):
        try:
            ds = cls(root=root, train=train, download=False)
        except RuntimeError:
            try:
                ds = cls(root=root, train=train, download=True)
            except Exception as err:  # no network, blocked host, ...
                _remove_empty(created)
                raise FileNotFoundError(
                    f"{name} is not under {raw} and could not be downloaded "
                    f"({type(err).__name__}: {err}). Point clutils at a folder that holds it "
                    f"(load_dataset({name!r}, root=...) or the {ENV_VAR} environment variable), "
                    f"connect to the network, or use the offline dataset 'digits'."
                ) from None
            _check_idx_files(raw, [Path(url).name.removesuffix(".gz") for url, _ in cls.resources])
        x = ds.data.reshape(len(ds.data), -1).to(torch.float32) / 255.0
        parts += [x, ds.targets.to(torch.int64)]
    return Dataset(name, *parts, image_shape=(28, 28))


def _check_idx_files(folder: Path, names: Sequence[str]) -> None:
    """Refuse a corrupted or truncated IDX file (MNIST's format) before torchvision reads it.

    An IDX file is a 4-byte magic number ``0 0 type ndim``, then ``ndim`` big-endian uint32 sizes,
    then ``prod(sizes)`` items; MNIST's are unsigned bytes (type ``0x08``), so the file must hold
    exactly ``4 + 4 * ndim + prod(sizes)`` bytes.
    """
    for fname in names:
        path = folder / fname
        if not path.is_file():
            continue  # missing files are torchvision's to download
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4)
            problem = None
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08 or head[3] not in (1, 3):
                problem = f"its header {head.hex() or '(empty)'} is not an IDX header of unsigned bytes (00000801 or 00000803)"
            else:
                dims = f.read(4 * head[3])
                if len(dims) < 4 * head[3]:
                    problem = f"it ends inside its header ({size} bytes)"
                else:
                    shape = [int.from_bytes(dims[i:i + 4], "big") for i in range(0, len(dims), 4)]
                    expected = 4 + 4 * head[3] + math.prod(shape)
                    if size != expected:
                        problem = (f"its header announces {'x'.join(map(str, shape))} bytes of data, so "
                                   f"{expected} bytes in all, but it holds {size} (truncated or corrupted)")
        if problem:
            raise ValueError(f"{path} is corrupted: {problem}. Delete it (and its .gz if there is one) and load "
                             f"the dataset again to re-download it, or copy an intact file there.")


def _remove_empty(folders: Sequence[Path]) -> None:
    """Remove the folders a failed download created, deepest first, if they are still empty."""
    for d in reversed(folders):
        try:
            d.rmdir()
        except OSError:
            pass  # not empty (a partial download the user may want to see) or already gone


def load_dataset(name: str, root: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Dataset:
    """Load ``mnist``, ``fashion_mnist`` or ``digits`` into float tensors on ``device``.

    The data root is ``root``, else ``$CLUTILS_DATA``, else ``~/.cache/clutils``;
    torchvision downloads MNIST there when it is missing and the network allows.
    Files are read once per process; every call returns its own copy of the tensors, so
    changing them in place (``d.x_train -= mean``) never reaches another caller.
    ``device="auto"`` means CUDA when available, else the CPU.
    """
    key = _check_name(name, DATASETS, "dataset")
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a folder path (str or Path), got {root!r} ({type(root).__name__}).")
    dev = _resolve_device(device)
    cached = _load_cpu(key, str(data_root(root)))
    # a copy on the CPU is a memcpy (MNIST: 0.2 GB in ~0.1 s); moving to another device copies anyway
    return cached.clone() if dev.type == "cpu" else cached.to(dev)


def _resolve_device(device: str | torch.device) -> torch.device:
    from .training import resolve_device  # training imports this module; resolve lazily

    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a string such as 'cpu', 'cuda' or 'auto', or a torch.device; "
                        f"got {device!r} ({type(device).__name__}).")
    return resolve_device(device)


@dataclass
class Task:
    """One task of a stream.  ``y_*`` are the targets as the model sees them."""

    id: int
    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    classes: tuple[int, ...]  # original dataset classes in this task

    @property
    def n_train(self) -> int:
        return len(self.y_train)


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
        tasks = [Task(t.id, t.name, t.x_train.to(device), t.y_train.to(device), t.x_test.to(device),
                      t.y_test.to(device), t.classes) for t in self.tasks]
        return Stream(self.name, self.scenario, tasks, self.n_features, self.n_outputs, self.n_heads, dict(self.description))


def _relabel(y: Tensor, classes: Sequence[int], offset: int) -> Tensor:
    lut = torch.full((int(max(classes)) + 1,), -1, dtype=torch.int64, device=y.device)
    lut[torch.tensor(list(classes), device=y.device)] = torch.arange(len(classes), device=y.device) + offset
    return lut[y]


def _class_stream(ds: Dataset, groups: Sequence[Sequence[int]], scenario: str, name: str) -> Stream:
    scenario = _check_name(scenario, SCENARIOS, "scenario")
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
                   "scenario": scenario})


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


def permutations(n_tasks: int, n_features: int, seed: int = 0, first_unpermuted: bool = False) -> list[Tensor]:
    """``n_tasks`` seeded pixel permutations (the first the identity if asked)."""
    g = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(n_features, generator=g) for _ in range(n_tasks)]
    if first_unpermuted and n_tasks:
        perms[0] = torch.arange(n_features)
    return perms


def permuted(ds: Dataset, n_tasks: int = 10, seed: int = 0, first_unpermuted: bool = False,
             scenario: str = "domain") -> Stream:
    """Permuted-pixel tasks: task t sees every image with its pixels shuffled by permutation t."""
    scenario = _check_name(scenario, SCENARIOS, "scenario")
    if n_tasks < 1:
        raise ValueError(f"a stream needs at least one task; got n_tasks={n_tasks}.")
    n_cls = len(ds.classes)
    tasks = []
    for t, p in enumerate(permutations(n_tasks, ds.n_features, seed, first_unpermuted)):
        p = p.to(ds.x_train.device)
        off = t * n_cls if scenario == "class" else 0
        tasks.append(Task(t, f"perm{t}", ds.x_train[:, p], ds.y_train + off, ds.x_test[:, p], ds.y_test + off,
                          tuple(ds.classes)))
    n_out = n_cls * n_tasks if scenario == "class" else n_cls
    return Stream("permuted", scenario, tasks, ds.n_features, n_out, n_tasks if scenario == "task" else 1,
                  {"stream": "permuted", "dataset": ds.name, "n_tasks": n_tasks, "seed": seed,
                   "first_unpermuted": first_unpermuted, "scenario": scenario})


def make_stream(kind: str, dataset: str | Dataset = "mnist", *, scenario: str | None = None,
                root: str | os.PathLike | None = None, device: str | torch.device | None = None, **kwargs) -> Stream:
    """Build a stream by name: ``make_stream("split", "mnist", scenario="class")``.

    ``kwargs`` go to :func:`permuted`, :func:`split` or :func:`disjoint`.  Names are
    checked before any data is loaded.  ``device=None`` keeps a given ``Dataset`` where
    it is (a name is loaded on the CPU).
    """
    kind = _check_name(kind, STREAMS, "stream")
    build = {"permuted": permuted, "split": split, "disjoint": disjoint}[kind]
    accepted = [k for k in inspect.signature(build).parameters if k != "ds"]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"make_stream({kind!r}) got unknown argument(s) {unknown}; a {kind} stream takes "
                        f"{', '.join(accepted)}.")
    if scenario is not None:
        kwargs["scenario"] = _check_name(scenario, SCENARIOS, "scenario")
    if kind == "permuted":
        for arg in ("n_tasks", "seed"):
            if arg in kwargs:
                check_int(kwargs[arg], arg)
        if kwargs.get("n_tasks", 10) < 1:
            raise ValueError(f"a stream needs at least one task; got n_tasks={kwargs['n_tasks']}.")
    if kind == "disjoint":
        if kwargs.get("groups") is None or (isinstance(kwargs["groups"], Sequence) and len(kwargs["groups"]) == 0):
            raise ValueError("a disjoint stream needs groups=[[...], [...]] of classes, one list per task.")
        _check_groups(kwargs["groups"])
    if kind == "split":
        check_int(kwargs.get("classes_per_task", 2), "classes_per_task")
        if kwargs.get("order") is not None:
            check_int_sequence(kwargs["order"], "order", example="[3, 1, 0, 2]")
    if isinstance(dataset, Dataset):
        ds = dataset if device is None else dataset.to(_resolve_device(device))
    elif isinstance(dataset, str):
        ds = load_dataset(dataset, root=root, device="cpu" if device is None else device)
    else:
        raise TypeError(f"dataset must be a name ({', '.join(DATASETS)}) or a Dataset, got {dataset!r} "
                        f"({type(dataset).__name__}).")
    return build(ds, **kwargs)
