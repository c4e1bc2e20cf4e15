"""A tournament's ranking: every arm's validation loss where its probe ended (the same FLOPs after the
growth in every arm), best first, as a table and a plot of the losses after the growth."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from growdsl.eval.compare import CompareError, Curve, read_run


@dataclass(frozen=True)
class Standing:
    number: int
    candidate: str
    loss: float  # validation loss at its stop
    step: int
    flops: int  # training FLOPs up to its stop, the base's included


@dataclass(frozen=True)
class ArmRun:
    """What the ranking needs of an arm: its name, run directory and where its probe ended."""

    number: int
    candidate: str
    run_dir: Path
    stop_step: int


def rank(arms: list[ArmRun]) -> list[Standing]:
    """The arms, lowest validation loss at their stop first (a diverged arm last)."""
    out = []
    for arm in arms:
        curve = read_run(arm.run_dir)
        at = _val_at(curve, arm.stop_step)
        if at is None and curve.diverged is not None:  # ranked last, at the step it diverged
            at = (math.inf, curve.diverged, int(curve.flops[-1]))
        if at is None:
            raise CompareError(f"{arm.run_dir} has no validation loss at step {arm.stop_step:,}, where its probe ended")
        out.append(Standing(arm.number, arm.candidate, *at))
    return sorted(out, key=lambda s: (not math.isfinite(s.loss), s.loss, s.number))


def diverged_at(run_dir: Path) -> int | None:
    """The first step a run's loss was not finite at; None if it never was (or it has no history yet)."""
    try:
        return read_run(run_dir).diverged
    except CompareError:
        return None


def _val_at(curve: Curve, step: int) -> tuple[float, int, int] | None:
    v = curve.val
    if v is None:
        return None
    hits = [i for i, s in enumerate(v.steps) if int(s) == step]
    if not hits:
        return None
    i = hits[-1]
    return float(v.loss[i]), step, int(v.flops[i])


def render(standings: list[Standing], probe_steps: int) -> str:
    """The ranking as a table: each arm's loss, and how far behind the winner it is."""
    best = standings[0].loss
    width = max(len(s.candidate) for s in standings)
    head = f"rank  {'candidate':<{width}}  val loss  behind  training FLOPs"
    lines = [head, "-" * len(head)]
    for place, s in enumerate(standings, 1):
        if not math.isfinite(s.loss):
            lines.append(f"{place:>4}  {s.candidate:<{width}}  diverged at step {s.step:,}")
            continue
        behind = "" if place == 1 else f"{s.loss - best:+.4f}"
        lines.append(f"{place:>4}  {s.candidate:<{width}}  {s.loss:8.4f}  {behind:>6}  {s.flops:.4g}")
    return "\n".join(lines) + f"\n(validation loss {probe_steps:,} steps after the growth, at equal FLOPs)"


def plot(arms: list[ArmRun], base_steps: int, out: Path) -> Path:
    """Validation loss against training FLOPs from the last measurement before the growth on, an arm a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for arm in arms:
        v = read_run(arm.run_dir).val
        if v is None:
            continue
        keep = [i for i, s in enumerate(v.steps) if s <= arm.stop_step]
        before = [i for i in keep if v.steps[i] <= base_steps]
        after = ([before[-1]] if before else []) + [i for i in keep if v.steps[i] > base_steps]
        ax.plot(v.flops[after], v.loss[after], marker="o", markersize=3, label=f"{arm.number}  {arm.candidate}")
    ax.set_xlabel("training FLOPs (the base's included)")
    ax.set_ylabel("validation loss")
    ax.set_title("after the growth: each candidate's probe")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
