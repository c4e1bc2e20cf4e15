"""Resuming a run: finding the checkpoint to go on from, checking that the schedule still agrees
with what it has trained, and where training goes on.

A schedule may change only in what is still to come: a checkpoint records the plan of every stage
it has begun (`plan_prefix`), and a stage already trained must read the same now, but for what
trains nothing (validation, the guideline's notes, how far an LR schedule runs on into later
stages). The stage in progress may grow longer, not shorter than the step reached."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from growdsl.errors import RunError
from growdsl.plan.plan import Plan, Stage, stage_from_record, stage_record, with_fields_since
from growdsl.runtime import checkpoint
from growdsl.runtime.distributed import World
from growdsl.runtime.mixture import MixtureState


@dataclass(frozen=True)
class ResumePoint:
    """Where training goes on: stage `stage` at its step `step`; `grown` when that stage's growths
    are already in the model (then `growth_checks` are their checks, as logged)."""

    stage: int = 0
    step: int = 0
    grown: bool = False
    growth_checks: list[str] = field(default_factory=list)

    @staticmethod
    def after(p: checkpoint.Progress) -> ResumePoint:
        """Where a checkpoint goes on: the next stage's growths after a stage's end, else its next step."""
        if p.phase == "end":
            return ResumePoint(p.stage + 1)
        return ResumePoint(p.stage, p.step, grown=True, growth_checks=list(p.growth_checks))


FIRST_STEP = ResumePoint()


def newest_checkpoint(
    directory: Path, world: World, say: Callable[[str], None]
) -> tuple[Path, checkpoint.Progress] | None:
    """The newest good checkpoint of the folder, found by the first rank for every rank; None when the
    run has none yet. Every checkpoint damaged, or a newer growdsl's, is a RunError."""
    found = newer = None
    none_yet = not checkpoint.committed(directory)
    if world.main and not none_yet:
        try:
            found = checkpoint.newest_good(directory, say=say)
        except checkpoint.NewerCheckpoint as e:
            newer = str(e)
    none_yet, found, newer = world.share((none_yet, found, newer))
    if none_yet:
        return None
    if newer:
        raise RunError(newer)
    if found is None:
        raise RunError(f"every checkpoint in {directory} is damaged (see above): nothing to resume from")
    return found


def schedule_problem(plan: Plan, p: checkpoint.Progress, name: str) -> str | None:
    """Why `plan` cannot go on from the checkpoint `name` whose progress is `p`, or None."""
    if len(plan.stages) < len(p.plan_prefix):
        return f"the schedule now has {len(plan.stages)} stages; the checkpoint is in stage {p.stage}"
    try:
        trained = [
            stage_from_record(with_fields_since(record, stage_record(stage)))
            for record, stage in zip(p.plan_prefix, plan.stages)
        ]
    except ValueError as e:
        return f"{name} records a plan this growdsl does not read: {str(e).splitlines()[0]}"
    if _same_model(p.start) != _same_model(start_record(plan)):
        now = plan.start.folder if plan.start else "a fresh one"
        then = (p.start or {}).get("folder", "a fresh one")
        return (
            f"the schedule starts from another model ({now}) than {name} grew from ({then}): name the "
            f"model the run started from (a run's checkpoint by its own folder)"
        )
    for old, new in zip(trained, plan.stages):
        current = old.index == p.stage
        if _trained_part(old, current) != _trained_part(new, current) or (current and new.steps < p.step):
            return (
                f"the schedule changed in stage {old.index} (line {old.line}), which the checkpoint {name} has "
                f"already trained: resume only with changes to what is still to come"
            )
    return None


def data_state(p: checkpoint.Progress, folders: int, name: str) -> MixtureState:
    """Each of the run's `folders` data folders' position and draws, as the checkpoint left them (one
    folder before schema 2: `position`). A folder the schedule added for stages still to come
    starts at its first token; one it dropped must not have been read."""
    positions, drawn = (list(p.positions), list(p.drawn)) if p.positions else ([p.position], [0])
    while len(positions) > folders and positions[-1] == 0:
        positions.pop(), drawn.pop()
    if len(positions) > folders:
        raise RunError(
            f"{name} read {len(positions)} data folders; the schedule now names {folders}: resume with the "
            f"data it trained on"
        )
    pad = [0] * (folders - len(positions))
    return MixtureState(positions + pad, drawn + pad)


def start_record(plan: Plan) -> dict | None:
    """The model a plan starts from, as a checkpoint records it (its name in the schedule left out)."""
    if plan.start is None:
        return None
    record = json.loads(json.dumps(asdict(plan.start)))
    record.pop("name")
    return record


def _same_model(record: dict | None) -> dict | None:
    """What makes a start the same model: all but where it lies (a folder may move)."""
    return None if record is None else {k: v for k, v in record.items() if k != "folder"}


def _trained_part(stage: Stage, current: bool) -> object:
    """What of a stage a checkpoint has already trained: all of a finished stage but the guideline
    notes, its validation settings (validation trains nothing) and the length of an LR schedule that
    runs on into later stages; of the stage in progress, its model, growths and data."""
    if current:
        return (stage.shape, stage.growths, stage.layers, stage.training.data, stage.training.mix, stage.frozen)
    # a decay stated as a share of the schedule grows with it, as its length does
    decay = 0 if stage.lr.decay_share is not None else stage.lr.decay_steps
    return replace(
        stage,
        timing=None,
        lr=replace(stage.lr, total_steps=0, decay_steps=decay),
        training=replace(stage.training, val_every_steps=None, val_tokens=0),
    )
