"""RUN/history.jsonl: what a run measured, a JSON line per event, appended as it happens (the same
numbers go to TensorBoard). `growdsl compare` reads it back; each line is checked as its kind.

    {"step", "tokens", "flops", "loss", "lr", ...}              a training step (no "event")
    {"event": "val", "step", "tokens", "flops", "loss", ...}     the validation loss
    {"event": "growth", "step", "tokens", "flops", "text"}       a growth, as the log says it
    {"event": "eval", "step", "tokens", "flops", "results"}      benchmark scores ("limit": of a part)

`step` counts optimizer steps, `tokens` training tokens read, `flops` training FLOPs spent so far. A
loss may be NaN or infinite: the step where a run diverged."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from growdsl.files import parse_json
from growdsl.records.record import STRICT, Count, RecordError, Whole, parse


@dataclass(frozen=True)
class StepLine:
    __pydantic_config__ = STRICT
    step: Count
    tokens: Whole
    flops: Whole
    loss: float  # NaN or infinite where the run diverged


@dataclass(frozen=True)
class ValLine:
    __pydantic_config__ = STRICT
    event: Literal["val"]
    step: Count
    tokens: Whole
    flops: Whole
    loss: float
    val_data: str = ""  # a digest of the held-out tokens: runs on different splits do not compare
    val_tokens: Count | None = None  # how many held-out tokens


@dataclass(frozen=True)
class GrowthLine:
    __pydantic_config__ = STRICT
    event: Literal["growth"]
    step: Count
    tokens: Whole
    flops: Whole
    text: str


@dataclass(frozen=True)
class EvalLine:
    __pydantic_config__ = STRICT
    event: Literal["eval"]
    step: Count
    results: dict[str, dict[str, float]]  # {task: {metric: value}}; a NaN score is one the run wrote
    tokens: Whole = 0
    flops: Whole = 0
    limit: Count | None = None  # scored on each task's first `limit` documents only


HistoryLine = StepLine | ValLine | GrowthLine | EvalLine
KINDS: dict[str | None, type] = {None: StepLine, "val": ValLine, "growth": GrowthLine, "eval": EvalLine}


def parse_line(text: str, file: Path, number: int) -> HistoryLine:
    """One line of history.jsonl as its kind; RecordError naming the line and what is wrong."""
    where = Path(f"{file}:{number}")
    try:
        raw = parse_json(text, non_finite=True)
    except ValueError:
        raise RecordError(where, "not JSON") from None
    event = raw.get("event") if isinstance(raw, dict) else None
    if isinstance(raw, dict) and event not in KINDS:
        raise RecordError(where, f"unknown event {str(event)[:40]!r}")
    return parse(KINDS[event], raw, where)
