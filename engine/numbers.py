"""The one rule for numbers a user writes, in a config file and on the command line alike.

* integers: an ``int`` (not a boolean), or a string of ASCII digits with an optional leading
  ``-`` and nothing else: no spaces, ``+``, ``_`` or digits of other scripts (``"²"``,
  ``"١٢"``, ``"३"``), which Python's ``int()`` takes; within the key's bounds, and every bound
  within int64 (results are JSON, written by orjson, which holds 64-bit integers);
* numbers: an ``int`` or a ``float``, or an ASCII decimal string (``0.5``, ``1e2``, ``-3``; no
  ``_``, spaces, ``nan`` or ``inf``), finite, within the key's bounds.

:func:`parse_int` and :func:`parse_float` raise :class:`NumberProblem` (a ``ValueError``) whose
``message`` follows the key's name (``must be at least 1, got 0``) and whose ``hint`` says what
to write. Light: the command line imports it to check its flags.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["INT64_MAX", "MAX_BATCH", "MAX_RESAMPLES", "MAX_WORKERS", "MIN_RESAMPLES", "NumberProblem", "describe",
           "parse_float", "parse_int", "show"]

INT64_MAX = 2**63 - 1
# Bounds of keys that several entry points take (config keys and their flags)
MAX_BATCH = 1 << 20  # batch_size / --batch-size
MAX_WORKERS = 1024  # decode workers, threads: far above any machine's cores, far below what would hurt
# Bootstrap resamples (clipeval compare / report --resamples): at least enough for a 99.9% interval's
# tails, at most what runs in seconds for a few thousand queries and holds 8 MB per metric
MIN_RESAMPLES = 1000
MAX_RESAMPLES = 1_000_000
INT_HINT = "write a whole number in ASCII digits, e.g. 128"
FLOAT_HINT = "write a number in ASCII digits, e.g. 0.5"
_ASCII_INT = re.compile(r"-?[0-9]+")
_ASCII_FLOAT = re.compile(r"-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_MAX_DIGITS = 100  # longer digit strings are out of every range; not converted (int() of huge strings is slow)


class NumberProblem(ValueError):
    """A value that is not a number of the asked kind and range; ``message`` reads after the
    key's name, ``hint`` (or ``None``) says what to write instead."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message, self.hint = message, hint


def show(value: Any) -> str:
    """``repr(value)``, cut to 80 characters."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def describe(value: Any) -> str:
    """A value as a message names it: ``the boolean true``, ``a list ([1])``, ``'abc'``..."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (list, tuple)):
        return f"a list ({show(value)})"
    if isinstance(value, dict):
        return f"a mapping ({show(value)})"
    if isinstance(value, float):
        return f"the number {value!r}"
    return show(value)


def _big(n: int) -> str:
    return str(n) if abs(n) < 10**30 else f"{n:.3e}"


def parse_int(value: Any, lo: int, hi: int = INT64_MAX) -> int:
    """``value`` as an integer in ``[lo, hi]`` (module docstring).

    Raises:
        NumberProblem: not an integer, or out of bounds (the message gives the bound).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str) and _ASCII_INT.fullmatch(value):
        if len(value.lstrip("-")) > _MAX_DIGITS:
            raise NumberProblem(f"must be at {'least' if value.startswith('-') else 'most'} "
                                f"{lo if value.startswith('-') else hi}, got a number of {len(value)} digits")
        n = int(value)
    else:
        raise NumberProblem(f"must be an integer, got {describe(value)}", INT_HINT)
    if n < lo:
        raise NumberProblem(f"must be at least {lo}, got {_big(n)}")
    if n > hi:
        raise NumberProblem(f"must be at most {hi}, got {_big(n)}")
    return n


def parse_float(value: Any, lo: float, hi: float, exclusive_min: bool = False, exclusive_max: bool = False) -> float:
    """``value`` as a finite float within ``lo`` .. ``hi`` (each bound inclusive unless said).

    Raises:
        NumberProblem: not a number, not finite, or out of bounds.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            x = float(value)
        except OverflowError:
            raise NumberProblem(f"must be a finite number, got {describe(value)[:40]}") from None
    elif isinstance(value, str) and _ASCII_FLOAT.fullmatch(value):
        x = float(value)
    else:
        raise NumberProblem(f"must be a number, got {describe(value)}", FLOAT_HINT)
    if not math.isfinite(x):
        raise NumberProblem(f"must be a finite number, got {value!r}")
    below = x <= lo if exclusive_min else x < lo
    above = x >= hi if exclusive_max else x > hi
    if below or above:
        raise NumberProblem(f"must be {'more than' if exclusive_min else 'at least'} {lo:g} and "
                            f"{'less than' if exclusive_max else 'at most'} {hi:g}, got {x:g}")
    return x
