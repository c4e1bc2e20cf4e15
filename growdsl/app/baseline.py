"""`growdsl baseline`: the from-scratch schedule of a schedule's final model on the same FLOPs
(growdsl.plan.baseline), naming the run's data where the file is written; `--dense`: an upcycling
schedule's dense model continued instead, on the same FLOPs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from growdsl.app.schedule import beside, compile_schedule
from growdsl.errors import GrowdslError, UsageError
from growdsl.plan import baseline
from growdsl.plan.data import DataError, run_data, stage_data
from growdsl.plan.plan import Plan


@dataclass(frozen=True)
class BaselineFile:
    text: str  # the baseline schedule
    plan: Plan  # of the schedule it is the baseline of
    out: Path | None  # where it was written (None: not written)
    dense: bool = False  # the dense model continued, not the final model from scratch

    def summary(self) -> str:
        b, total = self.plan.totals.baseline, self.plan.totals.flops
        if self.dense:
            b = baseline.continued(self.plan)
            return (
                f"wrote {self.out}: the dense model continued for {b.steps:,} steps instead of upcycled, "
                f"{b.flops:.4g} FLOPs ({self.plan.source}: {total:.4g}, {b.flops / total - 1:+.2%})"
            )
        assert b is not None  # a schedule with a baseline file has a baseline
        return (
            f"wrote {self.out}: {self.plan.stages[-1].shape.n_layers}L from scratch for {b.steps:,} steps, "
            f"{b.flops:.4g} FLOPs ({self.plan.source}: {total:.4g}, {b.flops / total - 1:+.2%})"
        )


def write_baseline(schedule: str, out: str | None, force: bool = False, dense: bool = False) -> BaselineFile:
    """The baseline of `schedule` (`dense`: its dense model continued), written to `out` (replacing it only
    with `force`) or only returned."""
    plan = compile_schedule(schedule).one_schedule("write the baseline of")
    target = Path(out) if out else None
    if target is not None:
        if target.is_dir():
            raise UsageError(f"{target} is a folder: name the file to write")
        if target.exists() and target.samefile(schedule):
            raise UsageError(f"{target} is the schedule itself: name another file")
        if target.exists() and not force:
            raise UsageError(f"{target} exists; give --force to overwrite it, or another -o")
    try:
        if dense:
            text = _continued(plan, Path(schedule), target)
        else:
            baseline.check(plan)  # before its data: stages that read different data are the first thing to say
            text, _ = baseline.planned(plan, _data_named(plan, schedule, target), schedule, out)
    except (baseline.BaselineError, DataError) as e:
        raise GrowdslError(f"{schedule}: {e}") from None
    if target is not None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            partial.write_text(text)
            partial.replace(target)
        except OSError as e:
            raise UsageError(f"cannot write {target}: {e.strerror}") from None
    return BaselineFile(text, plan, target, dense)


def _continued(plan: Plan, schedule: Path, out: Path | None) -> str:
    """The dense run's text, read back through the compiler: on the promised FLOPs."""
    from growdsl.lang.errors import ScheduleError
    from growdsl.plan import plan_source

    text = baseline.continued_schedule(plan, schedule.read_text(), schedule, out)
    try:
        written = plan_source(text, str(out or schedule))
    except ScheduleError as e:
        raise baseline.BaselineError(
            f"the dense run written for it does not read back ({e.errors[0].message}); "
            f"this is growdsl's bug: please report it with the schedule"
        ) from None
    if written.totals.flops != baseline.continued(plan).flops:
        raise baseline.BaselineError(
            "the dense run written for it reads back on other FLOPs; this is growdsl's bug: "
            "please report it with the schedule"
        )
    return text


def _data_named(plan: Plan, schedule: str, out: Path | None) -> list[tuple[str, float | None]] | None:
    """The run's data folders as the baseline file must name them, with their weights: relative to
    where it is written (the schedule's `data` is relative to the schedule), absolute when printed;
    two names of one folder are one source."""
    if not any(stage_data(plan)):
        return None
    sources = run_data(plan, lambda name: beside(schedule, name))
    named = [os.path.relpath(f, out.parent) if out else str(f.resolve()) for f in sources.folders]
    if len(named) == 1 and not plan.stages[0].training.mix:
        return [(named[0], None)]
    return list(zip(named, sources.weights[0]))
