"""`growdsl tournament`: run a schedule's operator tournament (growdsl.plan.tournament) and pick the winner.

The base trains once (TOURNAMENT/base: the first arm's schedule, stopped at the growth); every arm is
a copy of it (checkpoints hard-linked, the rest copied) that grows its own way and trains its probe
(`run --until`), each its own run directory. Then the arms are ranked by validation loss where their
probes ended, and the winner's schedule is written. Every step is a resumable run: `--resume` goes on
where an interrupted tournament stopped, and a finished arm is not trained again."""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path

from growdsl import __version__
from growdsl.app.run import RunRequest, on_first_rank, run_on
from growdsl.app.schedule import Compiled, compile_schedule
from growdsl.errors import EXIT_INVALID, EXIT_OK, UsageError
from growdsl.eval.tournament import diverged_at
from growdsl.files import not_plain_under, write_replacing
from growdsl.plan.tournament import Arm, Tournament
from growdsl.records import tournament as records
from growdsl.records.record import RecordError
from growdsl.records.run_record import CHECKPOINTS, RECORD
from growdsl.runtime.distributed import World


@dataclass(frozen=True)
class TournamentRequest:
    schedule: str  # the .grow file with its `try`
    data: str | None = None  # --data, as for `run`
    folder: str | None = None  # default runs/NAME-tournament-TIME
    resume: bool = False
    log_every: int = 50
    timeout_minutes: int = 30


def tournament(request: TournamentRequest) -> int:
    """Run the tournament on this process of the run's world; the exit status."""
    compiled = compile_schedule(request.schedule)
    if compiled.tournament is None:
        raise UsageError(
            f"{request.schedule} holds no tournament: name the candidates in one statement, e.g. "
            f"try stack x4 | stack x4 init zero | interpolate x4 for 100 steps"
        )
    from growdsl.runtime.distributed import close, from_environment

    world = from_environment(timedelta(minutes=request.timeout_minutes))
    try:
        return _tournament_on(world, request, compiled, compiled.tournament)
    finally:
        close()


def _tournament_on(world: World, request: TournamentRequest, compiled: Compiled, t: Tournament) -> int:
    claimed, refused = on_first_rank(world, "tournament", lambda: _claim(request, compiled, t))
    if refused is not None:
        return refused
    folder = world.share(claimed.folder if claimed else None)
    assert folder is not None
    try:
        status = _arms(world, request, t, folder)
        if status and claimed and claimed.made:
            _forget(folder)
        if status or not world.main:
            return status
        return _finish(request, compiled, t, folder)
    finally:
        if claimed:
            os.close(claimed.lock)


@dataclass(frozen=True)
class _Claimed:
    folder: Path
    made: bool  # by this command: a refusal before any run began takes it back
    lock: int  # the open folder, locked against any other growdsl


def _claim(request: TournamentRequest, compiled: Compiled, t: Tournament) -> _Claimed:
    folder, made = _folder(request, compiled, t)
    try:
        return _Claimed(folder, made, _lock(folder))
    except UsageError:
        if made:
            _forget(folder)
        raise


def _forget(folder: Path) -> None:
    """A tournament refused before any of its runs began (its data missing, ...): the folder it made
    holds only its own records, and goes."""
    if {p.name for p in folder.iterdir()} <= {records.RECORD, records.SCHEDULE}:
        shutil.rmtree(folder, ignore_errors=True)


def _lock(folder: Path) -> int:
    """The tournament's folder, locked against any other growdsl until this process ends (or closes it)."""
    try:
        lock = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        raise UsageError(f"cannot open {folder}: {e.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(lock)
        if isinstance(e, BlockingIOError):
            raise UsageError(
                f"another growdsl is running the tournament in {folder}: wait for it, or stop it"
            ) from None
        raise UsageError(f"cannot lock {folder}: {e.strerror}") from None
    return lock


def _arms(world: World, request: TournamentRequest, t: Tournament, folder: Path) -> int:
    """The base, then every arm's growth and probe; the first failure's status."""
    first = t.arms[0]
    if t.base_steps:
        _say(world, f"\nthe base: {t.base_steps:,} steps of the first candidate's schedule, once for every arm")
        status = _run(world, request, first, folder / records.BASE, t.base_steps)
        if status:
            return status
    for arm in t.arms:
        run_dir = folder / arm.folder
        diverged = world.share(diverged_at(run_dir) if world.main else None)
        if diverged is not None:  # trained again, it would diverge again (the same seed, the same data)
            _say(world, f"\narm {arm.number} of {len(t.arms)}: {arm.candidate} diverged at step {diverged:,}")
            continue
        _say(world, f"\narm {arm.number} of {len(t.arms)}: {arm.candidate}, to step {arm.stop_step:,}")
        failed = None
        if world.main and t.base_steps and not (run_dir / RECORD).exists():
            try:
                _copy_base(folder / records.BASE, run_dir)
            except OSError as e:
                failed = f"cannot copy the base into {run_dir}: {e.strerror}"
        failed = world.share(failed)
        if failed:
            _say(world, f"growdsl tournament: {failed}", err=True)
            return EXIT_INVALID
        status = _run(world, request, arm, run_dir, arm.stop_step)
        diverged = world.share(diverged_at(run_dir) if world.main and status else None)
        if diverged is not None:  # a candidate that diverges loses; the others still run
            _say(world, f"arm {arm.number} diverged at step {diverged:,}: it is ranked last, the tournament goes on")
        elif status:
            return status
    return EXIT_OK


def _run(world: World, request: TournamentRequest, arm: Arm, run_dir: Path, until: int) -> int:
    """One run of the tournament (the base, or an arm) into `run_dir`, to the global step `until`."""
    resume = world.share((run_dir / RECORD).exists() if world.main else None)
    # The schedule's own path: data and models it names are found beside it, as for `run`
    run = RunRequest(
        request.schedule, request.data, str(run_dir), resume, request.log_every, request.timeout_minutes, until=until
    )
    return run_on(world, run, arm.plan, arm.source)


def _folder(request: TournamentRequest, compiled: Compiled, t: Tournament) -> tuple[Path, bool]:
    """The tournament's folder: new (its record and schedule written), or the one to resume (its
    record checked against the schedule); and whether this call made it."""
    stem = Path(request.schedule).stem
    if request.folder:
        folder = Path(request.folder)
    elif request.resume:
        earlier = sorted(Path("runs").glob(f"{stem}-tournament-*"))
        if not earlier:
            raise UsageError(f"nothing to resume: no runs/{stem}-tournament-* folder; give --dir")
        folder = earlier[-1]
    else:
        folder = Path("runs") / f"{stem}-tournament-{time.strftime('%Y%m%d-%H%M%S')}"
    arms = [records.ArmRecord(a.number, a.candidate, a.folder, a.stop_step) for a in t.arms]
    sha = hashlib.sha256(compiled.source.encode()).hexdigest()
    if request.resume:
        if folder.is_symlink() or not (folder / records.RECORD).is_file():
            raise UsageError(f"nothing to resume in {folder}: it holds no tournament ({records.RECORD} missing)")
        try:
            record = records.read_tournament(folder)
        except (RecordError, OSError) as e:
            raise UsageError(f"cannot resume: {e}") from None
        if record.schedule_sha256 != sha or record.arms != arms or record.base_steps != t.base_steps:
            # an arm probed under other settings than the rest would be ranked unfairly
            raise UsageError(
                f"{folder} ran another schedule: resume it with its own ({folder / records.SCHEDULE}), or "
                f"start a new tournament"
            )
        problem = not_plain_under(folder)
        if problem:
            raise UsageError(f"{problem}: a tournament folder holds only plain files and folders")
        return folder, False
    made = not folder.exists()
    if folder.is_symlink() or (folder.exists() and (not folder.is_dir() or any(folder.iterdir()))):
        raise UsageError(
            f"{folder} exists and is not an empty folder: add --resume to go on with it, or give another --dir"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        record = records.TournamentRecord(sha, t.base_steps, arms, None, __version__)
        write_replacing(folder / records.SCHEDULE, compiled.source.encode())
        write_replacing(folder / records.RECORD, json.dumps(asdict(record), indent=1).encode())
    except OSError as e:
        raise UsageError(f"cannot write the tournament into {folder}: {e.strerror}") from None
    return folder, made


def _copy_base(base: Path, arm: Path) -> None:
    """The base's run directory as the arm's start: its checkpoints hard-linked (they are never written
    again), every other file copied (a run appends to its log and history). Whole or not at all: into a
    temporary folder first, renamed into place."""
    problem = not_plain_under(base)
    if problem:
        raise OSError(0, f"{problem}: the base is not a plain run directory")
    for left in arm.parent.glob(f".{arm.name}.tmp-*"):  # a copy stopped midway (the folder is locked: not running)
        shutil.rmtree(left, ignore_errors=True)
    tmp = arm.with_name(f".{arm.name}.tmp-{os.getpid()}")
    shutil.rmtree(arm, ignore_errors=True)  # an arm that never began: its folder holds no run (no run.json)

    def link_or_copy(src: str, dst: str) -> None:
        if Path(src).relative_to(base).parts[0] == CHECKPOINTS:
            try:
                os.link(src, dst)
                return
            except OSError:  # another file system, or one without hard links
                pass
        shutil.copy2(src, dst)

    try:
        shutil.copytree(base, tmp, copy_function=link_or_copy)
        tmp.rename(arm)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _finish(request: TournamentRequest, compiled: Compiled, t: Tournament, folder: Path) -> int:
    """Rank the arms, plot them, write the results and the winner's schedule, say them."""
    from growdsl.eval import tournament as ranking

    runs = [ranking.ArmRun(a.number, a.candidate, folder / a.folder, a.stop_step) for a in t.arms]
    standings = ranking.rank(runs)
    plot = ranking.plot(runs, t.base_steps, folder / records.PLOT)
    winner = next(a for a in t.arms if a.number == standings[0].number)
    # JSON has no infinity: a diverged arm's loss is recorded as null
    results = [records.Result(s.number, s.loss if math.isfinite(s.loss) else None, s.step, s.flops) for s in standings]
    record = records.read_tournament(folder)
    record = records.TournamentRecord(record.schedule_sha256, record.base_steps, record.arms, results, __version__)
    text = _with_note(winner.source, winner.line, f"  # the winner of {folder / records.RECORD}")
    try:
        write_replacing(folder / records.RECORD, json.dumps(asdict(record), indent=1).encode())
        if math.isfinite(standings[0].loss):
            write_replacing(folder / records.WINNER, text.encode())
    except OSError as e:
        raise UsageError(f"cannot write the results into {folder}: {e.strerror}") from None
    print("\n" + ranking.render(standings, t.probe_stated) + f"\nplot: {plot}")
    if not math.isfinite(standings[0].loss):
        print("growdsl tournament: every candidate diverged: lower the LR, or try others", file=sys.stderr)
        return EXIT_INVALID
    beside = _beside(Path(request.schedule), text)
    print(f"\nwinner: {winner.candidate}\nthe winner's schedule: {beside or folder / records.WINNER}")
    if beside is None:
        kept = Path(request.schedule).with_name(Path(request.schedule).stem + ".winner.grow")
        print(
            f"({kept} is another file, kept as it is; the data and models the schedule names by relative path "
            f"are beside {request.schedule}: copy the winner's schedule there to run it)"
        )
    print(
        f"go on with the winner's run: growdsl run {beside or folder / records.WINNER} "
        f"--run-dir {folder / winner.folder} --resume"
    )
    return EXIT_OK


def _with_note(source: str, line: int, note: str) -> str:
    """`note` (a comment) at the end of 1-based `line`: no line moves, so the schedule still plans as its arm ran."""
    lines = source.split("\n")
    lines[line - 1] += note
    return "\n".join(lines)


def _beside(schedule: Path, text: str) -> Path | None:
    """The winner's schedule beside the tournament's (NAME.winner.grow), where the data and models it
    names by relative path are found; None (it is in the tournament's folder only) where a different
    file of that name is there already: nothing a user made is replaced."""
    path = schedule.with_name(f"{schedule.stem}.winner.grow")
    try:
        if path.is_symlink() or (path.exists() and (not path.is_file() or path.read_bytes() != text.encode())):
            return None
        if not path.exists():
            path.write_bytes(text.encode())
    except OSError:
        return None
    return path


def _say(world: World, line: str, err: bool = False) -> None:
    if world.main:
        print(line, file=sys.stderr if err else sys.stdout, flush=True)
