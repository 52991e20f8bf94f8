"""Small argument checks shared by the modules: a wrong type or value fails early, with a message
that names the argument and says what to pass instead."""
from __future__ import annotations

import math
import operator
from typing import Any, Sequence

__all__ = ["check_int", "check_int_sequence", "check_positive_float", "check_str"]


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
