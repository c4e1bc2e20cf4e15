"""Schedule -> typed plan: shapes, layer maps, params, tokens, FLOPs, guidelines. Never imports torch."""

from __future__ import annotations

from pathlib import Path

from growdsl.lang.parser import parse_partial
from growdsl.plan.compiler import compile_schedule
from growdsl.plan.plan import Plan
from growdsl.plan.tournament import Tournament, tournament_of


def plan_source(source: str, filename: str = "<schedule>") -> Plan:
    """Parse and compile; raises growdsl.lang.errors.ScheduleError listing every problem (the
    statements that parse are checked even when others do not)."""
    return compile_schedule(parse_partial(source, filename))


def plan_tournament(source: str, filename: str = "<schedule>") -> tuple[Plan, Tournament | None]:
    """The plan of a schedule; of one with a tournament (`try`), its first candidate's, and the tournament."""
    schedule = parse_partial(source, filename)
    tournament = tournament_of(schedule)
    if tournament is None:
        return compile_schedule(schedule), None
    return tournament.arms[0].plan, tournament


def plan_file(path: str | Path) -> Plan:
    path = Path(path)
    return plan_source(path.read_text(encoding="utf-8"), str(path))
