"""`growdsl run`: claim the run directory, choose the data, train the schedule; with --baseline, then
train the from-scratch baseline on the same FLOPs (RUN/baseline) and compare the two.

Every process of the run calls `run`. Rank 0 claims the directory and decides the data; the others
get its answer, and a refusal it meets ends every rank with its one line (never a hang)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from growdsl.app.data import choose_data
from growdsl.app.schedule import compile_schedule
from growdsl.app.train import train
from growdsl.errors import EXIT_INVALID, EXIT_OK, EXIT_USAGE, GrowdslError, UsageError
from growdsl.plan import baseline
from growdsl.plan.data import RunData
from growdsl.plan.plan import Plan
from growdsl.records.data_folder import read_meta
from growdsl.records.run_record import RECORD
from growdsl.runtime.distributed import World
from growdsl.runtime.rundir import RunDir, RunDirError, claim

T = TypeVar("T")


@dataclass(frozen=True)
class RunRequest:
    schedule: str  # the .grow file
    data: str | None = None  # --data: a prepared folder for the schedule's one (or none)
    run_dir: str | None = None  # default runs/NAME-TIME
    resume: bool = False
    log_every: int = 50
    timeout_minutes: int = 30  # how long a process waits for the others in a collective
    baseline: bool = False
    until: int | None = None  # stop after this global step (checkpointed: a resume goes on)


@dataclass(frozen=True)
class Baseline:
    """The from-scratch baseline of a run: its schedule (baseline.grow) and its plan."""

    path: Path
    text: str
    plan: Plan


def run(request: RunRequest) -> int:
    """Train the request's schedule on this process of the run's world; the exit status."""
    compiled = compile_schedule(request.schedule)
    compiled.one_schedule("run")
    if request.baseline:
        try:
            baseline.check(compiled.plan)  # before anything trains
        except baseline.BaselineError as e:
            raise baseline.BaselineError(f"--baseline: {request.schedule}: {e}") from None
    from growdsl.runtime.distributed import close, from_environment

    world = from_environment(timedelta(minutes=request.timeout_minutes))  # torchrun's WORLD_SIZE, RANK; else one
    try:
        return run_on(world, request, compiled.plan, compiled.source)
    finally:
        close()  # every process group the run made


def on_first_rank(world: World, command: str, attempt: Callable[[], T]) -> tuple[T | None, int | None]:
    """`attempt()` on the first rank: (what it returned there, None), or on every rank (None, the exit
    status) of the GrowdslError it raised, said once (the other ranks would wait for it otherwise)."""
    value, failed = None, None
    if world.main:
        try:
            value = attempt()
        except GrowdslError as e:
            failed = (str(e), e.exit_code)
    failed = world.share(failed)
    if failed:
        if world.main:
            print(f"growdsl {command}: {failed[0]}", file=sys.stderr)
        return None, failed[1]
    return value, None


def run_on(world: World, request: RunRequest, plan: Plan, source: str) -> int:
    run = None

    def claimed() -> RunData:
        nonlocal run
        run = claim(run_dir_of(request, time.strftime("%Y%m%d-%H%M%S")), request.resume)
        return _data_of(request, plan, run)

    try:
        sources, refused = on_first_rank(world, "run", claimed)
        if refused is not None:
            return refused
        sources, run_dir = world.share(sources), world.share(run.path if run else None)
        base = _baseline_of(request, plan, sources, run_dir) if request.baseline else None  # before anything trains
        status = train(plan, source, sources, run, run_dir, world, request.log_every, request.until)
    finally:
        if run:
            run.release()
    if status or base is None:
        return status
    status = _train_baseline(world, request, plan, base, sources, run_dir)
    if status or not world.main:
        return status
    from growdsl.eval.compare import CompareError, compare, render, verdict

    try:
        report = compare([run_dir / "baseline", run_dir], run_dir / "compare")
    except CompareError as e:
        print(f"growdsl run: cannot compare the runs: {e}", file=sys.stderr)
        return EXIT_INVALID
    print("\n" + render(report) + "\n\n" + verdict(report, 1))
    return EXIT_OK


def run_dir_of(request: RunRequest, stamp: str) -> Path:
    """--run-dir, else runs/NAME-TIME (resuming: the newest runs/NAME-*)."""
    stem = Path(request.schedule).stem
    if request.resume and not request.run_dir:
        earlier = sorted(p for p in Path("runs").glob(f"{stem}-*") if not p.name.startswith(f"{stem}-tournament-"))
        if not earlier:
            raise UsageError(f"nothing to resume: no runs/{stem}-* directory; give --run-dir")
        return earlier[-1]
    return Path(request.run_dir or Path("runs") / f"{stem}-{stamp}")


def _data_of(request: RunRequest, plan: Plan, run: RunDir) -> RunData:
    """The run's data (growdsl.app.data.choose_data; a resumed run: the folder it recorded), every
    folder complete and consistent, none of them the run directory. The default corpus is prepared
    on its first use. Whether a resumed run's folders are the data it read is checked once its
    checkpoint is loaded (growdsl.app.train)."""
    from growdsl.data import corpora
    from growdsl.data.prepare import default_corpus

    record = run.recorded()
    recorded = [Path(source.data) for source in record.folders] if record else []
    sources = choose_data(plan, request.schedule, request.data, recorded)
    if sources.folders[0] == corpora.DEFAULT:
        try:
            default_corpus(say=lambda line: print(line, flush=True))
        except corpora.FetchError as e:
            raise UsageError(f"the default corpus: {e}") from None
        except OSError as e:  # preparing the default corpus: a full disk, ...
            raise UsageError(f"the data: {e}") from None
    for folder in sources.folders:
        read_meta(folder)  # complete and consistent, or a DataError that says what is not
    run.check_data(sources.folders)
    return sources


def _baseline_of(request: RunRequest, plan: Plan, sources: RunData, run_dir: Path) -> Baseline:
    """The baseline's schedule, naming the run's data by absolute path, planned before anything trains."""
    path = run_dir / "baseline.grow"
    named: list[tuple[str, float | None]] = [
        (str(f.resolve()), w) for f, w in zip(sources.folders, sources.weights[-1])
    ]
    text, base_plan = baseline.planned(
        plan, [(named[0][0], None)] if len(named) == 1 else named, request.schedule, str(path)
    )
    return Baseline(path, text, base_plan)


def _train_baseline(
    world: World, request: RunRequest, plan: Plan, base: Baseline, sources: RunData, run_dir: Path
) -> int:
    """The from-scratch baseline on the same FLOPs, in RUN/baseline, on the final stage's mixture throughout."""
    base_dir, claimed = run_dir / "baseline", None
    if world.main:
        base.path.write_text(base.text)
        b = plan.totals.baseline
        assert b is not None  # baseline.check passed
        print(
            f"\nbaseline: {plan.stages[-1].shape.n_layers}L from scratch for {b.steps:,} steps on the same FLOPs "
            f"({base.path})"
        )
        try:
            claimed = claim(base_dir, request.resume and (base_dir / RECORD).exists())
        except RunDirError as e:
            print(f"growdsl run: {e}", file=sys.stderr)
    try:
        if not world.share(claimed is not None):
            return EXIT_USAGE
        base_sources = RunData(sources.folders, (sources.weights[-1],))
        return train(base.plan, base.text, base_sources, claimed, base_dir, world, request.log_every)
    finally:
        if claimed:
            claimed.release()
