"""Reading a schedule's numbers: counts, rates and amounts, each checked where it is written, with
every problem collected as a diagnostic (the compiler raises them all together)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from growdsl.lang import ast
from growdsl.lang.errors import Diagnostic, Span, did_you_mean
from growdsl.plan.units import UNITS, human

MAX_COUNT = 10**7  # any width, depth, batch or sequence length
MAX_TOKENS = 10**16  # any token or step amount


@dataclass(frozen=True)
class Interval:
    """A length in steps or tokens (`500 steps`, `2M`), checked; it becomes steps at a stage's batch."""

    count: int
    unit: Literal["steps", "tokens"]
    span: Span | None = None  # where it is written (None: a preset's)


def as_number(value: ast.Value) -> ast.Number:
    assert isinstance(value, ast.Number), value  # the grammar puts a NUMBER there
    return value


def as_word(value: ast.Value) -> str:
    assert isinstance(value, ast.Word), value  # the grammar puts a keyword there
    return value.text


def as_amount(value: ast.Value) -> ast.Amount:
    assert isinstance(value, ast.Amount), value
    return value


def as_string(value: ast.Value) -> ast.Str:
    assert isinstance(value, ast.Str), value
    return value


class Reader:
    """Diagnostics, and the readers of numbers that report into them."""

    def __init__(self, diagnostics: list[Diagnostic] | None = None):
        self.diagnostics: list[Diagnostic] = diagnostics or []
        self.said: set[Diagnostic] = set(self.diagnostics)  # to say each error once, however long the list

    def error(self, span: Span | None, message: str, hint: str | None = None) -> None:
        diagnostic = Diagnostic(message, span, hint)
        if diagnostic not in self.said:  # a top-level setting checked again for every stage: once
            self.said.add(diagnostic)
            self.diagnostics.append(diagnostic)

    def warn(self, span: Span | None, message: str, hint: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(message, span, hint, "warning"))

    def errors(self) -> bool:
        return any(d.severity == "error" for d in self.diagnostics)

    def integer(self, num: ast.Number, what: str, minimum: int = 1, maximum: int = MAX_COUNT) -> int | None:
        if num.unit or not num.is_integer:
            self.error(num.span, f"{what} must be a whole number, not '{num.text}'")
            return None
        value = int(num.value)
        if not minimum <= value <= maximum:
            self.error(num.span, f"{what} must be between {minimum} and {maximum:,}, not {num.text}")
            return None
        return value

    def real(
        self,
        num: ast.Number,
        what: str,
        low: float = 0.0,
        low_inclusive: bool = False,
        high: float | None = None,
        high_inclusive: bool = False,
    ) -> float | None:
        if num.unit:
            self.error(
                num.unit_span,
                f"{what} takes a plain number; '{num.unit}' is not a unit here",
                f"write e.g. {num.text[: len(num.text) - len(num.unit)]}",
            )
            return None
        v = num.value
        if not math.isfinite(v):
            self.error(num.span, f"{what} '{num.text}' is too large")
            return None
        if (
            v < low
            or (v == low and not low_inclusive)
            or (high is not None and (v > high or (v == high and not high_inclusive)))
        ):
            top = f" and {'at most' if high_inclusive else 'below'} {high:g}" if high is not None else ""
            bound = f"{'at least' if low_inclusive else 'above'} {low:g}" + top
            self.error(num.span, f"{what} must be {bound}, not {num.text}")
            return None
        return v

    def count(self, num: ast.Number, what: str) -> int | None:
        """A count with an optional K/M/B/T multiplier (10B = 10_000_000_000)."""
        scale = 1
        if num.unit:
            if num.unit not in UNITS:
                self._unknown_unit(num, what)
                return None
            scale = UNITS[num.unit]
        value = num.value * scale
        if not value <= MAX_TOKENS:
            self.error(num.span, f"{what} '{num.text}' is too large (at most {MAX_TOKENS:.0e})")
            return None
        if value != int(value):
            self.error(num.span, f"{what} '{num.text}' is not a whole number")
            return None
        return int(value)

    def _unknown_unit(self, num: ast.Number, what: str) -> None:
        if num.unit == "L":
            self.error(
                num.span,
                f"'{num.text}' is a layer count, not {what}",
                "give the depth before the amount: train 6L for 10B",
            )
            return
        hint = did_you_mean(num.unit, UNITS) if num.unit.upper() in UNITS else None
        self.error(
            num.unit_span,
            f"unknown unit '{num.unit}' in {what} '{num.text}'",
            hint or "token amounts take K, M, B or T (10B = 10 billion tokens); or write N steps",
        )

    def interval(self, amount: ast.Amount, what: str) -> Interval | None:
        """An amount in steps or tokens, checked now; `steps` makes it steps once the batch is known."""
        if amount.kind == "auto":
            self.error(
                amount.span,
                f"'auto' is not allowed for {what}",
                "only a train statement's token amount can be auto (the growth timing d)",
            )
            return None
        num = amount.number
        assert num is not None  # only `auto` has no number
        if amount.kind == "bare":
            self.error(
                num.span,
                f"'{num.text}' has no unit: steps or tokens?",
                f"write {num.text} steps, or tokens with a unit such as 10M or 10B",
            )
            return None
        count = self.count(num, what)
        if count is None:
            return None
        if amount.kind == "steps" and count < 1:
            self.error(num.span, f"{what} must be at least one step")
            return None
        return Interval(count, "steps" if amount.kind == "steps" else "tokens", amount.span)

    def number_of(
        self, amount: ast.Amount, what: str, low: float, inclusive: bool, high: float | None = None
    ) -> float | None:
        """A plain number written where an amount may stand (an operator's number option); `high`: its
        largest value, if it has one."""
        if amount.kind not in ("bare", "tokens") or amount.number is None:  # tokens: a number with a unit
            self.error(amount.span, f"{what} takes a plain number")
            return None
        return self.real(amount.number, what, low, inclusive, high, high_inclusive=True)

    def steps(self, interval: Interval, tokens_per_step: int, what: str) -> int | None:
        """The whole steps an interval takes at a batch of `tokens_per_step` (tokens round up)."""
        if interval.unit == "steps":
            return interval.count
        if interval.count < tokens_per_step:
            self.error(
                interval.span,
                f"{what} of {human(interval.count)} tokens is less than one step ({human(tokens_per_step)} tokens)",
                f"train at least {human(tokens_per_step)} tokens, or use a smaller batch",
            )
            return None
        return -(-interval.count // tokens_per_step)

    def amount(self, amount: ast.Amount, tokens_per_step: int, what: str) -> tuple[int, int] | None:
        """(steps, tokens) for an amount at a batch of `tokens_per_step`."""
        interval = self.interval(amount, what)
        steps = None if interval is None else self.steps(interval, tokens_per_step, what)
        return None if steps is None else (steps, steps * tokens_per_step)
