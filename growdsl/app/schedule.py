"""A schedule file, read and compiled: the first step of every command that takes one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from growdsl.errors import GrowdslError, UsageError
from growdsl.lang.errors import ScheduleError
from growdsl.plan.plan import Plan
from growdsl.plan.tournament import Tournament

MAX_SCHEDULE_BYTES = 2**16  # schedules are a few KB; at most ~3,000 statements, planned in about a second


class InvalidSchedule(GrowdslError):
    """A schedule that does not compile, or a file that is no schedule: its diagnostics, rendered
    (file:line:col, what is wrong, a hint), printed as they are."""

    def said_by(self, command: str) -> str:
        return str(self)


@dataclass(frozen=True)
class Compiled:
    plan: Plan  # of a tournament, its first candidate's
    source: str  # the schedule's text, as read
    path: str  # as the user named it: diagnostics and relative data names start from it
    tournament: Tournament | None = None  # a `try`: what `growdsl tournament` runs

    def one_schedule(self, command: str) -> Plan:
        """The plan, for a command that runs one schedule; a tournament is refused, with what to do."""
        if self.tournament is not None:
            raise UsageError(
                f"{self.path} holds a tournament (try, line {self.tournament.line}): run it with growdsl "
                f"tournament {self.path}, then {command} its winner's schedule"
            )
        return self.plan


def read_schedule(path: str) -> str:
    """A schedule's text: a regular file of at most MAX_SCHEDULE_BYTES (not a device, a pipe or a
    folder: those would block or never end)."""
    file = Path(path)
    try:
        if file.exists() and not file.is_file():
            raise UsageError(f"{path} is not a regular file: a schedule is a .grow text file")
        with file.open("rb") as f:
            data = f.read(MAX_SCHEDULE_BYTES + 1)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    if len(data) > MAX_SCHEDULE_BYTES:
        raise InvalidSchedule(
            f"{path}: error: larger than {MAX_SCHEDULE_BYTES // 2**10} KiB: a schedule is a short text "
            f"(is this the right file?)"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidSchedule(f"{path}: error: not a UTF-8 text file") from None


def compile_schedule(path: str) -> Compiled:
    """The schedule at `path`, planned; InvalidSchedule with every error found in it."""
    from growdsl.plan import plan_tournament

    source = read_schedule(path)
    try:
        plan, tournament = plan_tournament(source, path)
        return Compiled(plan, source, path, tournament)
    except ScheduleError as e:
        raise InvalidSchedule(e.render(source, path)) from None


def beside(schedule: str, name: str) -> Path:
    """A folder a schedule names: relative to the schedule's own folder."""
    return Path(name) if Path(name).is_absolute() else Path(schedule).parent / name
