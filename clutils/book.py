"""Small helpers the chapters share: choosing a profile and gluing numbers into the text."""
from __future__ import annotations

from typing import Any, Mapping

__all__ = ["choose_profile", "glue"]


def choose_profile(name: str, profiles: Mapping[str, Mapping[str, Any]]) -> dict:
    """The settings of profile ``name`` (``quick`` or ``full``), with a clear error for any other name."""
    if name not in profiles:
        raise ValueError(f"unknown PROFILE {name!r}; choose one of {', '.join(profiles)} "
                         f"(papermill ... -p PROFILE quick).")
    return dict(profiles[name])


def glue(name: str, value: Any, display: bool = False) -> None:
    """Store ``value`` in the notebook's outputs under ``name`` so the text can quote it ({glue:text}`name`).

    Uses MyST-NB's ``glue`` when it is installed (building the book); elsewhere (Colab) it
    just prints the value when ``display`` is true.  NumPy and PyTorch scalars are stored as
    plain Python numbers, so ``{glue:text}`name:.1f``` can format them.
    """
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    try:
        from myst_nb import glue as _glue
    except ImportError:  # pragma: no cover - only without the book extras
        if display:
            print(f"{name} = {value}")
        return
    _glue(name, value, display=display)
