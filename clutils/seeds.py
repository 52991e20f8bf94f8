"""Every seed a run derives, in one place: the formulas the trainer and the importance estimators
use to turn a run's seed into independent generators (tests call them too).

A run's ``seed`` sets the initial weights (:func:`seed_everything` before the model is built) and,
through the functions below, the batch order of every epoch and the samples the importance
estimators draw, so a resumed run repeats the uninterrupted one exactly and two seeds never share
a stream of random numbers.
"""
from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["seed_everything", "batch_order_seed", "subsample_seed", "label_sampling_seed", "replay_seed", "generator"]

_BIG = 1_000_003  # a prime larger than any task or epoch count: seeds of different runs never collide


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global generators (model initialisation uses these)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def batch_order_seed(seed: int, task: int, epoch: int) -> int:
    """The seed of the batch order of ``epoch`` of ``task``."""
    return int(seed) * _BIG + int(task) * 1_009 + int(epoch)


def subsample_seed(seed: int, task: int) -> int:
    """The seed of the subsample of task ``task``'s inputs an importance estimate reads (``n_samples``)."""
    return int(seed) * _BIG + 7_919 * int(task)


def label_sampling_seed(seed: int, task: int) -> int:
    """The seed of the labels EWC's sampled Fisher draws from the model's predictive distribution on ``task``."""
    return int(seed) * _BIG + 31 * int(task) + 1


def replay_seed(seed: int, task: int) -> int:
    """The seed of which stored examples replay adds to each batch of task ``task``."""
    return int(seed) * _BIG + 53 * int(task) + 2


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (what every derived seed above feeds)."""
    return torch.Generator().manual_seed(int(seed))
