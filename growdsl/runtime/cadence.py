"""When a run does something besides training: log a line, validate, checkpoint, evaluate."""

from __future__ import annotations

from dataclasses import dataclass

from growdsl.plan.plan import Plan, Stage, validation_steps


@dataclass(frozen=True)
class Cadence:
    """What the step loop of `stage` does after its step `step` (counted from 1 in the stage). The
    stage's last step is left to the stage's end: its checkpoint and evaluation come after it."""

    stage: Stage
    log_every: int
    first_step: int  # the stage's step this process starts at (a resumed stage: the checkpoint's)
    first_global: int  # the run's optimizer steps before the stage's first step

    def logs(self, step: int) -> bool:
        """Every `log_every` steps, the stage's last, and the first this process trains (soon after starting)."""
        return step % self.log_every == 0 or step == self.stage.steps or step == self.first_step + 1

    def validates(self, step: int) -> bool:
        every = self.stage.training.val_every_steps
        if not every:
            return False
        return self.first_global + step in validation_steps(self.first_global, self.stage.steps, every)

    def checkpoints(self, step: int) -> bool:
        every = self.stage.training.checkpoint_every_steps
        return every is not None and step % every == 0 and step < self.stage.steps

    def evaluates(self, step: int) -> bool:
        every = self.stage.training.eval_every_steps
        return every is not None and step % every == 0 and step < self.stage.steps


def evaluates_after(plan: Plan, stage: Stage) -> bool:
    """`eval at end` after the last stage; `eval at growth` after a stage whose successor grows."""
    if stage.index == len(plan.stages) - 1:
        return stage.training.eval_at_end
    return stage.training.eval_at_growth and bool(plan.stages[stage.index + 1].growths)


def evaluation_point(plan: Plan, stage: Stage, step: int) -> bool:
    """Whether the schedule evaluates after `step` of `stage` (at a stage's end, or at its cadence)."""
    if step == stage.steps:
        return evaluates_after(plan, stage)
    every = stage.training.eval_every_steps
    return every is not None and step > 0 and step % every == 0
