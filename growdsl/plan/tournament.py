"""An operator tournament: `try GROWTH | GROWTH ... for PROBE` in a schedule.

LAG (landscape-aware growing, 2406.02469) picks the growth operator from the loss a short while after
the growth, not right at it. Each candidate is an arm: the schedule with that candidate in the try's
place. The arms share the base (every stage before the try must plan alike), grow it each their own
way into the same model, and train the stated probe: the same FLOPs after the growth in every arm (a
learned map's FLOPs come out of its probe). The lowest validation loss there wins, and its schedule
(the try replaced by the winner) is what goes on. growdsl.app.tournament runs it."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from growdsl.lang import ast
from growdsl.lang.errors import ScheduleError, Span
from growdsl.plan.baseline import experts_setting
from growdsl.plan.compiler import compile_schedule
from growdsl.plan.plan import Plan, PlanWarning, stage_record
from growdsl.plan.reading import Reader

MAX_CANDIDATES = 8  # each is a probe run of its own


@dataclass(frozen=True)
class Arm:
    """One candidate: the schedule with it in the try's place, planned, and where its probe stops."""

    number: int  # 1-based, in the order written
    candidate: str  # as written, on one line: "stack x4 init zero"
    line: int  # where it is written
    source: str  # the whole schedule with the candidate for the try (lines kept: the plans agree)
    plan: Plan
    probe_steps: int  # its steps after the growth: the probe, less what a learned map cost
    stop_step: int  # the run's global step its probe ends at

    @property
    def folder(self) -> str:
        """Its run directory's name in the tournament's: `2-stack-x4-init-zero`."""
        return f"{self.number}-" + re.sub(r"[^A-Za-z0-9.]+", "-", self.candidate).strip("-")[:60]


@dataclass(frozen=True)
class Tournament:
    line: int  # the try statement's
    arms: tuple[Arm, ...]
    base_stages: int  # the stages before the growth, trained once for every arm
    base_steps: int  # their steps: the global step every arm grows at
    probe_flops: int  # each arm's training FLOPs from the growth to its stop (a learned map's included)
    probe_stated: int  # the probe as stated, in steps of the grown model
    warnings: tuple[PlanWarning, ...] = ()  # every arm's, each once, where the schedule has them

    @property
    def flops(self) -> int:
        """What the tournament trains: the base once, every arm's probe."""
        if not self.base_stages:  # the try grows the model the schedule starts from
            return len(self.arms) * self.probe_flops
        base = self.arms[0].plan.stages[self.base_stages - 1].cumulative_flops
        start = self.arms[0].plan.start  # what it cost before, counted in cumulative_flops
        return base - (start.flops if start else 0) + len(self.arms) * self.probe_flops


def tournament_of(schedule: ast.Schedule) -> Tournament | None:
    """The schedule's tournament, its arms planned; None if it has no `try`. ScheduleError with every
    error of every arm (each said once) and of the tournament itself."""
    tries = [s for s in schedule.statements if isinstance(s, ast.Tournament)]
    if not tries:
        return None
    reader = Reader(list(schedule.syntax_errors))
    node = tries[0]
    for extra in tries[1:]:
        reader.error(
            extra.span,
            "a schedule holds one tournament: this is a second try",
            "run the first, put its winner in its place, then try the next",
        )
    texts = [_one_line(_text(schedule.source, c.span)) for c in node.candidates]
    if len(node.candidates) > MAX_CANDIDATES:
        reader.error(node.span, f"{len(node.candidates)} candidates: a tournament tries at most {MAX_CANDIDATES}")
    for i, text in enumerate(texts):
        if text in texts[:i]:
            reader.error(node.candidates[i].span, f"the candidate '{text}' is tried twice", "name each once")
    if reader.errors():
        raise ScheduleError(sorted(reader.diagnostics, key=lambda d: d.order))
    plans: list[Plan] = []
    warnings: dict[PlanWarning, None] = {}  # every arm's, each once, in order
    for candidate in node.candidates:
        try:  # blanked around the candidate: its errors and warnings point into the try, where it is written
            blanked = _arm_text(schedule.source, node, candidate, blank=True)
            warnings.update(dict.fromkeys(compile_schedule(_parsed(blanked, schedule.filename)).warnings))
        except ScheduleError as e:
            for d in e.diagnostics:
                if d.severity == "error" and d not in reader.said:
                    reader.said.add(d)
                    reader.diagnostics.append(d)
            continue
        plans.append(compile_schedule(_parsed(_arm_text(schedule.source, node, candidate), schedule.filename)))
    if reader.errors():
        raise ScheduleError(sorted(reader.diagnostics, key=lambda d: d.order))
    return replace(_checked(reader, node, texts, plans, schedule), warnings=tuple(warnings))


def _checked(
    reader: Reader, node: ast.Tournament, texts: list[str], plans: list[Plan], schedule: ast.Schedule
) -> Tournament:
    """The arms agree on the base and on the model they grow into; the probe fits the stage after."""
    first = plans[0]
    grown = next(s for s in first.stages if any(g.line >= node.span.line for g in s.growths))
    k = grown.index
    base = [stage_record(s) for s in first.stages[:k]]
    for text, plan in zip(texts[1:], plans[1:]):
        if [stage_record(s) for s in plan.stages[:k]] != base:
            reader.error(
                node.span,
                f"'{text}' trains the base otherwise than '{texts[0]}' (an LR schedule continued across the "
                f"growth in one, restarted in the other?)",
                "a tournament grows one base: give every candidate the same lr policy",
            )
        elif plan.stages[k].shape != grown.shape:
            this, that = plan.stages[k].shape.describe(), grown.shape.describe()
            if this == that:  # a mixture's load balancing is no part of the description: say it
                this += f" ({experts_setting(plan.stages[k].shape.experts).strip()})"
                that += f" ({experts_setting(grown.shape.experts).strip()})"
            reader.error(
                node.span,
                f"'{text}' grows a {this} model, '{texts[0]}' a {that} one",
                "a tournament compares ways to one model: make every candidate reach it",
            )
    if not grown.training.val_every_steps:
        reader.error(node.span, "the stage after the try has val off: a tournament ranks by validation loss")
    probe = reader.amount(node.probe, grown.training.tokens_per_step, "the probe")
    if reader.errors() or probe is None:
        raise ScheduleError(sorted(reader.diagnostics, key=lambda d: d.order))
    steps = probe[0]
    if steps > grown.steps:
        reader.error(
            node.probe.span,
            f"the probe ({steps:,} steps) is longer than the stage after the growth ({grown.steps:,} steps)",
            "a probe is a short while after the growth: shorten it",
        )
    per_step = grown.flops_per_token * grown.training.tokens_per_step
    base_steps = sum(s.steps for s in first.stages[:k])
    arms = []
    for number, (text, plan) in enumerate(zip(texts, plans), start=1):
        learned = sum(g.learn.flops for g in plan.stages[k].growths if g.learn)
        own = steps - math.ceil(learned / per_step)  # the same FLOPs as the others, a learned map's included
        if own < 1:
            reader.error(
                node.probe.span,
                f"'{text}' spends the whole probe ({steps:,} steps) on its learned map",
                "lengthen the probe past the map's steps",
            )
        source = _arm_text(schedule.source, node, node.candidates[number - 1])
        line = node.candidates[number - 1].span.line
        arms.append(Arm(number, text, line, source, plan, max(own, 1), base_steps + max(own, 1)))
    if reader.errors():
        raise ScheduleError(sorted(reader.diagnostics, key=lambda d: d.order))
    return Tournament(node.span.line, tuple(arms), k, base_steps, steps * per_step, steps)


def _parsed(source: str, filename: str) -> ast.Schedule:
    from growdsl.lang.parser import parse_partial

    return parse_partial(source, filename)


def _text(source: str, span: Span) -> str:
    start, end = span.offsets(source)
    return source[start:end]


def _one_line(text: str) -> str:
    return " ".join(text.replace("\\\n", " ").split())


def _arm_text(source: str, node: ast.Tournament, candidate: ast.Growth, blank: bool = False) -> str:
    """The schedule with the try replaced by `candidate`, every line where it was. `blank`: every column
    too (the rest of the try becomes spaces), for errors that point into the try as written."""
    (start, end), (first, last) = node.span.offsets(source), candidate.span.offsets(source)

    def filler(text: str) -> str:
        return re.sub(r"[^\n]", " ", text) if blank else "\n" * text.count("\n")

    return source[:start] + filler(source[start:first]) + source[first:last] + filler(source[last:end]) + source[end:]


def render_tournament(t: Tournament, describe) -> list[str]:
    """The tournament below a plan: its candidates (each growth as `describe` renders it), the probe, the cost."""
    arm = t.arms[0]
    grown = arm.plan.stages[t.base_stages]
    out = [
        f"tournament     line {t.line}: {len(t.arms)} candidates grow one base (trained {t.base_steps:,} steps) into "
        f"{grown.shape.describe()}; each trains {t.probe_stated:,} steps after ({t.probe_flops:.3g} FLOPs), "
        f"ranked by validation loss there",
    ]
    for a in t.arms:
        learned = f" ({a.probe_steps:,} steps after its learned map)" if a.probe_steps != t.probe_stated else ""
        for g in a.plan.stages[t.base_stages].growths:
            out.append(f"  {a.number}  {a.candidate}{learned}: {describe(g)}")
    out.append(
        f"               the tournament trains {t.flops:.3g} FLOPs (the base once, every probe); `growdsl tournament` "
        f"runs it and writes the winner's schedule"
    )
    return out
