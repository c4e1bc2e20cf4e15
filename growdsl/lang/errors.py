"""Diagnostics: every problem in a schedule is reported as file:line:col, the offending text
underlined, what is wrong and a hint. Nothing a user writes may end in a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Span:
    """A region of the source, 1-based lines and columns, end exclusive."""

    line: int
    col: int
    end_line: int
    end_col: int

    @staticmethod
    def of(first, last=None) -> Span:
        """Span of a Lark token or tree meta (or from the start of `first` to the end of `last`)."""
        last = last if last is not None else first
        return Span(first.line, first.column, last.end_line, last.end_column)

    def offsets(self, source: str) -> tuple[int, int]:
        """Where it starts and ends in `source`, as string indices."""
        return _offset(source, self.line, self.col), _offset(source, self.end_line, self.end_col)


def _offset(source: str, line: int, col: int) -> int:
    """The index in `source` of a 1-based line and column."""
    at = 0
    for _ in range(line - 1):
        at = source.index("\n", at) + 1
    return at + col - 1


Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Diagnostic:
    message: str
    span: Span | None = None
    hint: str | None = None
    severity: Severity = "error"

    @property
    def order(self) -> tuple[int, int]:
        """Where it sorts: by line and column, a file-wide one first."""
        return (self.span.line, self.span.col) if self.span else (0, 0)

    def render(self, source: str, filename: str, lines: list[str] | None = None) -> str:
        """The diagnostic with its line and a caret under the span; `lines`: source.splitlines(), if
        the caller has them (rendering many diagnostics splits the source once)."""
        where = f"{filename}:{self.span.line}:{self.span.col}" if self.span else filename
        out = [f"{where}: {self.severity}: {self.message}"]
        if self.span:
            lines = source.splitlines() if lines is None else lines
            if 0 < self.span.line <= len(lines):
                text = lines[self.span.line - 1].expandtabs(1)
                end = self.span.end_col if self.span.end_line == self.span.line else len(text) + 1
                width = max(1, end - self.span.col)
                gutter = f"{self.span.line:>4} | "
                out.append(gutter + text)
                out.append(" " * (len(gutter) - 2) + "| " + " " * (self.span.col - 1) + "^" * width)
        if self.hint:
            out.append(f"  hint: {self.hint}")
        return "\n".join(out)


class ScheduleError(Exception):
    """Raised with every error found in one schedule (warnings ride along)."""

    def __init__(self, diagnostics: Iterable[Diagnostic]):
        self.diagnostics = list(diagnostics)
        super().__init__("; ".join(d.message for d in self.diagnostics))

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity == "error"]

    def render(self, source: str, filename: str) -> str:
        """The errors, rendered (warnings are for schedules that compile): the first MAX_SHOWN of
        them, then how many more there are."""
        lines, errors = source.splitlines(), self.errors
        out = [d.render(source, filename, lines) for d in errors[:MAX_SHOWN]]
        if len(errors) > MAX_SHOWN:
            out.append(f"{filename}: ... and {len(errors) - MAX_SHOWN:,} more errors (fix the ones above first)")
        return "\n".join(out)


MAX_SHOWN = 50  # errors shown of one schedule: beyond them, a count


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """'did you mean X?' for the closest choice, or None when nothing is close."""
    choices = sorted(set(choices))
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [lowered[word.lower()]] if word.lower() in lowered else []
    return f"did you mean '{close[0]}'?" if close else None
