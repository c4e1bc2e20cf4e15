"""The trainer's pure parts, without training: when a stage's step loop logs, validates,
checkpoints and evaluates, and whether a checkpoint's record still agrees with a changed schedule."""

import pytest
from ops_helpers import TINY_RUN

from growdsl.errors import RunError
from growdsl.plan import plan_source
from growdsl.plan.plan import stage_record
from growdsl.runtime.cadence import Cadence, evaluation_point
from growdsl.runtime.checkpoint import Progress
from growdsl.runtime.resume import ResumePoint, data_state, schedule_problem

SCHEDULE = TINY_RUN + "val every 3 steps\ncheckpoint every 5 steps\neval every 4 steps\ntrain 1L for 10 steps\n"


def test_a_stages_cadence_is_exact_from_where_it_starts():
    stage = plan_source(SCHEDULE + "stack x2\ntrain 12 steps\n").stages[1]
    # resumed at the stage's step 2, with 10 steps of stage 0 before it (global steps 11..22)
    cadence = Cadence(stage, log_every=4, first_step=2, first_global=10)
    steps = range(3, 13)
    assert [s for s in steps if cadence.logs(s)] == [3, 4, 8, 12]  # the first this process trains, then every 4
    # every 3 global steps (12, 15, 18, 21) and at the stage's end (22)
    assert [10 + s for s in steps if cadence.validates(s)] == [15, 18, 21, 22]
    assert [s for s in steps if cadence.checkpoints(s)] == [5, 10]  # the last step is the stage end's
    assert [s for s in steps if cadence.evaluates(s)] == [4, 8]


def test_evaluation_points_are_the_cadence_and_the_stage_ends_that_ask_for_one():
    plan = plan_source(SCHEDULE + "stack x2\ntrain 12 steps\n")
    first, last = plan.stages
    assert [s for s in range(11) if evaluation_point(plan, first, s)] == [4, 8]  # no eval at growth here
    grown = plan_source(SCHEDULE.replace("eval every 4 steps", "eval at growth") + "stack x2\ntrain 12 steps\n")
    assert evaluation_point(grown, grown.stages[0], 10) and not evaluation_point(grown, grown.stages[1], 12)
    assert not evaluation_point(plan, last, 0)


def _progress(plan, stage: int, phase: str, step: int, **fields) -> Progress:
    return Progress(
        seq=1,
        stage=stage,
        phase=phase,
        step=step,
        position=0,
        global_step=step,
        flops=0,
        plan_prefix=[stage_record(s) for s in plan.stages[: stage + 1]],
        **fields,
    )


def test_a_schedule_may_change_only_what_is_still_to_come():
    plan = plan_source(SCHEDULE + "stack x2\ntrain 12 steps\n")
    at_growth = _progress(plan, 0, "end", 10)
    longer = plan_source(SCHEDULE + "stack x2\ntrain 40 steps\n")
    assert schedule_problem(longer, at_growth, "ckpt-000001") is None
    other_lr = plan_source(SCHEDULE.replace("lr 1e-2", "lr 2e-2") + "stack x2\ntrain 12 steps\n")
    mid_stage = _progress(plan, 1, "start", 8)
    problem = schedule_problem(other_lr, mid_stage, "ckpt-000001")
    assert problem and "changed in stage 0 (line 9)" in problem
    revalidated = plan_source(SCHEDULE.replace("val every 3", "val every 2") + "stack x2\ntrain 12 steps\n")
    assert schedule_problem(revalidated, mid_stage, "ckpt-000001") is None  # validation trains nothing
    shorter = plan_source(SCHEDULE + "stack x2\ntrain 6 steps\n")
    assert "changed in stage 1" in (schedule_problem(shorter, mid_stage, "c") or "")
    assert "now has 1 stages" in (schedule_problem(plan_source(SCHEDULE), mid_stage, "c") or "")


def test_where_a_checkpoint_goes_on():
    plan = plan_source(SCHEDULE + "stack x2\ntrain 12 steps\n")
    assert ResumePoint.after(_progress(plan, 0, "end", 10)) == ResumePoint(1, 0)
    mid = _progress(plan, 1, "start", 8, growth_checks=["preserved"])
    assert ResumePoint.after(mid) == ResumePoint(1, 8, grown=True, growth_checks=["preserved"])


def test_data_folders_may_be_added_for_stages_to_come_not_dropped_once_read():
    plan = plan_source(SCHEDULE)
    two = _progress(plan, 0, "start", 5, positions=[640, 0], drawn=[20, 0])
    assert data_state(two, 3, "c").positions == [640, 0, 0]
    assert data_state(two, 1, "c").positions == [640]  # the second was never read
    read = _progress(plan, 0, "start", 5, positions=[320, 320], drawn=[10, 10])
    with pytest.raises(RunError, match="read 2 data folders; the schedule now names 1"):
        data_state(read, 1, "c")
    old = _progress(plan, 0, "start", 5)  # before schema 2: one position
    old.position = 640
    assert data_state(old, 2, "c").positions == [640, 0]
