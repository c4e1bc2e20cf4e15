"""A progress line per stage on a terminal: steps, tokens, loss, tokens/s and ETA, redrawn in place
at most every `every` seconds. Log lines (which also go to the run's log file) clear it first."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from growdsl.plan.units import human


class StageProgress:
    def __init__(self, out: TextIO = sys.stdout, width: int = 24, every: float = 0.2, clock=time.monotonic):
        self.out, self.width, self.every, self.clock = out, width, every, clock
        self.last = float("-inf")
        self.shown = False

    def update(self, stage: int, step: int, steps: int, tokens: int, loss: float, rate: float) -> None:
        now = self.clock()
        if step < steps and now - self.last < self.every:
            return
        self.last = now
        filled = self.width * step // steps
        eta = (steps - step) * (tokens / step) / rate if rate > 0 and step else 0.0
        bar = "#" * filled + "." * (self.width - filled)
        self.out.write(
            f"\r\x1b[Kstage {stage} [{bar}] {step}/{steps}  {human(tokens)} tokens  loss {loss:.4f}  "
            f"{rate:,.0f} tok/s  ETA {_clock(eta)}"
        )
        self.out.flush()
        self.shown = True
        if step == steps:
            self.out.write("\n")
            self.shown = False

    def clear(self) -> None:
        """Before a log line: take the progress line away (it is redrawn on the next update)."""
        if self.shown:
            self.out.write("\r\x1b[K")
            self.shown = False


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
