"""The typed plan: what a schedule means, stage by stage, with every number resolved.

Everything downstream (operators, runtime, reports) reads this and never re-derives it. The plan
is a tree of frozen, typed dataclasses that serialise to JSON losslessly (fractions as "20/23"):
`Plan.from_json(plan.to_json()) == plan`, and pydantic validates every field on the way in.
Pydantic is imported only there: building its first model costs more (~140 ms here) than
everything else `growdsl plan` does."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Literal

from growdsl.plan.freeze import Frozen
from growdsl.plan.shape import Experts, ModelShape

_STRICT = {"extra": "forbid"}  # read by pydantic when it validates JSON into these classes


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    __pydantic_config__ = _STRICT
    name: Literal["adamw"] = "adamw"
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    grad_clip: float


@dataclass(frozen=True, kw_only=True)
class Parallelism:
    __pydantic_config__ = _STRICT
    dp_shard: int | None = None  # None: every rank left after dp_replicate and tp
    dp_replicate: int = 1
    tp: int = 1
    activation_checkpoint: Literal["none", "selective", "full"] = "none"
    compile: bool = False
    # bf16 compute over float32 weights (FSDP2's policy when sharded, else autocast); auto: on GPUs only
    mixed: Literal["auto", "bf16", "off"] = "auto"

    @property
    def processes_named(self) -> int:
        """The processes its degrees name (dp_shard auto counts 1): above 1, the model is laid out over many."""
        return self.tp * self.dp_replicate * (self.dp_shard or 1)


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """The settings in force for one stage."""

    __pydantic_config__ = _STRICT

    seq_len: int
    batch_seqs: int
    micro_batch: int | None  # sequences per device per micro-step; None: the whole local batch
    seed: int
    data: str | None
    optimizer: OptimizerConfig
    mix: tuple[tuple[str, float], ...] = ()  # a mixture of prepared folders and their weights (data is None)
    parallel: Parallelism
    checkpoint_every_steps: int | None
    eval_every_steps: int | None
    eval_at_growth: bool
    eval_at_end: bool
    eval_tasks: tuple[str, ...]
    # Validation loss on val_tokens held-out tokens (spread over the split), every val_every_steps global steps
    # and at the end of every stage; None: off. It never changes training, so a resume ignores it.
    val_every_steps: int | None
    val_tokens: int
    freeze: tuple[str, ...] = ()  # what the stage does not train, by origin (growdsl.plan.freeze)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_seqs * self.seq_len


@dataclass(frozen=True, kw_only=True)
class LRSchedule:
    """Warmup then decay, over `total_steps`; a stage runs steps [start_step, start_step + steps).

    Stages joined by `lr continue` share one schedule; a growth with `lr restart` (the paper)
    starts a new one. `wsd` (warmup-stable-decay) holds the max LR after the warmup and decays only
    over the last `decay_steps`, in `decay_shape`: a growth inside the stable phase keeps its LR."""

    __pydantic_config__ = _STRICT

    kind: Literal["cosine", "linear", "constant", "wsd"]
    max_lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int
    start_step: int
    decay_steps: int = 0  # wsd: the last steps of the schedule, max LR -> min LR
    decay_shape: Literal["linear", "cosine", "sqrt"] = "linear"  # wsd: sqrt is 1 - sqrt(progress)
    decay_share: float | None = None  # wsd: the share of the schedule it was stated as (None: an amount)

    @property
    def decay_start(self) -> int:
        """wsd: the first step of the decay (never inside the warmup)."""
        return max(self.warmup_steps, self.total_steps - self.decay_steps)

    def lr_at(self, step: int) -> float:
        """The LR at `step` (0-based, counted within this stage)."""
        t = self.start_step + step
        if self.warmup_steps and t < self.warmup_steps:
            return self.max_lr * (t + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.max_lr
        if self.kind == "wsd":
            if t < self.decay_start:
                return self.max_lr
            # counted so that the decay's last step trains at min_lr: a short decay still reaches it
            progress = min(1.0, (t - self.decay_start + 1) / max(1, self.total_steps - self.decay_start))
            return _decayed(self.decay_shape, self.max_lr, self.min_lr, progress)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (t - self.warmup_steps) / span)
        return _decayed(self.kind, self.max_lr, self.min_lr, progress)


def _decayed(shape: str, max_lr: float, min_lr: float, progress: float) -> float:
    """The LR `progress` (0 to 1) of the way from max_lr down to min_lr."""
    if shape == "linear":
        return max_lr + (min_lr - max_lr) * progress
    if shape == "sqrt":
        return min_lr + (max_lr - min_lr) * (1 - math.sqrt(progress))
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class ValidationSteps:
    """The global steps after which a stage covering global steps (first, first + steps] measures
    its validation loss: every `every` steps, and at its end. Counted and tested, never listed (a
    stage may have billions of steps)."""

    first: int
    steps: int
    every: int

    @property
    def last(self) -> int:
        return self.first + self.steps

    def __contains__(self, step: int) -> bool:
        return self.first < step <= self.last and (step % self.every == 0 or step == self.last)

    def __len__(self) -> int:
        multiples = self.last // self.every - self.first // self.every
        return multiples + (self.last % self.every != 0)

    def __iter__(self):
        yield from range(self.first - self.first % self.every + self.every, self.last + 1, self.every)
        if self.last % self.every:
            yield self.last


def validation_steps(first: int, steps: int, every: int) -> ValidationSteps:
    return ValidationSteps(first, steps, every)


@dataclass(frozen=True, kw_only=True)
class LayerOrigin:
    """Where one layer of a grown model comes from.

    source: the layer of the model before the growth that the map puts here (its weights are
    used unless init is "random"); init: how the growth's operator starts it (its description's
    words, growdsl.plan.operators): copy (bit-exact), zero (copy with the attention output and
    MLP down projections zeroed: an identity block), random (fresh, faded in by a mask), learn
    (LiGO, starting from the copy), fresh (a stage-0 layer); root: the stage-0 layer this one
    descends from (None for random layers). After a width growth every layer keeps its source
    and root, and init says how its new units start."""

    __pydantic_config__ = _STRICT

    source: int | None
    init: str
    root: int | None


Guarantee = Literal["exact", "approximate", "none"]


@dataclass(frozen=True, kw_only=True)
class LearnPhase:
    """LiGO: the growth map is trained for `steps` before ordinary training resumes."""

    __pydantic_config__ = _STRICT

    steps: int
    lr: float
    warmup_steps: int
    tokens: int
    flops: int


@dataclass(frozen=True, kw_only=True)
class _GrowthBase:
    __pydantic_config__ = _STRICT
    operator: str  # its name (growdsl.plan.operators)
    guarantee: Guarantee  # does the grown model compute the same function as the base?
    guarantee_note: str
    optimizer: Literal["reset", "carry"]  # AdamW moments: fresh (the paper) or mapped
    lr: Literal["restart", "continue"]  # LR schedule: warmup + decay again (the paper) or go on
    ramp_steps: int | None = None  # the mask goes 0 -> 1 over this many steps (an operator's `ramp`)
    learn: LearnPhase | None = None  # the growth map trains first (an operator's `learn`)
    options: dict[str, float] = field(default_factory=dict)  # the operator's other options, resolved
    line: int  # where the growth statement is in the schedule


@dataclass(frozen=True, kw_only=True)
class DepthGrowth(_GrowthBase):
    kind: Literal["depth"] = "depth"
    method: Literal["stack", "interpolate", "pattern"]
    pattern: str  # the paper's notation, 1-based (as written, or derived)
    source_layers: int
    target_layers: int
    factor: Fraction  # target / source layers: the paper's g
    layer_map: tuple[LayerOrigin, ...]
    connection_rate: Fraction  # R_c
    placement: str | None = None  # as named (`after every 4`, `middle 4 x2`), when the map was not written out

    @property
    def sources(self) -> list[int]:
        """The source layer of every target layer (a depth growth's map gives every one)."""
        return [o.source for o in self.layer_map if o.source is not None]


@dataclass(frozen=True, kw_only=True)
class WidthGrowth(_GrowthBase):
    kind: Literal["width"] = "width"
    source: ModelShape
    target: ModelShape


@dataclass(frozen=True, kw_only=True)
class ExpertsGrowth(_GrowthBase):
    """Upcycling: the feed-forward of every block `experts.every` names becomes a mixture of experts
    started from it (the operator says how); every other weight stays as it is."""

    kind: Literal["experts"] = "experts"
    experts: Experts


Growth = DepthGrowth | WidthGrowth | ExpertsGrowth


@dataclass(frozen=True, kw_only=True)
class GrowthTiming:
    """The paper's guideline next to what the schedule does, for the growth before a stage."""

    __pydantic_config__ = _STRICT

    target_params: int  # N: the model after this growth
    target_tokens: int  # D: tokens trained from this growth to the end
    compute: float  # C = 6 N D
    predicted_d: float  # tokens the base should train before growing
    used_d: int  # tokens the schedule trains the model before this growth
    factor: Fraction | None  # g of the depth growth, if any


@dataclass(frozen=True, kw_only=True)
class Stage:
    __pydantic_config__ = _STRICT
    index: int
    line: int  # the `train` statement
    shape: ModelShape
    growths: tuple[Growth, ...]  # applied, in order, before this stage trains
    layers: tuple[LayerOrigin, ...]
    params: int
    auto: bool  # tokens resolved by the growth-timing guideline
    tokens: int  # steps * tokens per step
    steps: int
    flops_per_token: int
    flops: int  # this stage's training, plus any LiGO phase of its growths
    cumulative_tokens: int
    cumulative_flops: int
    training: TrainingConfig
    lr: LRSchedule
    timing: GrowthTiming | None
    frozen: Frozen = Frozen()  # `freeze`: what it does not train (flops_per_token counts only what it does)
    trainable_params: int | None = None  # the parameters it trains (None in records from before freezing: all)


@dataclass(frozen=True, kw_only=True)
class Baseline:
    """The paper's comparison: the final model trained from scratch on the same total FLOPs, with
    the final stage's batch (`growdsl baseline` writes its schedule)."""

    __pydantic_config__ = _STRICT
    steps: int
    tokens: int
    flops: int


@dataclass(frozen=True, kw_only=True)
class Totals:
    __pydantic_config__ = _STRICT
    tokens: int
    flops: int
    params: int  # the final model
    baseline: Baseline | None  # None: no growth, the schedule is its own baseline
    val_flops: int  # forward passes of the validation loss: counted apart from `flops`


@dataclass(frozen=True, kw_only=True)
class PlanWarning:
    """Something legal but probably unintended, with its place in the schedule (1-based)."""

    __pydantic_config__ = _STRICT

    message: str
    hint: str | None
    line: int | None  # None: of the whole schedule; else all four are set
    col: int | None
    end_line: int | None
    end_col: int | None


@dataclass(frozen=True, kw_only=True)
class Start:
    """The existing model a schedule starts from (`model from "DIR"`): stage 0 begins with its weights
    instead of a fresh init. What it cost is the schedule's to state (`trained 2T`); a growdsl run's is
    recorded; 0 otherwise."""

    __pydantic_config__ = _STRICT
    name: str  # as the schedule names it
    folder: str  # where it is (absolute): a Hugging Face folder, or a growdsl checkpoint
    kind: Literal["hf", "run"]  # a Hugging Face Llama folder, or a growdsl run's checkpoint
    shape: ModelShape
    tokens: int  # the tokens it was trained on, as stated or recorded
    flops: int  # their training FLOPs (stated: at stage 0's sequence length)
    recorded: bool = False  # its cost is a growdsl run's record, not the schedule's statement

    @property
    def tokenizer_folder(self) -> str:
        """Where its tokenizer is: the folder, or a checkpoint's run."""
        return str(Path(self.folder).parent.parent) if self.kind == "run" else self.folder


@dataclass(frozen=True, kw_only=True)
class Plan:
    __pydantic_config__ = _STRICT
    source: str
    schedule_sha256: str
    stages: tuple[Stage, ...]
    totals: Totals
    warnings: tuple[PlanWarning, ...] = ()
    start: Start | None = None  # the model stage 0 starts from (`model from`); None: a fresh one

    def to_json(self, indent: int | None = None) -> str:
        """JSON as pydantic would write it (fractions as "20/23"), without importing pydantic."""
        return json.dumps(asdict(self), indent=indent, default=_fraction_text)

    @staticmethod
    def from_json(text: str | bytes) -> Plan:
        """Load and validate a plan (pydantic.ValidationError if it is not one)."""
        return _adapter().validate_json(text)


def stage_record(stage: Stage) -> dict:
    """A stage as JSON-ready data (fractions as "20/23"): what a checkpoint records of its plan."""
    return json.loads(json.dumps(asdict(stage), default=_fraction_text))


# Fields whose absence from an older record says what they were: before mixtures, no mixture.
_ABSENT_MEANS: dict[str, object] = {"mix": []}


def with_fields_since(record: dict, current: dict) -> dict:
    """An older growdsl's stage record with the fields it predates taken from `current` (the same
    stage as this growdsl records it): what it never recorded, it cannot contradict; except where
    the absence itself says what the run did (_ABSENT_MEANS)."""
    if not isinstance(record, dict) or not isinstance(current, dict):
        return record
    out = dict(record)
    for key, value in current.items():
        if key not in out:
            out[key] = _ABSENT_MEANS.get(key, value)
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = with_fields_since(out[key], value)
    return out


def stage_from_record(record: dict) -> Stage:
    """A stage a checkpoint recorded, validated (pydantic's ValidationError, a ValueError, if it is not one)."""
    return _stage_adapter().validate_python(record)


def _fraction_text(value) -> str:
    if isinstance(value, Fraction):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


@functools.lru_cache(maxsize=1)
def _adapter():
    from pydantic import TypeAdapter

    return TypeAdapter(Plan)


@functools.lru_cache(maxsize=1)
def _stage_adapter():
    from pydantic import TypeAdapter

    return TypeAdapter(Stage)
