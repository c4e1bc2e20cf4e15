"""A checkpoint's progress.json: where a run stands, and where checkpoints lie in a run.

RUN/checkpoints/ckpt-NNNNNN/       one committed checkpoint (NAME.partial/ while it is written)
    progress.json                  the record below
    manifest.json                  size and SHA-256 of every other file, written last
    .metadata, __0_0.distcp, ...   torch.distributed.checkpoint's files (growdsl.runtime.checkpoint)"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from growdsl import __version__
from growdsl.errors import GrowdslError
from growdsl.files import FileProblem, read_json
from growdsl.records.record import STRICT, Count, RecordError, Whole, parse

PREFIX, PROGRESS, MANIFEST = "ckpt-", "progress.json", "manifest.json"
# The layout of progress.json and its plan records (2: positions per data folder); newer is refused, older read
SCHEMA = 2
Phase = Literal["start", "end"]  # about to run a step of the stage, or the stage done


class CheckpointError(GrowdslError):
    """A checkpoint that cannot be used; the message names the file and says why."""


class NewerCheckpoint(CheckpointError):
    """A checkpoint a newer growdsl wrote: not damaged, and not to be passed over."""


@dataclass
class RampRecord:
    """A live growth ramp (growdsl.ops.ramp.Ramp): the module holding its mask (a block, or "" for a
    width ramp on the model), its length and the steps done; `old` (dim, heads, ffn) of a width ramp."""

    __pydantic_config__ = STRICT
    name: str
    steps: Count
    step: Count
    old: list[Count] | None = None


@dataclass
class Progress:
    """Where a run stands. phase "start": stage `stage` is about to run step `step` (its growths
    applied); "end": stage `stage` has finished (its successor's growths not applied yet)."""

    __pydantic_config__ = STRICT
    seq: Count
    stage: Count
    phase: Phase
    step: Count
    position: Count
    global_step: Count
    flops: Whole  # counted in Python's integers: a 7B run passes 2^63
    plan_prefix: list[dict]  # the records of stages 0..stage: resuming needs them unchanged
    ramps: list[RampRecord] = field(default_factory=list)
    optimizer_names: list[str] = field(default_factory=list)
    growth_checks: list[str] = field(default_factory=list)
    val_flops: Whole = 0  # validation's forward passes so far (not training compute)
    growdsl: str = ""  # the version that wrote it ("" before versions were recorded)
    schema: Count = 0  # SCHEMA when written (0: before it was recorded)
    positions: list[Count] = field(default_factory=list)  # per source of the run's data (schema 2; [] = one)
    drawn: list[Count] = field(default_factory=list)  # per source, sequences drawn under the stage's weights
    start: dict | None = None  # the model the run started from (`model from`), as its plan records it

    def problem(self) -> str | None:
        """What in it cannot be, its fields each of the right type: None when it can."""
        if len(self.drawn) != len(self.positions) or (self.positions and sum(self.positions) != self.position):
            return f"positions {self.positions} and drawn {self.drawn} do not agree with position {self.position}"
        if self.stage != len(self.plan_prefix) - 1:
            return f"stage {self.stage} is not the last of the {len(self.plan_prefix)} stages it records"
        for r in self.ramps:
            if r.step >= r.steps:  # a ramp is removed the step it ends
                return f"ramps: {r.name[:80]!r} is at step {r.step} of {r.steps}, which a live ramp cannot be"
        return None


def committed(directory: Path) -> list[Path]:
    """The committed checkpoints of a run's checkpoint folder, newest first."""
    if not directory.is_dir():
        return []
    found = [p for p in directory.glob(f"{PREFIX}*") if p.is_dir() and re.fullmatch(r"\d{6,}", p.name[len(PREFIX) :])]
    return sorted(found, reverse=True)


def is_committed(path: Path) -> bool:
    """Whether `path` is named as a committed checkpoint (not a .partial or .damaged-N one)."""
    return re.fullmatch(rf"{PREFIX}\d{{6,}}", path.name) is not None


def read_progress(path: Path) -> Progress:
    """A checkpoint's progress.json, every field of the type it must have (a value of another type,
    or a stage or phase that cannot be, is refused before anything uses it); CheckpointError."""
    file = path / PROGRESS
    try:
        p = parse(Progress, read_json(file), file)
    except FileNotFoundError:
        raise CheckpointError(f"{file} is missing") from None
    except (FileProblem, RecordError) as e:
        raise CheckpointError(str(e)) from None
    except OSError as e:
        raise CheckpointError(f"{file} is unreadable: {e.strerror}") from None
    wrong = p.problem()
    if wrong:
        raise CheckpointError(f"{file}: {wrong}")
    if p.schema > SCHEMA:
        raise NewerCheckpoint(
            f"{path.name} was written by growdsl {p.growdsl or '?'} (checkpoint schema {p.schema}); this growdsl "
            f"{__version__} reads schema {SCHEMA} and older: upgrade growdsl"
        )
    return p
