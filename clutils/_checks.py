"""Small argument checks shared by the modules: a wrong type or value fails early, with a message
that names the argument and says what to pass instead."""
from __future__ import annotations

import math
import operator
from typing import Any, Sequence

__all__ = ["check_int", "check_int_sequence", "check_positive_float", "check_str", "check_name", "resolve_device"]


def check_int(value: Any, what: str, minimum: int | None = None) -> int:
    """``value`` as a Python int: integers (also NumPy's) pass, floats, strings and bools raise ``TypeError``.

    ``minimum``: a smaller value raises ``ValueError``.
    """
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an integer, got the bool {value!r}.")
    try:
        out = operator.index(value)
    except TypeError:
        hint = f" (write {int(value)})" if isinstance(value, float) and value.is_integer() else ""
        raise TypeError(f"{what} must be an integer, got {value!r} ({type(value).__name__}){hint}.") from None
    if minimum is not None and out < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {out}.")
    return out


def check_int_sequence(value: Any, what: str, minimum: int | None = None, example: str = "(64, 64)") -> list[int]:
    """A list of ints from a sequence of integers; a bare number or a string is a ``TypeError``."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) and not _is_array_like(value):
        raise TypeError(f"{what} must be a sequence of integers such as {example}, got {value!r} "
                        f"({type(value).__name__}).")
    return [check_int(v, f"every entry of {what}", minimum) for v in value]


def check_positive_float(value: Any, what: str, allow_zero: bool = False) -> float:
    """A finite real number > 0 (>= 0 with ``allow_zero``); NaN and infinity are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not hasattr(value, "__float__"):
        raise TypeError(f"{what} must be a number, got {value!r} ({type(value).__name__}).")
    if isinstance(value, str):
        raise TypeError(f"{what} must be a number, got the string {value!r}.")
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{what} must be finite, got {out}.")
    if out < 0 or (out == 0 and not allow_zero):
        raise ValueError(f"{what} must be {'>= 0' if allow_zero else '> 0'}, got {out}.")
    return out


def check_str(value: Any, what: str, choices: Sequence[str]) -> str:
    """A string (any of ``choices`` is the caller's check); a non-string is a ``TypeError`` listing the choices."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, one of {', '.join(map(repr, choices))}; "
                        f"got {value!r} ({type(value).__name__}).")
    return value


def _is_array_like(value: Any) -> bool:
    return hasattr(value, "__len__") and hasattr(value, "__getitem__") and getattr(value, "ndim", 1) == 1


def check_name(name: Any, allowed: Sequence[str], what: str) -> str:
    """``name`` normalised (lower case, ``-`` as ``_``) if it is one of ``allowed``, else a ``ValueError`` listing them."""
    key = check_str(name, what, allowed).lower().replace("-", "_")
    if key not in allowed:
        raise ValueError(f"unknown {what} {name!r}; choose one of {', '.join(allowed)}.")
    return key


def resolve_device(device: Any = "auto"):
    """``"auto"`` -> CUDA when available, else CPU; a CUDA (or MPS) device asked for where there is none raises."""
    import torch

    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a string such as 'cpu', 'cuda' or 'auto', or a torch.device; "
                        f"got {device!r} ({type(device).__name__}).")
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device {device!r} is not a device torch knows ({err}); use 'auto', 'cpu' or 'cuda'.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} asked for but CUDA is not available; use device='auto' or 'cpu'.")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise RuntimeError(f"device {device!r} asked for but MPS is not available here; use device='auto' or 'cpu'.")
    return dev
