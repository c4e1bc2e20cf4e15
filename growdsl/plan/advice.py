"""Should I grow? The limits measured since the paper, checked against a planned schedule.

Each is a warning, never an error: growth may still pay outside them, it has just not been shown to.
Each names its source and says in one line what it means for this schedule. Where a schedule does
what a source measured (the paper's own runs, G_stack 7B on 2T tokens), they stay silent."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from growdsl.plan import guideline
from growdsl.plan.plan import DepthGrowth, Stage, Start

COMPUTE_OPTIMAL = 20  # tokens per parameter (Hoffmann et al. 2022)
# The furthest the paper measured growth to pay: its 410M-class target (373.9M parameters) on 750B
# tokens, +31% at 700B (down from +53% at 400B); 1% over it for a schedule's rounding to whole steps.
MEASURED_TOKENS_PER_PARAM = 750e9 / 373_867_520
OVERTRAINED = 10  # a base trained past this many times its compute-optimal tokens (the paper's: 11 to 70 a parameter)
TOO_EARLY = 10  # a base trained on less than 1/TOO_EARLY of the guideline's d
LATE = 0.5  # a growth this far into its wsd schedule, continued across it, is a late growth (Bu 2025)

PAPER = "Du et al. 2024"
WARMSTART = '"When is warmstarting effective?", 2605.13405'
OVERTRAINED_SOURCE = "Reusing overtrained LMs, 2510.06548"
LATE_SOURCE = "Bu 2025, 2511.04981"


@dataclass(frozen=True)
class Advice:
    """One limit a growth is past: the growth before stage `stage`, the `growth`-th of them."""

    stage: int
    growth: int
    message: str  # what, with this schedule's numbers
    meaning: str  # what that means for it, in one line
    source: str


def advise(stages: tuple[Stage, ...] | list[Stage], start: Start | None) -> list[Advice]:
    """What the measured limits say of every growth in a planned schedule."""
    out: list[Advice] = []
    for stage in stages:
        if all(g.kind == "experts" for g in stage.growths):  # none, or upcyclings: these limits are stacking's
            continue
        i, last = stage.index, len(stage.growths) - 1
        out += _factor(stage, start)
        # the model this growth grows, and the tokens it (and the models it grew from) trained on
        if i:
            base_params, base_tokens = stages[i - 1].params, stages[i - 1].cumulative_tokens
        else:
            assert start is not None  # stage 0 grows only a model it starts from
            base_params, base_tokens = start.shape.params, start.tokens
        # a late growth trains its small base long on purpose (Bu 2025)
        if base_tokens > OVERTRAINED * COMPUTE_OPTIMAL * base_params and not _late(stage):
            per = base_tokens / base_params
            out.append(
                Advice(
                    i,
                    last,
                    f"the base trained {per:,.0f} tokens a parameter, {per / COMPUTE_OPTIMAL:.0f}x compute-optimal "
                    f"({COMPUTE_OPTIMAL})",
                    "growing an overtrained base pays less, the less the more it trained: expect less than the "
                    "paper's saving, whose bases trained 11 to 70 tokens a parameter",
                    OVERTRAINED_SOURCE,
                )
            )
        timing = stage.timing
        if timing is not None and _fitted(timing.target_params) and timing.used_d * TOO_EARLY < timing.predicted_d:
            out.append(
                Advice(
                    i,
                    last,
                    f"the base trains {_tokens(timing.used_d)} tokens before this growth, under a tenth of the "
                    f"guideline's d = {_tokens(timing.predicted_d)}",
                    "a base grown this early has learned little to pass on: the paper finds d near 0 behaves "
                    "like scratch (and even 1B tokens helps)",
                    PAPER,
                )
            )
        after = sum(s.tokens for s in stages[i:])
        if after > 1.01 * MEASURED_TOKENS_PER_PARAM * stage.params:
            per = after / stage.params
            out.append(
                Advice(
                    i,
                    last,
                    f"the grown model trains {per:,.0f} tokens a parameter, past the furthest growth was measured "
                    f"to pay ({MEASURED_TOKENS_PER_PARAM:,.0f}: the paper's 410M on 750B tokens, +31%)",
                    "the saving shrinks with the tokens a parameter and scratch eventually wins: "
                    f"{WARMSTART} finds the gains mainly below ~20 tokens a parameter",
                    f"{PAPER}; {WARMSTART}",
                )
            )
    return out


def _factor(stage: Stage, start: Start | None) -> list[Advice]:
    """g outside the paper's 2-4: for a whole-model growth of a base this schedule trains. A named
    placement (LLaMA-Pro, MIDAS) grows by a few layers by design, and a late growth (Bu 2025) far."""
    depth = [(k, g) for k, g in enumerate(stage.growths) if isinstance(g, DepthGrowth)]
    if start is not None or not depth:
        return []
    k, g = depth[-1]
    factor = Fraction(1)
    for _, d in depth:
        factor *= d.factor
    if guideline.g_in_range(factor) or any(d.placement for _, d in depth) or _late(stage):
        return []
    less = factor < guideline.G_RANGE[0]
    return [
        Advice(
            stage.index,
            k,
            f"growth factor g = {_fraction(factor)} is outside the paper's 2-4",
            (
                "a growth this small saves little: the grown model is mostly the base, the paper used g = 4"
                if less
                else f"expect less than the paper's saving: it finds 2-4 best (g = 4); {WARMSTART} finds g = 2 "
                "the most reliable"
            ),
            PAPER if less else f"{PAPER}; {WARMSTART}",
        )
    ]


def _late(stage: Stage) -> bool:
    """A single growth late in a wsd schedule it continues (Bu 2025's late growth, which grows far)."""
    lr = stage.lr
    return lr.kind == "wsd" and stage.lr.start_step >= LATE * lr.total_steps and stage.growths[-1].lr == "continue"


def _fitted(params: float) -> bool:
    return guideline.FITTED[0] <= params <= guideline.FITTED[1]


def _tokens(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n:,.0f}"


def _fraction(f: Fraction) -> str:
    return f"{float(f):g}" if f.denominator == 1 else f"{float(f):.2f}"
