"""MNIST for the benchmarks, or a stand-in of its shapes where it is not on disk (a bare GPU machine).

A step's and an evaluation's time depend on the tensors' shapes, not on the pixels: 60,000 + 10,000
random images of 784 pixels in [0, 1] with random labels time the same as MNIST (accuracies are then
meaningless, and the scripts say which data they ran on).
"""
from __future__ import annotations

import torch

import clutils as cl


def mnist(device: torch.device, synthetic: bool = False, root: str | None = None) -> cl.Dataset:
    if not synthetic:
        try:
            return cl.load_dataset("mnist", root=root, device=device)
        except FileNotFoundError as e:
            print(f"MNIST not found ({str(e).splitlines()[0][:100]}...): timing on a stand-in of its shapes")
    g = torch.Generator().manual_seed(0)
    ds = cl.Dataset("mnist-shaped-random", torch.rand(60_000, 784, generator=g), torch.randint(0, 10, (60_000,), generator=g),
                    torch.rand(10_000, 784, generator=g), torch.randint(0, 10, (10_000,), generator=g), (28, 28))
    return ds.to(device)
