"""LR schedules across stages: which stages share one warmup + decay, and each stage's place in it.

A new schedule starts at the first stage, after every growth with `lr restart` (the paper), and at a
stage without growth that sets its own LR; `lr continue` and a stage that sets nothing go on with the
schedule before them."""

from __future__ import annotations

from dataclasses import dataclass

from growdsl.lang.errors import Span
from growdsl.plan.plan import LRSchedule
from growdsl.plan.reading import Reader
from growdsl.plan.settings import LR_KEYS, Settings


@dataclass(frozen=True)
class LRStage:
    """What of a stage its LR schedule depends on."""

    span: Span  # its train statement
    policies: frozenset[str]  # the `lr` policies of the growths before it
    overridden: frozenset[str]  # the settings its own `with` sets
    settings: Settings
    tokens_per_step: int
    steps: int


def lr_schedules(reader: Reader, stages: list[LRStage]) -> list[LRSchedule] | None:
    """Every stage's LRSchedule; None (with errors reported) if growths or stages contradict."""
    groups: list[list[int]] = []
    ok = True
    for i, s in enumerate(stages):
        own = s.overridden & set(LR_KEYS)
        if i == 0:
            groups.append([i])
        elif "continue" in s.policies and "restart" in s.policies:
            reader.error(
                s.span,
                "contradictory lr policies in the growths before this stage",
                "use one of lr restart / lr continue",
            )
            ok = False
        elif s.policies == {"continue"}:
            if own:
                reader.error(
                    s.span,
                    f"this stage continues the LR schedule (lr continue) but sets its own {', '.join(sorted(own))}",
                    "drop the stage's LR settings, or use lr restart",
                )
                ok = False
            groups[-1].append(i)
        elif s.policies == {"restart"} or own:
            groups.append([i])
        else:
            groups[-1].append(i)
    if not ok:
        return None
    out: dict[int, LRSchedule] = {}
    for group in groups:
        head = stages[group[0]]
        st = head.settings
        warmup = reader.steps(st.warmup, head.tokens_per_step, "warmup")
        if warmup is None:
            return None
        total = sum(stages[i].steps for i in group)
        start = 0
        for i in group:
            out[i] = LRSchedule(
                kind=st.lr_schedule,
                max_lr=st.lr_max,
                min_lr=st.lr_min,
                warmup_steps=warmup,
                total_steps=total,
                start_step=start,
            )
            start += stages[i].steps
        if warmup >= total:
            reader.warn(
                head.span,
                f"warmup ({warmup} steps) is as long as the schedule ({total} steps): the LR never decays",
                "shorten the warmup or train longer",
            )
    return [out[i] for i in range(len(stages))]
