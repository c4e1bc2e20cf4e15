"""Runs side by side, in the paper's terms: the speedup at equal loss,

    speedup(loss) = FLOPs_baseline(loss) / FLOPs_run(loss) - 1,

where FLOPs_X(loss) is the training compute (smaller models' included, as every run logs it) at
which X's loss first reaches `loss`, interpolated linearly between measurements. The first run is
the baseline (the scratch run); the levels span the baseline's own curve, from a tenth of the way
in down to its lowest loss: the last level is the baseline's final loss when it ends lowest.

The yardstick is the validation loss (the same held-out tokens for every run, measured by
`growdsl run` at its `val` cadence) when every run has it on the same number of tokens; it
needs no smoothing. Otherwise the training loss, smoothed by a trailing moving average (a level
counts as reached when the average of the last `window` steps gets there, never by one lucky
batch), and the report says why. Plots: loss against FLOPs and tokens, growths marked, levels
labelled; the runs' final benchmark scores, one panel per metric."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from growdsl.errors import UsageError
from growdsl.files import not_plain_under
from growdsl.records.history import EvalLine, GrowthLine, StepLine, ValLine, parse_line
from growdsl.records.record import RecordError


class CompareError(UsageError):
    pass


@dataclass
class Points:
    """Loss measurements along a run: steps, cumulative tokens and training FLOPs, loss."""

    steps: np.ndarray
    tokens: np.ndarray
    flops: np.ndarray
    loss: np.ndarray


@dataclass
class Curve:
    name: str
    steps: np.ndarray
    tokens: np.ndarray
    flops: np.ndarray
    loss: np.ndarray
    growths: list[GrowthLine] = field(default_factory=list)
    evals: list[EvalLine] = field(default_factory=list)
    val: Points | None = None  # the validation loss, where the run measured it
    val_tokens: int | None = None  # how many held-out tokens it was measured on
    val_data: str | None = None  # which held-out split (a digest of its tokens)
    diverged: int | None = None  # the first step whose loss was not finite (left out of the curve)

    def smoothed(self, window: int) -> np.ndarray:
        cumulative = np.concatenate([[0.0], np.cumsum(self.loss)])
        i = np.arange(1, len(self.loss) + 1)
        start = np.maximum(0, i - window)
        return (cumulative[i] - cumulative[start]) / (i - start)


def read_run(run_dir: Path) -> Curve:
    """A run's history.jsonl; a step logged twice (redone after a resume) counts once, the last time.
    A line that is not a history record is an error naming it."""
    history = run_dir / "history.jsonl"
    if not history.exists():
        raise CompareError(f"{run_dir} has no history.jsonl: is it a growdsl run directory?")
    problem = not_plain_under(run_dir)
    if problem:
        raise CompareError(f"{problem}: compare reads only plain files in a run directory")
    steps: dict[int, StepLine] = {}
    vals: dict[int, ValLine] = {}
    growths: dict[tuple, GrowthLine] = {}
    evals: dict[int, list[EvalLine]] = {}
    nonfinite: dict[int, bool] = {}  # step -> whether its last training loss was not finite
    for number, line in enumerate(history.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = parse_line(line, history, number)
        except RecordError as e:
            raise CompareError(f"{e.file}: not a history record ({e.detail}): {line[:80]!r}") from None
        if isinstance(record, (StepLine, ValLine)) and not math.isfinite(record.loss):  # diverged: not a point
            nonfinite[record.step] = True
            continue
        if isinstance(record, StepLine):
            nonfinite[record.step] = False  # redone after a resume, finite this time
            steps[record.step] = record
        elif isinstance(record, ValLine):
            vals[record.step] = record
        elif isinstance(record, GrowthLine):
            growths[(record.step, record.text)] = record
        else:
            evals.setdefault(record.step, []).append(record)
    if len(steps) < 2:
        raise CompareError(f"{run_dir} has logged {len(steps)} training step(s): nothing to compare yet")
    curve = Curve(
        run_dir.name,
        *_columns(steps),
        sorted(growths.values(), key=lambda g: g.step),
        [e for k in sorted(evals) for e in evals[k]],
    )
    curve.diverged = min((step for step, bad in nonfinite.items() if bad), default=None)
    if vals:
        curve.val = Points(*_columns(vals))
        curve.val_tokens = vals[max(vals)].val_tokens
        curve.val_data = vals[max(vals)].val_data or None
    return curve


def _columns(
    records: dict[int, StepLine] | dict[int, ValLine],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps, tokens, FLOPs and losses of the records, in the order of their steps."""
    ordered = [records[k] for k in sorted(records)]
    steps, tokens, flops, loss = (
        np.array([getattr(r, c) for r in ordered], dtype=np.float64) for c in ("step", "tokens", "flops", "loss")
    )
    return steps, tokens, flops, loss


def compute_to_reach(flops: np.ndarray, loss: np.ndarray, level: float) -> float | None:
    """The FLOPs at which `loss` first reaches `level` (linear between steps); None if never."""
    below = np.nonzero(loss <= level)[0]
    if len(below) == 0:
        return None
    i = below[0]
    if i == 0:
        return float(flops[0])
    f0, f1, l0, l1 = flops[i - 1], flops[i], loss[i - 1], loss[i]
    return float(f0 + (l0 - level) / (l0 - l1) * (f1 - f0))


@dataclass
class Report:
    runs: list[Curve]
    yardstick: str  # "validation" or "training"
    why: str  # why this yardstick
    window: int  # the training loss's moving average (1 for validation loss)
    curves: list[Points]  # the loss each run is judged on, as compared
    levels: list[float]
    compute: list[list[float | None]]  # [level][run]: FLOPs to reach it
    plots: list[Path]

    def speedup(self, level: int, run: int) -> float | None:
        base, this = self.compute[level][0], self.compute[level][run]
        return None if base is None or this is None else base / this - 1

    @property
    def loss_label(self) -> str:
        if self.yardstick == "validation":
            return f"validation loss ({self.runs[0].val_tokens:,} held-out tokens)"
        return f"training loss (moving average of {self.window} steps)"


def compare(run_dirs: list[Path], out: Path, smooth: int | None = None, n_levels: int = 5) -> Report:
    if len(run_dirs) < 2:
        raise CompareError("give at least two runs: the baseline first, then the runs to compare with it")
    from growdsl.files import unwritable_folder

    why = unwritable_folder(out)
    if why:
        raise CompareError(f"--out: {why}")
    runs = [read_run(r) for r in run_dirs]
    _same_tokenizer(run_dirs)
    yardstick, why = _yardstick(runs)
    if yardstick == "validation":
        window = 1
        curves = [r.val for r in runs if r.val is not None]  # the yardstick: every run has one
    else:
        window = smooth or max(1, round(0.02 * min(len(r.loss) for r in runs)))
        curves = [Points(r.steps, r.tokens, r.flops, r.smoothed(window)) for r in runs]
    base = curves[0].loss
    top = base[len(base) // 10]  # the baseline's loss a tenth of the way in
    levels = [float(x) for x in np.linspace(top, base.min(), n_levels)]
    compute = [[compute_to_reach(c.flops, c.loss, level) for c in curves] for level in levels]
    report = Report(runs, yardstick, why, window, curves, levels, compute, [])
    report.plots = plot(report, out)
    return report


def _same_tokenizer(run_dirs: list[Path]) -> None:
    """Losses are in nats per token: runs whose tokenizers differ measure different things."""
    digests = {}
    for run in run_dirs:
        file = run / "tokenizer.json"
        if file.is_file():
            digests[run] = hashlib.sha256(file.read_bytes()).hexdigest()
    if len(set(digests.values())) > 1:
        first = next(iter(digests))
        other = next(r for r, d in digests.items() if d != digests[first])
        raise CompareError(
            f"{first} and {other} were trained with different tokenizers: their losses are per token of "
            f"different vocabularies and do not compare; compare runs on the same prepared data"
        )


def _yardstick(runs: list[Curve]) -> tuple[str, str]:
    """Validation loss when every run measured it (twice at least) on the same held-out tokens."""
    lacking = [r.name for r in runs if r.val is None or len(r.val.loss) < 2]
    if lacking:
        return "training", f"{', '.join(lacking)} measured no validation loss"
    sizes = {r.val_tokens for r in runs}
    if None in sizes:
        return "training", ", ".join(
            r.name for r in runs if r.val_tokens is None
        ) + " did not record its validation set"
    splits = {r.val_data for r in runs if r.val_data}
    if len(splits) > 1:
        return "training", "the runs measured validation loss on different held-out data"
    if len(sizes) > 1:
        return "training", (
            "the runs measured validation loss on different numbers of held-out tokens ("
            + ", ".join(f"{r.name} {r.val_tokens:,}" for r in runs)
            + ")"
        )
    return "validation", "every run measured it on the same held-out tokens"


def render(report: Report) -> str:
    names = [r.name for r in report.runs]
    lines = [
        f"baseline: {names[0]}; loss: {report.loss_label}, as {report.why}",
        "speedup = FLOPs_baseline / FLOPs_run - 1 at equal loss",
        "",
    ]
    lines.append(f"{'level':>5}  {'loss':>8}  {'baseline FLOPs':>14}" + "".join(f"  {n[:28]:>28}" for n in names[1:]))
    for i, level in enumerate(report.levels):
        cells = []
        for j in range(1, len(names)):
            s = report.speedup(i, j)
            cells.append(f"{'not reached':>28}" if s is None else f"{s:>+27.1%} ")
        base = report.compute[i][0]
        lines.append(f"{'L' + str(i + 1):>5}  {level:>8.4f}  {base:>14.4g}" + "".join(f"  {c}" for c in cells))
    final = "  ".join(f"{r.name} {c.loss[-1]:.4f}" for r, c in zip(report.runs, report.curves))
    lines += ["", f"final {report.yardstick} loss: {final}"]
    lines += [
        f"note: {r.name}'s loss was not finite from step {r.diverged} on: its curve ends before it"
        for r in report.runs
        if r.diverged is not None
    ]
    scores, notes = final_scores(report.runs)
    if any(scores):
        lines += ["", "final benchmark scores:"]
        for run, results in zip(report.runs, scores):
            if results:
                lines.append(f"  {run.name}: " + ", ".join(f"{t} {v:.4g}" for t, v in headline(results).items()))
        lines += [f"  note: {n}" for n in notes]
    lines += [""] + [f"plot: {p}" for p in report.plots]
    return "\n".join(line.rstrip() for line in lines)


def verdict(report: Report, run: int) -> str:
    """One sentence on a run against the baseline at the baseline's final loss (the last level)."""
    name, base = report.runs[run].name, report.runs[0].name
    final = report.levels[-1]
    which = "final" if final == report.curves[0].loss[-1] else "lowest"
    s = report.speedup(len(report.levels) - 1, run)
    if s is None:
        return (
            f"{name} did not reach {base}'s {which} {report.yardstick} loss ({final:.4f}) on the same compute: "
            f"it ended at {report.curves[run].loss[-1]:.4f}"
        )
    reached, needed = report.compute[-1][run], report.compute[-1][0]
    assert reached is not None and needed is not None  # a speedup: both reached the level
    used = reached / needed
    return (
        f"{name} reached {base}'s {which} {report.yardstick} loss ({final:.4f}) with {used:.0%} of its compute: "
        f"speedup {s:+.1%} at equal loss (the paper's measure; G_stack 7B: +54.6%)"
    )


def final_scores(runs: list[Curve]) -> tuple[list[dict], list[str]]:
    """Every run's scores at its last evaluated step (the schedule's and `growdsl eval`'s merged),
    and notes on what makes them unequal: evaluations with --limit, different task sets."""
    out, notes = [], []
    for run in runs:
        last = max((e.step for e in run.evals), default=None)
        merged: dict = {}
        limited: dict[str, int] = {}  # task -> the --limit its kept score was measured with
        for e in sorted((e for e in run.evals if e.step == last), key=lambda e: not e.limit):
            for task, scores in e.results.items():  # a whole-task score wins over a --limit one
                if not e.limit or task not in merged or task in limited:
                    merged[task] = scores
                    limited.pop(task, None)
                    if e.limit:
                        limited[task] = e.limit
        if limited:
            n = max(limited.values())
            notes.append(f"{run.name} was scored on the first {n} documents of {', '.join(sorted(limited))} (--limit)")
        out.append(merged)
    tasks = [set(s) for s in out if s]
    if tasks and any(t != tasks[0] for t in tasks):
        notes.append(
            "the runs were scored on different tasks: "
            + "; ".join(f"{r.name}: {', '.join(sorted(s)) or 'none'}" for r, s in zip(runs, out))
        )
    return out, notes


_HIGHER_IS_BETTER = {"acc": True, "acc_norm": True, "bits_per_byte": False, "perplexity": False}


def headline(results: dict) -> dict[str, float]:
    """Each task's headline number: accuracy, else bits per byte, else perplexity."""
    out = {}
    for task, metrics in results.items():
        for name in ("acc", "bits_per_byte", "perplexity"):
            if name in metrics:
                out[f"{task} {name}"] = metrics[name]
                break
    return out


def plot(report: Report, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    curves = report.curves
    for axis, label, scale in (
        ("flops", "training FLOPs (smaller models included)", "log"),
        ("tokens", "training tokens", "linear"),
    ):
        fig, ax = plt.subplots(figsize=(8, 5))
        for k, (run, c) in enumerate(zip(report.runs, curves)):
            color = f"C{k}"
            ax.plot(getattr(run, axis), run.loss, color=color, alpha=0.15, linewidth=0.8)  # every training step
            marker = "o" if report.yardstick == "validation" else None
            ax.plot(
                getattr(c, axis),
                c.loss,
                color=color,
                linewidth=1.8,
                marker=marker,
                markersize=3,
                label=run.name + (" (baseline)" if k == 0 and run.name != "baseline" else ""),
            )
            for g in run.growths:
                at = min(int(np.searchsorted(c.steps, g.step)), len(c.loss) - 1)
                ax.axvline(getattr(g, axis), color=color, linestyle=":", linewidth=1)
                ax.plot(
                    [getattr(g, axis)],
                    [c.loss[at]],
                    marker="^",
                    color=color,
                    markersize=10,
                    markeredgecolor="black",
                    linestyle="none",
                    zorder=5,
                )
        for i, level in enumerate(report.levels):
            ax.axhline(level, color="grey", linewidth=0.6, alpha=0.6, linestyle="--")
            ax.annotate(
                f"L{i + 1} {level:.3f}",
                xy=(1, level),
                xycoords=("axes fraction", "data"),
                xytext=(3, 0),
                textcoords="offset points",
                va="center",
                fontsize=7,
                color="dimgrey",
            )
        ax.set_xscale(scale)
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # a log axis labels its decades only
        ax.set_xlim(left=min(getattr(c, axis)[len(c.loss) // 50] for c in curves))
        ax.set_xlabel(label)
        ax.set_ylabel(report.loss_label)
        low = min(c.loss.min() for c in curves)
        high = max(c.loss[min(len(c.loss) - 1, len(c.loss) // 20)] for c in curves)
        ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
        ax.set_title(
            f"loss vs {axis}; L1-L{len(report.levels)}: the loss levels of the speedup table; ▲ dotted: growth",
            fontsize=9,
        )
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        path = out / f"loss_vs_{axis}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    scores_path = _plot_scores(report.runs, out, plt)
    return paths + ([scores_path] if scores_path else [])


def _plot_scores(runs: list[Curve], out: Path, plt) -> Path | None:
    """One panel per task metric, which way is better in its title; a run not scored on it gets a
    labelled gap, a run scored with --limit a hatched bar."""
    scores, notes = final_scores(runs)
    heads = [headline(s) for s in scores]
    names = sorted({k for h in heads for k in h})
    if not names:
        return None
    limited = {r.name for r in runs for e in r.evals if e.limit}
    fig, axes = plt.subplots(1, len(names), figsize=(max(3.2, 0.9 * len(runs) + 1.5) * len(names), 4.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        values = [h.get(name, np.nan) for h in heads]
        present = [v for v in values if not np.isnan(v)]
        higher = _HIGHER_IS_BETTER.get(name.rsplit(" ", 1)[1], True)
        for k, (run, v) in enumerate(zip(runs, values)):
            if np.isnan(v):
                ax.text(k, 0, "not\nscored", ha="center", va="bottom", fontsize=7, color="grey")
                continue
            ax.bar(k, v, color=f"C{k}", hatch="//" if run.name in limited else None, edgecolor="black", linewidth=0.5)
            ax.text(k, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(runs)), [r.name for r in runs], rotation=30, ha="right", fontsize=7)
        ax.set_ylim(0, 1.15 * max(present) or 1.0)  # all zero: an axis that still shows the bars
        ax.set_title(f"{name}\n({'higher' if higher else 'lower'} is better)", fontsize=9)
    title = "final benchmark scores"
    if limited:
        title += "; hatched: scored on part of the task (--limit)"
    fig.suptitle(title, fontsize=10)
    if notes:
        fig.text(0.01, 0.01, "\n".join(notes), fontsize=6, va="bottom", color="dimgrey")
    fig.tight_layout(rect=(0, 0.04 * len(notes), 1, 1))
    path = out / "scores.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
