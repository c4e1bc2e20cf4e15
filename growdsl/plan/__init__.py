"""Schedule -> typed plan: shapes, layer maps, params, tokens, FLOPs, guidelines. Never imports torch."""

from __future__ import annotations

from pathlib import Path

from growdsl.lang.parser import parse_partial
from growdsl.plan.compiler import compile_schedule
from growdsl.plan.plan import Plan


def plan_source(source: str, filename: str = "<schedule>") -> Plan:
    """Parse and compile; raises growdsl.lang.errors.ScheduleError listing every problem (the
    statements that parse are checked even when others do not)."""
    return compile_schedule(parse_partial(source, filename))


def plan_file(path: str | Path) -> Plan:
    path = Path(path)
    return plan_source(path.read_text(encoding="utf-8"), str(path))
