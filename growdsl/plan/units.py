"""Counts with K/M/B/T suffixes (decimal: 10B = 10_000_000_000), read and written."""

from __future__ import annotations

import math
import re

UNITS = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}

_COUNT = re.compile(r"\s*([0-9][0-9_]*(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)\s*([KMBT]?)\s*")


def parse_count(text: str) -> float:
    """'7B' -> 7e9, '2T' -> 2e12, '6.74e9' -> 6.74e9; ValueError otherwise."""
    m = _COUNT.fullmatch(text)
    if not m:
        raise ValueError(f"'{text}' is not a count such as 7B, 2T, 410M or 6.74e9")
    value = float(m[1].replace("_", "")) * UNITS.get(m[2], 1)
    if not math.isfinite(value):
        raise ValueError(f"'{text}' is too large")
    return value


def human(n: float, digits: int = 3) -> str:
    """1.19e9 -> '1.19B' (three significant digits by default)."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.{digits}g}{unit}"
    return f"{n:.{digits}g}"
