"""Checkpoints and resume: killed anywhere, the run goes on from the newest complete checkpoint and
its loss curve equals the uninterrupted run's exactly (fixed seed, deterministic CPU)."""

import pytest
from ops_helpers import TINY_RUN

from growdsl.plan import plan_source
from growdsl.runtime import checkpoint
from growdsl.runtime.resume import _trained_part
from growdsl.runtime.trainer import RunError, Trainer

SCHEDULE = (
    TINY_RUN
    + """seed 5
checkpoint every 7 steps
growth optimizer carry
train 1L for 20 steps
stack x2 init random ramp 12 steps
train 20 steps
stack x2 init zero
train 15 steps
"""
)


class Killed(Exception):
    pass


def kill_on(fragment: str):
    def log(line: str) -> None:
        if fragment in line:
            raise Killed(line)

    return log


def curves(logs) -> dict[int, list[float]]:
    return {log.index: log.losses for log in logs}


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    plan = plan_source(SCHEDULE)
    logs = Trainer(plan, data_dir, log=lambda _: None, checkpoint_dir=tmp_path_factory.mktemp("ref")).run()
    return plan, curves(logs)


def resume_after(kill, plan, data_dir, tmp_path):
    with pytest.raises(Killed):
        Trainer(plan, data_dir, log=kill, log_every=1, checkpoint_dir=tmp_path).run()
    lines = []
    logs = Trainer(plan, data_dir, log=lines.append, checkpoint_dir=tmp_path, resume=True).run()
    return curves(logs), lines[0]


def assert_continues(resumed, reference, first_stage, first_step):
    for stage, losses in resumed.items():
        expected = reference[stage][first_step:] if stage == first_stage else reference[stage]
        assert losses == expected, stage
    assert min(resumed) == first_stage and max(resumed) == max(reference)


def test_killed_mid_stage_and_mid_ramp(reference, data_dir, tmp_path):
    plan, ref = reference
    resumed, said = resume_after(kill_on("stage 1 step 10/20"), plan, data_dir, tmp_path)
    assert said.startswith("resumed from ckpt-") and "stage 1 step 7" in said  # the cadence checkpoint
    assert_continues(resumed, ref, 1, 7)


def test_killed_mid_checkpoint_write(reference, data_dir, tmp_path, monkeypatch):
    plan, ref = reference
    real, calls = checkpoint.os.replace, []

    def dies_on_the_fourth(src, dst):
        calls.append(dst)
        if len(calls) == 4:  # the checkpoint right after the first growth: written, never committed
            raise Killed("killed while writing a checkpoint")
        real(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", dies_on_the_fourth)
    with pytest.raises(Killed):
        Trainer(plan, data_dir, log=lambda _: None, checkpoint_dir=tmp_path).run()
    monkeypatch.setattr(checkpoint.os, "replace", real)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == ["ckpt-000004.partial"]
    assert checkpoint.latest(tmp_path).name == "ckpt-000003"
    lines = []
    resumed = curves(Trainer(plan, data_dir, log=lines.append, checkpoint_dir=tmp_path, resume=True).run())
    assert "stage 0 done" in lines[0]  # the stage end before it: the growth runs again, once
    assert_continues(resumed, ref, 1, 0)


def test_killed_right_after_a_growth(reference, data_dir, tmp_path):
    plan, ref = reference
    # killed as the growth is logged, before its checkpoint: stage 1 ended, the growth runs again once
    resumed, said = resume_after(kill_on("growth (line 12)"), plan, data_dir, tmp_path / "a")
    assert "stage 1 done" in said
    assert_continues(resumed, ref, 2, 0)
    # killed after the growth's checkpoint: the growth is not applied again
    resumed, said = resume_after(kill_on("stage 2 step 1/15"), plan, data_dir, tmp_path / "b")
    assert "stage 2 step 0" in said
    assert_continues(resumed, ref, 2, 0)


def test_resuming_a_changed_schedule_is_refused_unless_only_the_future_changed(reference, data_dir, tmp_path):
    plan, _ = reference
    with pytest.raises(Killed):
        Trainer(plan, data_dir, log=kill_on("stage 1 step 10/20"), log_every=1, checkpoint_dir=tmp_path).run()
    changed = plan_source(SCHEDULE.replace("lr 1e-2 to 1e-3", "lr 2e-2 to 1e-3"))
    with pytest.raises(RunError, match="changed in stage 0"):
        Trainer(changed, data_dir, checkpoint_dir=tmp_path, resume=True).run()
    longer = plan_source(SCHEDULE.replace("train 15 steps", "train 16 steps"))  # only stage 2, not reached yet
    logs = Trainer(longer, data_dir, log=lambda _: None, checkpoint_dir=tmp_path, resume=True).run()
    assert len(logs[-1].losses) == 16


def test_killed_before_the_first_checkpoint_starts_over(reference, data_dir, tmp_path):
    plan, ref = reference
    resumed, said = resume_after(kill_on("stage 0 step 3/20"), plan, data_dir, tmp_path)
    assert said == "no checkpoint to resume from yet: the run starts from its first step"
    assert resumed == ref


def test_killed_mid_width_ramp(data_dir, tmp_path):
    schedule = """model llama dim 32 heads 2 ffn 64 vocab 400 padded
seq 32
batch 4 seqs
lr 1e-2 to 1e-3
warmup 3 steps
checkpoint every 4 steps
growth optimizer carry
train 2L dim 32 for 8 steps
widen dim 64 init random ramp 10 steps
train 12 steps
"""
    plan = plan_source(schedule)
    ref = curves(Trainer(plan, data_dir, log=lambda _: None, checkpoint_dir=tmp_path / "ref").run())
    resumed, said = resume_after(kill_on("stage 1 step 6/12"), plan, data_dir, tmp_path / "run")
    assert "stage 1 step 4" in said  # mid-ramp: the width mask was at 0.4
    assert_continues(resumed, ref, 1, 4)


def test_validation_settings_may_change_on_resume_as_they_train_nothing(reference, data_dir, tmp_path):
    plan, ref = reference
    with pytest.raises(Killed):
        Trainer(plan, data_dir, log=kill_on("stage 1 step 10/20"), log_every=1, checkpoint_dir=tmp_path).run()
    changed = plan_source(SCHEDULE.replace("seed 5", "seed 5; val every 4 steps; val tokens 320"))  # same lines
    assert changed.stages[0].training.val_every_steps != plan.stages[0].training.val_every_steps
    logs = Trainer(changed, data_dir, log=lambda _: None, checkpoint_dir=tmp_path, resume=True).run()
    assert_continues(curves(logs), ref, 1, 7)  # the loss curve is the uninterrupted run's
    assert [s for s, _ in logs[0].val_losses] == [28, 32, 36, 40]  # the new cadence, over the whole run


class Evaluations:
    """An in-run evaluator that records what it scores (and, asked to, is killed at one point)."""

    def __init__(self, kill_at: tuple[int, int] | None = None):
        self.kill_at, self.scored = kill_at, {}

    def __call__(self, model, stage, about):
        if (stage.index, about["step"]) == self.kill_at:
            raise Killed("during the evaluation")
        self.scored[stage.index, about["step"]] = dict(about)
        return {}

    def written(self, stage, step) -> bool:
        return (stage.index, step) in self.scored


@pytest.mark.parametrize("point", [(0, 7), (0, 20), (1, 20)], ids=["every", "at-growth", "at-end"])
def test_an_evaluation_killed_after_its_checkpoint_is_scored_on_resume(data_dir, tmp_path, point):
    """A checkpoint is committed before its point's evaluation: a run killed between the two owes it,
    and the resume scores it first, on the same model and numbers, then goes on."""
    plan = plan_source(SCHEDULE.replace("seed 5", "seed 5\neval every 7 steps\neval at growth\neval at end"))
    whole = Evaluations()
    Trainer(plan, data_dir, log=lambda _: None, checkpoint_dir=tmp_path / "whole", evaluator=whole).run()
    killed = Evaluations(kill_at=point)
    with pytest.raises(Killed):
        Trainer(plan, data_dir, log=lambda _: None, checkpoint_dir=tmp_path / "run", evaluator=killed).run()
    lines = []
    resumed = Evaluations()
    resumed.scored = dict(killed.scored)  # what the first try wrote
    Trainer(plan, data_dir, log=lines.append, checkpoint_dir=tmp_path / "run", resume=True, evaluator=resumed).run()
    assert f"stage {point[0]} step {point[1]}: its evaluation was never written: evaluating now" in lines
    assert resumed.scored == whole.scored
    again = Trainer(plan, data_dir, log=lines.append, checkpoint_dir=tmp_path / "run", resume=True, evaluator=resumed)
    assert again.run() == [] and sum("never written" in line for line in lines) == 1


@pytest.mark.parametrize("until, stage, step", [(30, 1, 10), (20, 1, 0)])  # inside stage 1 (mid-ramp), at stage 0's end
def test_stopped_at_a_step_then_resumed_continues_exactly(reference, data_dir, tmp_path, until, stage, step):
    plan, ref = reference
    trainer = Trainer(plan, data_dir, log=lambda _: None, checkpoint_dir=tmp_path, until=until)
    stopped = curves(trainer.run())
    assert trainer.stopped and trainer.global_step == until
    assert stopped == {0: ref[0], **({1: ref[1][:step]} if step else {})}  # stopped at `until`, no growth past it
    again = Trainer(plan, data_dir, log=lambda _: None, checkpoint_dir=tmp_path, resume=True, until=until)
    assert curves(again.run()) == {} and again.stopped  # already there: nothing trains
    logs = Trainer(plan, data_dir, log=lambda _: None, checkpoint_dir=tmp_path, resume=True).run()
    assert_continues(curves(logs), ref, stage, step)


def test_a_wsd_decay_stated_as_a_share_may_grow_with_a_longer_schedule_on_resume():
    schedule = (
        "warmup 10 steps\nlr_schedule wsd decay {}\ngrowth lr continue\ntrain 2L for 80 steps\nstack x2\ntrain {} steps"
    )
    for decay, resumable in [("20%", True), ("10 steps", True)]:
        short, longer = (plan_source(schedule.format(decay, n)).stages[0] for n in (20, 40))
        assert (_trained_part(short, False) == _trained_part(longer, False)) == resumable
        assert [short.lr.lr_at(i) for i in range(80)] == [longer.lr.lr_at(i) for i in range(80)]  # stable: the same LRs
    fixed = plan_source(schedule.format("10 steps", 20)).stages[0]
    other = plan_source(schedule.format("30 steps", 20)).stages[0]
    assert _trained_part(fixed, False) != _trained_part(other, False)  # a decay of other steps: another schedule
