"""A tournament's folder and its record, tournament.json.

TOURNAMENT/tournament.json   the record below: the arms and, once ranked, their results
TOURNAMENT/tournament.grow   the schedule with its `try`, as written
TOURNAMENT/base/             the base: the first arm's schedule, run to the growth (a run directory)
TOURNAMENT/N-CANDIDATE/      each arm: the base, copied, then grown its way and probed (a run directory)
TOURNAMENT/ranking.png       validation loss after the growth, every arm
TOURNAMENT/winner.grow       the schedule with the winner in the try's place"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from growdsl.files import read_json
from growdsl.records.record import STRICT, Count, Whole, parse

RECORD, SCHEDULE, BASE, PLOT, WINNER = "tournament.json", "tournament.grow", "base", "ranking.png", "winner.grow"


@dataclass(frozen=True)
class ArmRecord:
    __pydantic_config__ = STRICT
    number: Count
    candidate: str  # as written, on one line
    folder: str  # its run directory's name in the tournament's
    stop_step: Count  # the global step its probe ends at


@dataclass(frozen=True)
class Result:
    """An arm where its probe ended: its validation loss and the FLOPs spent to get there."""

    __pydantic_config__ = STRICT
    number: Count
    loss: float | None  # None: it diverged (at `step`)
    step: Count
    flops: Whole


@dataclass(frozen=True)
class TournamentRecord:
    __pydantic_config__ = STRICT
    schedule_sha256: str
    base_steps: Count
    arms: list[ArmRecord]
    results: list[Result] | None = None  # best first, once every arm is probed
    version: str = ""


def read_tournament(folder: Path) -> TournamentRecord:
    """TOURNAMENT/tournament.json; RecordError if it is not one, OSError if it cannot be read."""
    path = folder / RECORD
    return parse(TournamentRecord, read_json(path), path)
