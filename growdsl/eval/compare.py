"""Runs side by side, in the paper's terms: the speedup at equal loss,

    speedup(loss) = FLOPs_baseline(loss) / FLOPs_run(loss) - 1,

where FLOPs_X(loss) is the training compute (smaller models' included, as every run logs it) at
which X's smoothed loss first reaches `loss`, interpolated between steps. The first run is the
baseline (the scratch run); the levels span the baseline's own curve, from early in its run down to
its lowest loss. Plots: loss against FLOPs and against tokens, growths marked, and the final
benchmark scores of every run.

The loss is smoothed by a trailing moving average: a level counts as reached when the average of
the last `window` steps is at or below it, never by one lucky batch."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class CompareError(Exception):
    pass


@dataclass
class Curve:
    name: str
    steps: np.ndarray
    tokens: np.ndarray
    flops: np.ndarray
    loss: np.ndarray
    growths: list[dict] = field(default_factory=list)  # {"step", "tokens", "flops", "text"}
    evals: list[dict] = field(default_factory=list)  # {"step", "tokens", "flops", "results"}

    def smoothed(self, window: int) -> np.ndarray:
        cumulative = np.concatenate([[0.0], np.cumsum(self.loss)])
        i = np.arange(1, len(self.loss) + 1)
        start = np.maximum(0, i - window)
        return (cumulative[i] - cumulative[start]) / (i - start)


def read_run(run_dir: Path) -> Curve:
    """A run's history.jsonl; a step logged twice (redone after a resume) counts once, the last time."""
    history = run_dir / "history.jsonl"
    if not history.exists():
        raise CompareError(f"{run_dir} has no history.jsonl: is it a growdsl run directory?")
    steps, growths, evals = {}, {}, {}
    for line in history.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        event = record.get("event")
        if event == "growth":
            growths[(record["step"], record["text"])] = record
        elif event == "eval":
            evals.setdefault(record["step"], []).append(record)
        else:
            steps[record["step"]] = record
    if len(steps) < 2:
        raise CompareError(f"{run_dir} has logged {len(steps)} training step(s): nothing to compare yet")
    ordered = [steps[k] for k in sorted(steps)]
    column = lambda key: np.array([r[key] for r in ordered], dtype=np.float64)  # noqa: E731
    return Curve(run_dir.name, column("step"), column("tokens"), column("flops"), column("loss"),
                 sorted(growths.values(), key=lambda g: g["step"]), [e for k in sorted(evals) for e in evals[k]])


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
    window: int
    levels: list[float]
    compute: list[list[float | None]]  # [level][run]: FLOPs to reach it
    plots: list[Path]

    def speedup(self, level: int, run: int) -> float | None:
        base, this = self.compute[level][0], self.compute[level][run]
        return None if base is None or this is None else base / this - 1


def compare(run_dirs: list[Path], out: Path, smooth: int | None = None, n_levels: int = 5) -> Report:
    if len(run_dirs) < 2:
        raise CompareError("give at least two runs: the baseline first, then the runs to compare with it")
    runs = [read_run(r) for r in run_dirs]
    window = smooth or max(1, round(0.02 * min(len(r.loss) for r in runs)))
    smoothed = [r.smoothed(window) for r in runs]
    base = smoothed[0]
    top = base[len(base) // 10]  # the baseline's loss a tenth of the way in
    levels = list(np.linspace(top, base.min(), n_levels))
    compute = [[compute_to_reach(r.flops, s, level) for r, s in zip(runs, smoothed)] for level in levels]
    report = Report(runs, window, levels, compute, [])
    report.plots = plot(report, smoothed, out)
    return report


def render(report: Report) -> str:
    names = [r.name for r in report.runs]
    lines = [f"baseline: {names[0]}; loss smoothed over {report.window} steps; "
             f"speedup = FLOPs_baseline / FLOPs_run - 1 at equal loss", ""]
    head = f"{'loss':>8}  {'baseline FLOPs':>14}" + "".join(f"  {n[:28]:>28}" for n in names[1:])
    lines.append(head)
    for i, level in enumerate(report.levels):
        cells = []
        for j in range(1, len(names)):
            s = report.speedup(i, j)
            cells.append(f"{'not reached':>28}" if s is None else f"{s:>+27.1%} ")
        base = report.compute[i][0]
        lines.append(f"{level:>8.4f}  {base:>14.4g}" + "".join(f"  {c}" for c in cells))
    scores = _final_scores(report.runs)
    if scores:
        lines += ["", "final benchmark scores:"]
        for run, results in zip(report.runs, scores):
            if results:
                lines.append(f"  {run.name}: " + ", ".join(f"{t} {v:.4g}" for t, v in _headline(results).items()))
    lines += [""] + [f"plot: {p}" for p in report.plots]
    return "\n".join(lines)


def _final_scores(runs: list[Curve]) -> list[dict]:
    """Every run's scores at its last evaluated step (the schedule's and `growdsl eval`'s merged)."""
    out = []
    for run in runs:
        last = max((e["step"] for e in run.evals), default=None)
        merged = {}
        for e in run.evals:
            if e["step"] == last:
                merged.update(e["results"])
        out.append(merged)
    return out


def _headline(results: dict) -> dict[str, float]:
    """Each task's headline number: accuracy, else bits per byte, else perplexity."""
    out = {}
    for task, metrics in results.items():
        for name in ("acc", "bits_per_byte", "perplexity"):
            if name in metrics:
                out[f"{task} {name}"] = metrics[name]
                break
    return out


def plot(report: Report, smoothed: list[np.ndarray], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for axis, label, scale in (("flops", "training FLOPs (smaller models included)", "log"),
                               ("tokens", "training tokens", "linear")):
        fig, ax = plt.subplots(figsize=(8, 5))
        for k, (run, s) in enumerate(zip(report.runs, smoothed)):
            x = getattr(run, axis)
            color = f"C{k}"
            ax.plot(x, run.loss, color=color, alpha=0.18, linewidth=0.8)
            ax.plot(x, s, color=color, linewidth=1.8, label=run.name + (" (baseline)" if k == 0 else ""))
            for g in run.growths:
                at = np.searchsorted(run.steps, g["step"])
                at = min(at, len(s) - 1)
                ax.axvline(g[axis], color=color, linestyle=":", linewidth=1)
                ax.plot([g[axis]], [s[at]], marker="^", color=color, markersize=10, markeredgecolor="black",
                        linestyle="none", zorder=5)
        for level in report.levels:
            ax.axhline(level, color="grey", linewidth=0.5, alpha=0.5)
        ax.set_xscale(scale)
        ax.set_xlim(left=min(getattr(r, axis)[len(r.loss) // 50] for r in report.runs))
        ax.set_xlabel(label)
        ax.set_ylabel(f"training loss (moving average of {report.window} steps)")
        low = min(s.min() for s in smoothed)
        high = max(s[min(len(s) - 1, len(s) // 20)] for s in smoothed)
        ax.set_ylim(low - 0.05 * (high - low), high + 0.05 * (high - low))
        ax.set_title(f"loss vs {axis}; ▲ / dotted: growth")
        ax.legend()
        ax.grid(alpha=0.3)
        path = out / f"loss_vs_{axis}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    scores = [_headline(s) for s in _final_scores(report.runs)]
    names = sorted({k for s in scores for k in s})
    if names:
        fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 4), squeeze=False)
        for ax, name in zip(axes[0], names):
            values = [s.get(name, np.nan) for s in scores]
            ax.bar(range(len(values)), values, color=[f"C{k}" for k in range(len(values))])
            ax.set_xticks(range(len(values)), [r.name for r in report.runs], rotation=30, ha="right", fontsize=7)
            ax.set_title(name, fontsize=9)
            for k, v in enumerate(values):
                if not np.isnan(v):
                    ax.text(k, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
        fig.suptitle("final benchmark scores")
        fig.tight_layout()
        path = out / "scores.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths
