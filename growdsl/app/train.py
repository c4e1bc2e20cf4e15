"""Train one plan into its claimed run directory, on every process of the run: the trainer, the
run's log and metrics, and the summary at its end.

Until the trainer has accepted the run (the model fits, the checkpoint resumes on this schedule)
nothing is written: the lines said so far wait, and a refusal leaves the directory as it was. A
failure on one rank ends every rank with one line (a lost peer, a full disk, Ctrl-C), never a hang."""

from __future__ import annotations

import contextlib
import math
import sys
import threading
from pathlib import Path
from typing import TextIO

from growdsl.errors import EXIT_INVALID, EXIT_OK, EXIT_USAGE, Diverged, GrowdslError, RunError
from growdsl.plan.data import RunData
from growdsl.plan.plan import Plan
from growdsl.records.run_record import CHECKPOINTS, LOG
from growdsl.runtime import checkpoint
from growdsl.runtime.distributed import World, lost_peer
from growdsl.runtime.metrics import Metrics
from growdsl.runtime.rundir import RunDir, RunDirError
from growdsl.runtime.trainer import StageLog, Trainer


class RunLog:
    """What the run says: to the terminal (under the progress bar, on a terminal) and, once the run
    is accepted, to RUN/log.txt; lines said before then wait for it."""

    def __init__(self, world: World):
        self.file: TextIO | None = None
        self.waiting: list[str] = []
        self.progress = None
        if world.main and sys.stdout.isatty():
            from growdsl.runtime.progress import StageProgress

            self.progress = StageProgress()

    def __call__(self, line: str) -> None:
        if self.progress:
            self.progress.clear()
        print(line, flush=True)
        if self.file:
            print(line, file=self.file, flush=True)
        else:
            self.waiting.append(line)

    def open(self, path: Path) -> None:
        self.file = path.open("a")
        self.file.write("".join(line + "\n" for line in self.waiting))

    def close(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):  # closing flushes: a full disk may refuse that too
                self.file.close()


def train(
    plan: Plan,
    source: str,
    sources: RunData,
    run: RunDir | None,
    run_dir: Path,
    world: World,
    log_every: int,
    until: int | None = None,
) -> int:
    """Train `plan` into `run_dir` on every rank (`run`, the claimed directory, on the first), to its
    end or to the global step `until`; the exit status, the same on every rank."""
    from growdsl.runtime.rundir import seen_alike

    unseen = seen_alike(world, run_dir, sources.folders)
    if unseen:
        return _stop(world, unseen, EXIT_USAGE)
    log = RunLog(world)
    started = _start(plan, sources, run, run_dir, world, log, log_every, until)
    if isinstance(started, int):
        return started
    metrics = None
    problem = None
    if world.main:
        assert run is not None  # rank 0 claimed it
        try:
            run.accept(plan.to_json(indent=2), source, sources.folders, world.size)
            log.open(run_dir / LOG)
            metrics = started.metrics = Metrics(run_dir, owner=True)
        except RunDirError as e:
            problem = str(e)
        except OSError as e:
            problem = f"cannot write into {run_dir}: {e.strerror}"
    problem = world.first_failure(problem)  # the others would wait for rank 0 in the first step
    if problem:
        return _stop(world, problem, EXIT_INVALID)
    try:
        return _run(plan, started, run_dir, world, log)
    finally:
        log.close()
        if metrics is not None:
            with contextlib.suppress(OSError):
                metrics.close()


def _stop(world: World, problem: str, status: int) -> int:
    """A refusal every rank agreed on, said once."""
    if world.main:
        print(f"growdsl run: {problem}", file=sys.stderr)
    return status


def _start(
    plan, sources, run, run_dir: Path, world: World, log: RunLog, log_every: int, until: int | None
) -> Trainer | int:
    """The trainer, started (loaded and checked: the model fits, a checkpoint resumes on this schedule
    and this data), or the exit status of a refusal, on every rank alike."""
    from growdsl.eval.in_run import in_run_evaluator

    resume = world.share(run.resume if world.main else None)
    try:
        trainer = Trainer(
            plan,
            sources,
            log=log,
            log_every=log_every,
            checkpoint_dir=run_dir / CHECKPOINTS,
            resume=resume,
            world=world,
            progress=log.progress,
            evaluator=in_run_evaluator(plan, sources.folders[0], run_dir, world, log),
            until=until,
        )
        trainer.start()
        if world.main and resume:  # the folders the checkpoint read are the data it read
            run.check_trained_on(sources.folders, trainer.folders_read())
        refused, status = None, EXIT_OK
    except GrowdslError as e:  # a RunError, or a RunDirError (resumed on other data)
        refused, status = str(e), e.exit_code
    except RuntimeError as e:  # a process lost while the run starts: nothing was written
        lost = lost_peer(e) if world.size > 1 else None
        if lost is None:
            raise
        print(f"growdsl run: rank {world.rank}: {lost}", file=sys.stderr, flush=True)
        return EXIT_INVALID
    refused = world.first_failure(refused)  # every process accepts the run, or none does
    if refused:
        return _stop(world, refused, status or EXIT_INVALID)
    return trainer


def _run(plan: Plan, trainer: Trainer, run_dir: Path, world: World, log: RunLog) -> int:
    """The accepted run, to its end or to a failure every rank says in one line."""
    if world.main:
        on = world.device.type + (" (bf16 mixed precision)" if trainer.mixed else "")
        log(f"run directory: {run_dir}\ntraining on {on}" + (f", {world.size} processes" if world.size > 1 else ""))
    threading.excepthook = _quiet_write_errors  # until the run ends (see finally below)
    try:
        logs = trainer.run()
        if world.main:
            for line in _summary(plan, trainer, logs):
                log(line)
    except RunError as e:
        if world.main:
            log(f"growdsl run: {e}")
            if isinstance(e, Diverged) and trainer.metrics:  # marked where compare (and a tournament) see it
                with contextlib.suppress(OSError):
                    trainer.metrics.step(trainer.global_step + 1, trainer.data.position, trainer.flops, loss=math.nan)
        return EXIT_INVALID
    except BaseException as e:  # DCP's CheckpointException is one (it wraps each rank's error)
        if isinstance(checkpoint.underlying(e), KeyboardInterrupt):  # Ctrl-C, maybe inside a checkpoint's write
            raise KeyboardInterrupt from None
        lost = lost_peer(e) if world.size > 1 else None
        failed = checkpoint.failed_write(e, run_dir) if lost is None else None
        if failed is None and lost is None:
            raise
        # every rank says it (the one whose line reaches the user may be any); the log is written if it can be
        rank = f"rank {world.rank}: " if world.size > 1 else ""
        line = f"growdsl run: {rank}{failed or lost}; committed checkpoints are whole: "
        line += "free space (or fix the folder) and resume with --resume" if failed else "resume with --resume"
        print(line, file=sys.stderr, flush=True)
        if world.main and log.file is not None:
            with contextlib.suppress(OSError):
                print(line, file=log.file, flush=True)
        return EXIT_INVALID
    finally:
        threading.excepthook = threading.__excepthook__
    return EXIT_OK


def _quiet_write_errors(args) -> None:
    """TensorBoard writes from a thread of its own; a write that fails there (the disk full, the folder
    gone) is raised again on the run's thread, which says it in one line: the thread need not print it."""
    if not issubclass(args.exc_type, OSError):
        threading.__excepthook__(args)


def _summary(plan: Plan, trainer: Trainer, logs: list[StageLog]) -> list[str]:
    """The end of a run in a few lines, each saying what its numbers are."""
    logs = [stage_log for stage_log in logs if stage_log.losses]  # a stage stopped (--until) before its first step
    if not logs:
        return [
            f"the run is already at step {trainer.global_step:,}" if trainer.stopped else "the run is already complete"
        ]
    out = []
    for stage_log in logs:
        stage = plan.stages[stage_log.index]
        n = min(5, len(stage_log.losses))
        head, tail = stage_log.losses[:n], stage_log.losses[-n:]
        val = ""
        if stage_log.val_losses:
            step, loss = stage_log.val_losses[-1]
            stopped = trainer.stopped and stage_log is logs[-1]  # at --until: inside it, or at its end
            val = f"; validation loss {loss:.4f} {f'at step {step:,}' if stopped else 'at its end'}"
        done = len(stage_log.losses)
        steps = f"{stage.steps:,}" if done == stage.steps else f"{done:,} of {stage.steps:,}"
        out.append(
            f"stage {stage.index}: {stage.shape.n_layers} layers, {steps} steps in {stage_log.seconds:.1f} s; "
            f"training loss {sum(head) / n:.4f} -> {sum(tail) / n:.4f} (means of its first and last {n} "
            f"steps){val}"
        )
    if trainer.stopped:
        out.append(f"stopped after step {trainer.global_step:,} (--until), checkpointed there: --resume goes on")
    if trainer.val_flops:
        out.append(
            f"validation: {trainer.val_flops:.3g} FLOPs of forward passes, {trainer.val_flops / trainer.flops:.1%} "
            f"of the {trainer.flops:.3g} training FLOPs (not counted in them)"
        )
    return out
