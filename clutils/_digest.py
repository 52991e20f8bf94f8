"""Content digests: of tensors (kept per tensor until it changes), of code, of a model's weights.

A run's fingerprint (:mod:`clutils.runs`) is built from these, so two runs that read different
bytes -- another pixel, another label, another ``forward`` -- never share a cache entry.
"""
from __future__ import annotations

import hashlib
import threading
import types
import weakref
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["tensor_digest", "code_digest", "weights_digest", "class_code_digest"]

# id(tensor) -> (weak reference, version counter, shape, digest): a stream built once is hashed once,
# and a tensor changed in place (its _version moves on) is hashed again
_TENSOR_DIGESTS: dict[int, tuple[weakref.ref, int, tuple, str]] = {}
_LOCK = threading.Lock()


def tensor_digest(t: Tensor) -> str:
    """A 16-hex digest of a tensor's dtype, shape and values (computed once per tensor and version)."""
    key = id(t)
    hit = _TENSOR_DIGESTS.get(key)
    if hit is not None and hit[0]() is t and hit[1] == t._version and hit[2] == tuple(t.shape):
        return hit[3]
    data = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{data.dtype}{tuple(data.shape)}".encode())
    if data.numel():
        h.update(data.flatten().view(torch.uint8).numpy().data)
    digest = h.hexdigest()[:16]
    try:
        ref = weakref.ref(t, lambda _, k=key: _TENSOR_DIGESTS.pop(k, None))
    except TypeError:  # pragma: no cover - every torch.Tensor is weak-referenceable
        return digest
    with _LOCK:
        _TENSOR_DIGESTS[key] = (ref, t._version, tuple(t.shape), digest)
    return digest


def code_digest(code: types.CodeType) -> str:
    """A digest of a code object: its bytecode, constants (nested code recursively) and names."""
    h = hashlib.sha256(code.co_code)
    for c in code.co_consts:
        h.update((code_digest(c) if isinstance(c, types.CodeType) else repr(c)).encode())
    h.update(repr((code.co_names, code.co_varnames)).encode())
    return h.hexdigest()[:16]


def _is_ours(cls: type) -> bool:
    """Classes whose code the fingerprint's version constant covers: clutils's, torch's, Python's."""
    mod = getattr(cls, "__module__", "") or ""
    return cls is object or mod.split(".")[0] in ("clutils", "torch", "typing", "abc")


def class_code_digest(obj: Any) -> str | None:
    """A digest of the code of every class in ``type(obj)``'s MRO written outside clutils and torch
    (a user's model or strategy subclass), plus functions set on the instance itself; ``None`` when
    all of it is clutils's or torch's own (covered by :data:`clutils.runs.FINGERPRINT_VERSION`)."""
    h, seen = hashlib.sha256(), False
    for cls in type(obj).__mro__:
        if _is_ours(cls):
            continue
        seen = True
        h.update(cls.__qualname__.encode())
        for name, member in sorted(vars(cls).items()):
            fn = getattr(member, "__func__", member)  # staticmethod / classmethod
            if isinstance(fn, property):
                fn = fn.fget
            if isinstance(fn, types.FunctionType):
                h.update(name.encode() + code_digest(fn.__code__).encode())
    for name, member in sorted(getattr(obj, "__dict__", {}).items()):
        fn = getattr(member, "__func__", member)
        if isinstance(fn, types.FunctionType):  # model.forward = something_else
            seen = True
            h.update(name.encode() + code_digest(fn.__code__).encode())
    return h.hexdigest()[:16] if seen else None


def weights_digest(model: nn.Module) -> str:
    """A short hash of a model's parameters and buffers, by name (its initial weights, for the fingerprint)."""
    h = hashlib.sha256()
    for name, v in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor_digest(v).encode())
    return h.hexdigest()[:16]
