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
        decay, share = 0, None
        if st.lr_schedule == "wsd":
            if isinstance(st.lr_decay, float):
                share = st.lr_decay
                decay = max(1, round(share * total))
            else:
                steps = reader.steps(st.lr_decay, stages[group[-1]].tokens_per_step, "wsd decay")
                if steps is None:
                    return None
                decay = steps
        start = 0
        for i in group:
            out[i] = LRSchedule(
                kind=st.lr_schedule,
                max_lr=st.lr_max,
                min_lr=st.lr_min,
                warmup_steps=warmup,
                total_steps=total,
                start_step=start,
                decay_steps=decay,
                decay_shape=st.lr_decay_shape,
                decay_share=share,
            )
            start += stages[i].steps
        if warmup >= total:
            reader.warn(
                head.span,
                f"warmup ({warmup} steps) is as long as the schedule ({total} steps): the LR never decays",
                "shorten the warmup or train longer",
            )
        elif warmup + decay > total and share != 1.0:  # decay 100%: no stable phase, as asked
            reader.warn(
                st.where.get("lr_schedule", head.span),
                f"warmup ({warmup:,} steps) and decay ({decay:,} steps) are longer than the schedule ({total:,} "
                f"steps): the decay starts right after the warmup, with no stable phase",
                "shorten the decay or the warmup",
            )
        _growth_in_decay(reader, [stages[i] for i in group], out[group[0]])
    return [out[i] for i in range(len(stages))]


def _growth_in_decay(reader: Reader, group: list[LRStage], lr: LRSchedule) -> None:
    """A wsd schedule continued across a growth that falls inside its decay: the grown model starts on a
    falling LR (late growth grows at the end of the stable phase: Bu 2025)."""
    if lr.kind != "wsd":
        return
    step = 0
    for s in group:
        if s.policies and step > lr.decay_start:  # a stage that grows
            reader.warn(
                s.span,
                f"this stage's growth comes at step {step:,} of its wsd schedule, inside the decay "
                f"(from step {lr.decay_start:,}): the grown model trains only on a falling LR",
                "grow by the end of the stable phase, or shorten the decay",
            )
        step += s.steps
