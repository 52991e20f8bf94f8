"""Datasets held in memory as flat float tensors: ``mnist`` and ``fashion_mnist`` (through
torchvision, read from the data root and checked byte by byte) and ``digits`` (scikit-learn's
embedded 8x8 handwritten digits; offline, for quick runs).  Task streams are built from them in
:mod:`clutils.streams`.

The reader's own data comes in through :func:`from_tensors` (images of any shape, ``(N, C, H, W)``,
``(N, H, W)`` or flat) and :func:`from_torchvision` (a torchvision data set's train and test parts).
Images are stored flat, as the streams use them; ``Dataset.image_shape`` keeps their shape and
``Dataset.input_shape`` gives it as ``(C, H, W)`` for :class:`clutils.CNN`.
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

__all__ = ["DATASETS", "ENV_VAR", "IMAGE_SHAPES", "Dataset", "clear_cache", "data_root", "from_tensors",
           "from_torchvision", "load_dataset", "normalized", "padded"]
DATASETS = ("mnist", "fashion_mnist", "digits")
IMAGE_SHAPES = {"mnist": (28, 28), "fashion_mnist": (28, 28), "digits": (8, 8)}  # one image of each, (H, W)
ENV_VAR = "CLUTILS_DATA"


@dataclass
class Dataset:
    """A labelled image dataset as flat float tensors in [0, 1].

    ``image_shape`` is one image's shape, ``(H, W)`` (one channel) or ``(C, H, W)``; its product is the
    number of features.  Build one from image-shaped tensors with :func:`from_tensors`.
    """

    name: str
    x_train: Tensor  # (N, D) float32
    y_train: Tensor  # (N,) int64
    x_test: Tensor
    y_test: Tensor
    image_shape: tuple[int, ...]

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
        shape = tuple(self.image_shape) if isinstance(self.image_shape, (tuple, list, torch.Size)) else None
        if (shape is None or len(shape) not in (2, 3)
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)):
            raise ValueError(f"Dataset {self.name!r}: image_shape must be (height, width) or (channels, height, "
                             f"width) of positive ints, got {self.image_shape!r}.")
        if math.prod(shape) != self.x_train.shape[1]:
            raise ValueError(f"Dataset {self.name!r}: image_shape {shape} holds {math.prod(shape)} pixels but the "
                             f"images have {self.x_train.shape[1]} features; give the shape of one image before "
                             f"flattening, e.g. (1, 28, 28) for MNIST.")
        self.image_shape = shape
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
    def input_shape(self) -> tuple[int, int, int]:
        """One image's shape as ``(C, H, W)`` (``C = 1`` for an ``(H, W)`` image_shape): what
        :class:`clutils.CNN` takes as ``input_shape``."""
        return self.image_shape if len(self.image_shape) == 3 else (1, *self.image_shape)

    def images(self, split: str = "train") -> Tensor:
        """The ``"train"`` or ``"test"`` images shaped ``(N, C, H, W)`` (a view of the flat storage)."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
        x = self.x_train if split == "train" else self.x_test
        return x.view(len(x), *self.input_shape)

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
        return Dataset("digits", x[tr], y[tr], x[te], y[te], IMAGE_SHAPES["digits"])

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
    return Dataset(name, *parts, image_shape=IMAGE_SHAPES[name])


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

    c, h, w = ds.input_shape
    side = check_int(side, "side", minimum=max(h, w))
    if (side - h) % 2 or (side - w) % 2:
        raise ValueError(f"padding {h}x{w} images to {side}x{side} needs an even margin on each axis; use side="
                         f"{side + 1 if (side - h) % 2 else side}")
    ph, pw = (side - h) // 2, (side - w) // 2

    def pad(x: Tensor) -> Tensor:
        return torch.nn.functional.pad(x.view(-1, c, h, w), (pw, pw, ph, ph)).reshape(len(x), -1)
    shape = (side, side) if len(ds.image_shape) == 2 else (c, side, side)
    return Dataset(f"{ds.name}-{side}x{side}", pad(ds.x_train), ds.y_train, pad(ds.x_test), ds.y_test, shape)


def normalized(ds: Dataset, mean: float, sd: float) -> Dataset:
    """``ds`` with every pixel mapped to ``(x - mean) / sd``, as ``torchvision.transforms.Normalize`` does (Hsu
    et al.'s code normalises the 32 x 32 padded MNIST with mean 0.1000 and sd 0.2752), named
    ``"<name>-norm<mean>,<sd>"``.  The statistics are given, not measured, so the test images get the
    training images' transform."""
    mean, sd = float(mean), float(sd)
    if not (math.isfinite(mean) and math.isfinite(sd) and sd > 0):
        raise ValueError(f"normalisation needs a finite mean and a finite sd > 0, got mean={mean}, sd={sd}.")
    return Dataset(f"{ds.name}-norm{mean:g},{sd:g}", (ds.x_train - mean) / sd, ds.y_train, (ds.x_test - mean) / sd,
                   ds.y_test, ds.image_shape)


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


def _as_images(x, name: str, split_: str, image_shape: Sequence[int] | None) -> tuple[Tensor, tuple[int, ...]]:
    """``x`` as flat float32 rows and one image's shape: integer pixels (uint8 0..255) are scaled to [0, 1]."""
    if not isinstance(x, Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name}: x_{split_} must be a tensor or an array of images, got "
                            f"{type(x).__name__} ({err}).") from None
    if x.dtype == torch.bool or x.is_complex():
        raise TypeError(f"{name}: x_{split_} holds {x.dtype} values; give pixels as floats or uint8.")
    if x.ndim == 2:
        if image_shape is None:
            raise ValueError(f"{name}: x_{split_} is flat ({x.shape[1]} features per image); pass "
                             f"image_shape=(C, H, W) (or (H, W)) so a CNN can restore the images, e.g. (1, 28, 28).")
        shape = tuple(int(v) for v in image_shape)
    elif x.ndim in (3, 4):
        shape = tuple(int(v) for v in x.shape[1:])
        if image_shape is not None and tuple(int(v) for v in image_shape) not in (shape, (1, *shape)):
            raise ValueError(f"{name}: x_{split_} holds images of shape {shape} but image_shape={tuple(image_shape)}.")
        if x.ndim == 4 and shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4):
            raise ValueError(f"{name}: x_{split_} looks channels-last {tuple(x.shape)}; clutils takes (N, C, H, W): "
                             f"use x.permute(0, 3, 1, 2).")
        if x.ndim == 3:
            shape = (1, *shape)
    else:
        raise ValueError(f"{name}: x_{split_} must be images (N, C, H, W), (N, H, W) or flat (N, features), got "
                         f"shape {tuple(x.shape)}.")
    if x.dtype == torch.uint8:
        x = x.to(torch.float32) / 255.0
    elif not x.is_floating_point():
        raise TypeError(f"{name}: x_{split_} holds {x.dtype} pixels; give uint8 (0..255, scaled here) or floats "
                        f"in [0, 1] (x.float() / 255 for 0..255 values).")
    return x.reshape(len(x), -1).to(torch.float32), shape


def _as_labels(y, name: str, split_: str) -> Tensor:
    y = torch.as_tensor(y)
    if y.ndim != 1 or y.is_floating_point() or y.dtype == torch.bool or y.is_complex():
        raise ValueError(f"{name}: y_{split_} must be integer class labels of shape (N,), got {y.dtype} of "
                         f"shape {tuple(y.shape)}.")
    return y.to(torch.int64)


def from_tensors(x_train, y_train, x_test, y_test, name: str = "own",
                 image_shape: Sequence[int] | None = None) -> Dataset:
    """A :class:`Dataset` from the reader's own tensors (or NumPy arrays), ready for :func:`clutils.make_stream`.

    Images may be ``(N, C, H, W)``, ``(N, H, W)`` (one channel) or flat ``(N, features)`` with
    ``image_shape=(C, H, W)``; uint8 pixels are scaled to [0, 1], float pixels are kept.  Labels must be
    the classes ``0..C-1``, each present in the training split; the test split may not hold a class the
    training split lacks.  The images are stored flat and ``image_shape`` keeps ``(C, H, W)``, so
    ``clutils.CNN(ds.input_shape, ...)`` sees them as images again.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string (it names the cache folder of the runs), got {name!r}.")
    xs, shapes = zip(*(_as_images(x, name, s, image_shape) for x, s in ((x_train, "train"), (x_test, "test"))))
    if shapes[0] != shapes[1]:
        raise ValueError(f"{name}: train images are {shapes[0]} but test images {shapes[1]}; give both one shape.")
    ys = [_as_labels(y, name, s) for y, s in ((y_train, "train"), (y_test, "test"))]
    for x, y, s in zip(xs, ys, ("train", "test")):
        if len(x) != len(y):
            raise ValueError(f"{name}: x_{s} has {len(x)} images but y_{s} {len(y)} labels.")
    if not len(ys[0]):
        raise ValueError(f"{name}: the training split is empty.")
    classes = torch.unique(ys[0]).tolist()
    if classes != list(range(len(classes))):
        raise ValueError(f"{name}: training labels must be 0..C-1 with every class present, got classes "
                         f"{classes[:12]}{' ...' if len(classes) > 12 else ''}; relabel them, e.g. "
                         f"classes, y = torch.unique(y, return_inverse=True) (and map y_test with the same classes).")
    extra = sorted(set(torch.unique(ys[1]).tolist()) - set(classes))
    if extra:
        raise ValueError(f"{name}: the test split holds classes {extra} that the training split lacks "
                         f"(training classes 0..{len(classes) - 1}).")
    return Dataset(name, xs[0], ys[0], xs[1], ys[1], shapes[0])


def _torchvision_part(ds, name: str, split_: str) -> tuple[Tensor, Tensor]:
    """Images ``(N, C, H, W)`` and labels of a torchvision-style data set.

    Without a transform, a data set holding its images in ``.data`` and labels in ``.targets`` (MNIST,
    Fashion-MNIST: ``(N, H, W)`` tensors; CIFAR-10/100: ``(N, H, W, C)`` arrays) is read in one piece;
    any other is read item by item through ``ds[i]`` (PIL images or tensors; its transform applied).
    """
    if getattr(ds, "transform", None) is None and hasattr(ds, "data") and hasattr(ds, "targets"):
        x = torch.as_tensor(ds.data)
        if x.ndim == 4 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):  # CIFAR: channels last
            x = x.permute(0, 3, 1, 2)
        return x, _as_labels(ds.targets, name, split_)
    try:
        n = len(ds)
    except TypeError:
        raise TypeError(f"{name}: the {split_} data set {type(ds).__name__} has no len(); give a map-style "
                        f"torch.utils.data.Dataset (ds[i] -> (image, label)).") from None
    if n == 0:
        raise ValueError(f"{name}: the {split_} data set is empty.")
    from torchvision.transforms.functional import pil_to_tensor

    images, labels = [], []
    for i in range(n):  # a generic data set is read through its own __getitem__
        item = ds[i]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise TypeError(f"{name}: {split_}[{i}] is {type(item).__name__}, not (image, label).")
        img, label = item[0], item[1]
        images.append(img if isinstance(img, Tensor) else pil_to_tensor(img))
        labels.append(int(label))
    if len({tuple(im.shape) for im in images}) > 1:
        raise ValueError(f"{name}: the {split_} images have different shapes; resize them with a transform "
                         f"(torchvision.transforms.Resize) first.")
    return torch.stack(images), torch.tensor(labels, dtype=torch.int64)


def from_torchvision(train, test, name: str | None = None) -> Dataset:
    """A :class:`Dataset` from a torchvision data set's train and test parts, e.g.
    ``from_torchvision(FashionMNIST(root, train=True), FashionMNIST(root, train=False))`` or CIFAR-10.

    Images keep their shape (``(1, 28, 28)``, ``(3, 32, 32)``); uint8 pixels (PIL images, ``.data``
    arrays) are scaled to [0, 1]; a transform that returns float tensors (``ToTensor()``) is kept as it is.
    ``name`` defaults to the class name in lower case (``"fashionmnist"``, ``"cifar10"``).
    """
    name = type(train).__name__.lower() if name is None else name
    x_tr, y_tr = _torchvision_part(train, name, "train")
    x_te, y_te = _torchvision_part(test, name, "test")
    return from_tensors(x_tr, y_tr, x_te, y_te, name=name)
