r"""Replay: a small memory of earlier tasks' training examples, mixed into every new batch.

A weight penalty keeps parameters near where earlier tasks put them; it cannot teach the head to
tell an old class from a new one, because no old class is ever in a batch again (chapter 5's
class-incremental result).  A memory can: ``Replay(memory)`` keeps ``memory`` training examples of
the tasks seen so far and adds ``round(ratio * B)`` of them, drawn without replacement, to every
batch of ``B`` new examples, so each step's cross-entropy is the mean over new and stored examples
alike (``ratio=1``: as many stored as new, half the loss's weight on the memory).

**Which examples are kept: class-balanced.**  After each task the memory is shared equally among
every class seen so far (a class is a ``(task, label)`` pair, so the two "even" labels of two
domain-incremental tasks are two classes): class ``c`` of ``C`` gets
``memory // C`` places, the ``memory % C`` earliest classes one more, and the counts differ by
at most one (fewer only where a class has fewer training examples than its share).  A new class's
places are a uniform random draw from its training examples (seeded by ``seed`` and the task);
an old class keeps a prefix of its earlier draw, itself a uniform sample.  Reservoir sampling
keeps a uniform sample of the stream instead, and so holds classes in proportion to how many
examples of each the stream had; with split MNIST's near-equal classes the two are close, but
class-balanced is the one whose guarantee is what class-incremental learning needs (every class
seen stays in the memory in equal number, the most recent task no larger than the first), and
its memory does not depend on the order of the examples inside a task.

The memory is three registered buffers (inputs, labels, the head each example answers with) plus
the classes seen, so ``state_dict()`` holds it, a checkpoint resumes it and ``.to(device)`` moves
it; the draw of each batch's stored examples comes from a generator seeded per task
(:func:`clutils.seeds.replay_seed`), so a run resumed at a task boundary repeats the
uninterrupted one exactly.  ``Replay(0)`` stores nothing and draws nothing: it is Naive, bit for
bit.  Composable with any penalty (``Compose(Replay(500), EWC(100.0))``): the penalty's importance
is computed on the new task's data as always, the memory only enters the loss.
:meth:`Replay.cost` reports what the memory holds, in examples and in bytes, beside
:func:`clutils.baselines.memory_cost`'s count of stored parameters.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import seeds
from ._checks import check_int, check_positive_float
from .streams import Stream
from .strategies import BufferDict, Strategy

__all__ = ["Replay", "balanced_quota"]


def balanced_quota(memory: int, counts: list[int]) -> list[int]:
    """Places per class when ``memory`` is shared equally among classes with ``counts`` examples each.

    Class ``i`` of ``C`` is offered ``memory // C`` places, plus one for the ``memory % C`` first; a
    class with fewer examples than it is offered keeps all of them, and its unused places go to the
    others, in the same way, until the memory is full or every example is kept.
    """
    quota = [0] * len(counts)
    left = memory
    open_ = [i for i, n in enumerate(counts) if n > 0]
    while left > 0 and open_:
        share, extra = divmod(left, len(open_))
        for rank, i in enumerate(open_):
            quota[i] += min(share + (rank < extra), counts[i] - quota[i])
        left = memory - sum(quota)
        open_ = [i for i in open_ if quota[i] < counts[i]]
    return quota


class Replay(Strategy):
    """Rehearsal from a fixed-size, class-balanced memory of earlier tasks' training examples.

    Args:
        memory: how many training examples the memory holds (over all tasks seen; 0: none).
        ratio: stored examples added per new example in each batch (``round(ratio * B)``, at most the
            memory's size).
        seed: seeds which examples are stored and which stored ones each batch draws.
    """

    name = "replay"

    def __init__(self, memory: int, ratio: float = 1.0, seed: int = 0):
        super().__init__()
        self.memory = check_int(memory, "memory", minimum=0)
        self.ratio = float(check_positive_float(ratio, "ratio", allow_zero=True))
        self.seed = check_int(seed, "seed")
        self.store = BufferDict()  # "x", "y", "head", "task": the stored examples; "classes": (task, label) seen
        self._gen: torch.Generator | None = None
        self._heads: list[int] = []
        self._head_tensor = False

    def __len__(self) -> int:
        return len(self.store["y"]) if "y" in self.store else 0

    def before_task(self, model: nn.Module, stream: Stream, t: int) -> None:
        self._gen = seeds.generator(seeds.replay_seed(self.seed, t))
        self._heads = sorted(set(self.store["head"].tolist())) if len(self) else []
        self._head_tensor = stream.n_heads > 1 and any(h != stream.head_of(t) for h in self._heads)

    def extra_heads(self) -> list[int]:
        return self._heads

    def mix_batch(self, x: Tensor, y: Tensor, head: int | Tensor, t: int):
        n = len(self)
        k = min(n, round(self.ratio * len(y)))
        if k == 0:
            return x, y, head
        idx = torch.randperm(n, generator=self._gen)[:k].to(y.device)
        x = torch.cat([x, self.store["x"][idx]])
        y = torch.cat([y, self.store["y"][idx]])
        if self._head_tensor or isinstance(head, Tensor):
            new = head if isinstance(head, Tensor) else torch.full((len(y) - k,), head, dtype=torch.long,
                                                                  device=y.device)
            head = torch.cat([new, self.store["head"][idx]])
        return x, y, head

    def after_task(self, model: nn.Module, stream: Stream, t: int) -> None:
        if self.memory == 0:
            return
        task = stream[t]
        x_new, y_new = task.x_train, task.y_train
        dev = y_new.device
        old = self.store["classes"].tolist() if "classes" in self.store else []
        labels = y_new.unique().tolist()
        classes = [tuple(c) for c in old] + [(t, lab) for lab in labels]
        if len(self):
            mem_task, mem_y = self.store["task"], self.store["y"]
            old_idx = [torch.nonzero((mem_task == c[0]) & (mem_y == c[1])).flatten() for c in classes[:len(old)]]
        else:
            old_idx = []
        gen = seeds.generator(seeds.subsample_seed(self.seed, t))
        new_idx = []
        for lab in labels:  # one uniform draw per new class (a loop over classes, not examples)
            where = torch.nonzero(y_new == lab).flatten()
            new_idx.append(where[torch.randperm(len(where), generator=gen).to(dev)])
        quota = balanced_quota(self.memory, [len(i) for i in old_idx] + [len(i) for i in new_idx])
        keep_old = torch.cat([i[:q] for i, q in zip(old_idx, quota)]) if old_idx else None
        keep_new = torch.cat([i[:q] for i, q in zip(new_idx, quota[len(old_idx):])])
        parts_x, parts_y, parts_h, parts_t = [], [], [], []
        if keep_old is not None:
            parts_x.append(self.store["x"][keep_old])
            parts_y.append(self.store["y"][keep_old])
            parts_h.append(self.store["head"][keep_old])
            parts_t.append(self.store["task"][keep_old])
        parts_x.append(x_new[keep_new])
        parts_y.append(y_new[keep_new])
        parts_h.append(torch.full_like(keep_new, stream.head_of(t)))
        parts_t.append(torch.full_like(keep_new, t))
        self.store["x"] = torch.cat(parts_x)
        self.store["y"] = torch.cat(parts_y)
        self.store["head"] = torch.cat(parts_h)
        self.store["task"] = torch.cat(parts_t)
        self.store["classes"] = torch.tensor(classes, dtype=torch.long, device=dev).reshape(-1, 2)

    def cost(self) -> dict:
        """What the memory holds now: ``examples`` stored and ``bytes`` (inputs, labels, head and task ids,
        as stored), with ``input_bytes`` the inputs alone (the images, in their dtype)."""
        if not len(self):
            return {"examples": 0, "bytes": 0, "input_bytes": 0}
        nbytes = {k: v.numel() * v.element_size() for k, v in self.store.items() if k != "classes"}
        return {"examples": len(self), "bytes": sum(nbytes.values()), "input_bytes": nbytes["x"]}
