"""Datasets held in memory as flat float tensors: ``mnist`` and ``fashion_mnist`` (through
torchvision, read from the data root and checked byte by byte) and ``digits`` (scikit-learn's
embedded 8x8 handwritten digits; offline, for quick runs).  Task streams are built from them in
:mod:`clutils.streams`.
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from ._checks import check_name, resolve_device

__all__ = ["DATASETS", "ENV_VAR", "Dataset", "clear_cache", "data_root", "load_dataset", "padded"]
DATASETS = ("mnist", "fashion_mnist", "digits")
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
        if self.x_train.dtype != self.x_test.dtype:
            raise ValueError(f"Dataset {self.name!r}: x_train is {self.x_train.dtype} but x_test {self.x_test.dtype}; "
                             f"give both one dtype, e.g. x.float() (float32, what clutils' models use).")
        for split_, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if x.numel() and not torch.isfinite(x).all():
                n_bad = int((~torch.isfinite(x)).any(1).sum())
                raise ValueError(f"Dataset {self.name!r}: x_{split_} holds NaN or infinite pixels in {n_bad} image(s); "
                                 f"clean them (torch.nan_to_num, or drop those rows) before building the data set.")
            if x.numel() and float(x.max()) > 1.0 and bool((x == x.round()).all()):
                raise ValueError(f"Dataset {self.name!r}: x_{split_} holds whole numbers up to {float(x.max()):g}: raw "
                                 f"0..255 pixels, which train at chance with clutils' learning rates. Scale them "
                                 f"to [0, 1] (x / 255) or standardise them.")
            if y.numel() and int(y.min()) < 0:
                raise ValueError(f"Dataset {self.name!r}: y_{split_} holds negative labels ({int(y.min())}); labels "
                                 f"are class indices >= 0.")

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


def padded(ds: Dataset, side: int = 32) -> Dataset:
    """``ds`` with every image zero-padded equally on all sides to ``side`` x ``side`` pixels (MNIST at
    32 x 32, 1024 inputs, as in Hsu et al.'s logs), named ``"<name>-<side>x<side>"``."""
    from ._checks import check_int

    h, w = ds.image_shape
    side = check_int(side, "side", minimum=max(h, w))
    if (side - h) % 2 or (side - w) % 2:
        raise ValueError(f"padding {h}x{w} images to {side}x{side} needs an even margin on each axis; use side="
                         f"{side + 1 if (side - h) % 2 else side}")
    ph, pw = (side - h) // 2, (side - w) // 2

    def pad(x: Tensor) -> Tensor:
        return torch.nn.functional.pad(x.view(-1, h, w), (pw, pw, ph, ph)).reshape(len(x), -1)
    return Dataset(f"{ds.name}-{side}x{side}", pad(ds.x_train), ds.y_train, pad(ds.x_test), ds.y_test, (side, side))


def clear_cache() -> None:
    """Forget the data sets loaded so far in this process (``load_dataset`` keeps the last four in memory),
    e.g. after the files under the data root changed."""
    _load_cpu.cache_clear()


def load_dataset(name: str, root: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> Dataset:
    """Load ``mnist``, ``fashion_mnist`` or ``digits`` into float tensors on ``device``.

    The data root is ``root``, else ``$CLUTILS_DATA``, else ``~/.cache/clutils``;
    torchvision downloads MNIST there when it is missing and the network allows.
    Files are read once per process; every call returns its own copy of the tensors, so
    changing them in place (``d.x_train -= mean``) never reaches another caller.
    ``device="auto"`` means CUDA when available, else the CPU.
    """
    key = check_name(name, DATASETS, "dataset")
    if root is not None and not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a folder path (str or Path), got {root!r} ({type(root).__name__}).")
    dev = resolve_device(device)
    cached = _load_cpu(key, str(data_root(root)))
    # a copy on the CPU is a memcpy (MNIST: 0.2 GB in ~0.1 s); moving to another device copies anyway
    return cached.clone() if dev.type == "cpu" else cached.to(dev)
