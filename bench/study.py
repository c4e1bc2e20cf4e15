"""The study: the paper's growth operators against training from scratch at equal FLOPs, through
growdsl itself (schedules/study/*.grow), several seeds, on a corpus the runs never repeat.

Every arm of every seed is a `growdsl run` of its own (a seeded copy of the schedule, written next
to the run); then `growdsl compare` of each seed's arms against its scratch run on the validation
loss. The table (speedup at every loss level of the scratch run's curve, final validation loss,
the rank among depth operators) and the pictures go to bench/RESULTS.md and bench/study/.

    python bench/study.py                       # CPU: every arm, seeds 1 and 2 (about an hour)
    python bench/study.py --seeds 3 --arms scratch gstack      # a subset
    python bench/study.py --gpu                 # the GPU scale: 24L dim 512, schedules/study/gpu/

A finished run is not trained again (delete its folder to redo it), so an interrupted study goes
on where it stopped. The data defaults to the debian-docs corpus (Debian's Python, Perl and Linux
documentation, ~14M tokens at vocab 4096), prepared on first use."""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from growdsl.eval.compare import compare, render, verdict  # noqa: E402
from growdsl.plan import plan_file  # noqa: E402

DEPTH = ["gstack", "zero", "random", "learn", "interpolation"]  # the depth operators, ranked among themselves
ARMS = ["scratch", *DEPTH, "width"]
NAMES = {
    "scratch": "scratch",
    "gstack": "G_stack (depth direct)",
    "zero": "depth zero",
    "random": "depth random",
    "learn": "depth learn (LiGO)",
    "interpolation": "interpolation",
    "width": "width direct",
    "late": "late growth (1L -> 12L at 80%, WSD)",
    "scratch_wsd": "scratch, WSD",
    "small_wsd": "1L only, WSD (late growth's control)",
    "late_zero": "late growth, init zero",
    "dense": "dense continued (upcycling's control)",
    "upcycle": "upcycled at half, 4 experts top 2",
    "upcycle_drop": "Drop-Upcycled (r = 0.5)",
    "upcycle_top1": "upcycled at half, 4 experts top 1",
    "upcycle_aux": "upcycled at half, top 2, aux_loss 0.01",
}
BEGIN, END = "<!-- study:{}:begin -->", "<!-- study:{}:end -->"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument(
        "--arms",
        nargs="+",
        default=ARMS,
        help="schedules of the study folder to run (default: the paper's arms); scratch always runs",
    )
    p.add_argument("--gpu", action="store_true", help="the GPU-scale schedules (schedules/study/gpu)")
    p.add_argument("--data", type=Path, help="a prepared data folder (default: debian-docs at the schedules' vocab)")
    p.add_argument("--out", type=Path, help="where the runs go (default: runs/study or runs/study-gpu)")
    p.add_argument(
        "--results",
        type=Path,
        default=ROOT / "bench" / "RESULTS.md",
        help="the results file whose study section is rewritten",
    )
    p.add_argument("--section", help="the results section to write (default: cpu or gpu)")
    p.add_argument("--no-results", action="store_true", help="print the table only")
    args = p.parse_args()
    scale = "gpu" if args.gpu else "cpu"
    schedules = ROOT / "schedules" / "study" / ("gpu" if args.gpu else "")
    unknown = [a for a in args.arms if not (schedules / f"{a}.grow").exists()]
    if unknown:
        p.error(f"no schedule {schedules / unknown[0]}.grow")
    out = args.out or ROOT / "runs" / ("study-gpu" if args.gpu else "study")
    args.arms = ["scratch"] + [a for a in dict.fromkeys(args.arms) if a != "scratch"]  # the baseline comes first
    check_equal_flops(schedules, args.arms)
    data = args.data or prepare_data(plan_file(schedules / "scratch.grow").stages[0].shape.vocab_size)

    reports = {}
    for seed in args.seeds:  # results are written after every seed: a study cut short keeps what it has
        for arm in args.arms:
            train(schedules / f"{arm}.grow", seed, data, out / f"seed{seed}" / arm)
        reports[seed] = compare([out / f"seed{seed}" / arm for arm in args.arms], out / f"seed{seed}" / "compare")
        print(f"\n## seed {seed}\n" + render(reports[seed]))
        for j in range(1, len(args.arms)):
            print(verdict(reports[seed], j))
        table = results_table(reports, args.arms)
        print("\n" + table, flush=True)
        if not args.no_results:
            hours = sum(seconds(out / f"seed{s}" / arm) for s in reports for arm in args.arms) / 3600
            command = ("python bench/study.py " + " ".join(sys.argv[1:])).strip()
            pictures = ROOT / "bench" / "study" / (args.section or scale)
            pictures.mkdir(parents=True, exist_ok=True)
            for plot in reports[seed].plots:
                if plot.name == "loss_vs_flops.png":
                    (pictures / f"seed{seed}_{plot.name}").write_bytes(plot.read_bytes())
            write_section(args.results, args.section or scale, table, command, hours, data, pictures, list(reports))
    return 0


def check_equal_flops(schedules: Path, arms: list[str]) -> None:
    """Every arm spends the scratch run's FLOPs, to within one step of the 12-layer target."""
    scratch = plan_file(schedules / "scratch.grow")
    step = scratch.stages[-1].flops_per_token * scratch.stages[-1].training.tokens_per_step
    for arm in arms:
        flops = plan_file(schedules / f"{arm}.grow").totals.flops
        if abs(flops - scratch.totals.flops) > step:
            raise SystemExit(f"{arm}.grow spends {flops:.4g} FLOPs, scratch {scratch.totals.flops:.4g}: not equal")


def prepare_data(vocab: int) -> Path:
    from growdsl.data import corpora
    from growdsl.data import prepare as data

    folder = corpora.HOME / "data" / f"debian-docs-{vocab}"
    if not (folder / "meta.json").exists():
        print(f"preparing the debian-docs corpus at vocab {vocab} into {folder}", flush=True)
        data.prepare([corpora.fetch("debian-docs")], folder, vocab_size=vocab)
    return folder


def train(schedule: Path, seed: int, data: Path, run_dir: Path) -> None:
    """One arm of one seed: its schedule with `seed N` first (and no other), run by `growdsl run`."""
    if finished(run_dir):
        print(f"{run_dir}: done already", flush=True)
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    seeded = run_dir.with_suffix(".grow")
    text = re.sub(r"^seed \d+\n", "", schedule.read_text(), flags=re.M)  # the study sets the seed
    seeded.write_text(f"seed {seed}\n" + text)
    print(f"{time.strftime('%H:%M:%S')} training {schedule.stem}, seed {seed} -> {run_dir}", flush=True)
    with (run_dir.parent / f"{run_dir.name}.log").open("w") as log:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "growdsl",
                "run",
                str(seeded),
                "--data",
                str(data),
                "--run-dir",
                str(run_dir),
                "--log-every",
                "100",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    if done.returncode or not finished(run_dir):
        raise SystemExit(f"{schedule.stem} seed {seed} failed: see {run_dir.parent / (run_dir.name + '.log')}")


def finished(run_dir: Path) -> bool:
    """The run logged its last step (the plan's final global step)."""
    history, plan = run_dir / "history.jsonl", run_dir / "plan.json"
    if not history.exists() or not plan.exists():
        return False
    last = sum(s["steps"] for s in json.loads(plan.read_text())["stages"])
    return any(json.loads(line).get("step") == last for line in history.read_text().splitlines()[-5:])


def seconds(run_dir: Path) -> float:
    """A run's wall time: from its schedule's copy (written first) to its history's last line."""
    return (run_dir / "history.jsonl").stat().st_mtime - (run_dir / "schedule.grow").stat().st_mtime


def results_table(reports: dict, arms: list[str]) -> str:
    """Per seed: every arm's speedup at the scratch run's loss levels, its final validation loss and
    its rank among the depth operators; then the mean over seeds."""
    levels = len(next(iter(reports.values())).levels)
    head = (
        "| seed | arm | "
        + " | ".join(f"L{i + 1}" for i in range(levels))
        + " | final val loss | depth rank | back at the growth's loss after |"
    )
    lines = [head, "|" + "---|" * (levels + 5)]
    means = {arm: [] for arm in arms}
    for seed, report in reports.items():
        finals = {arm: c.loss[-1] for arm, c in zip(arms, report.curves)}
        depth = sorted((a for a in arms if a in DEPTH), key=lambda a: finals[a])
        lines.append(f"| {seed} | levels (scratch) | " + " | ".join(f"{x:.3f}" for x in report.levels) + " | | | |")
        for j, (arm, run) in enumerate(zip(arms, report.runs)):
            cells = ["" if j == 0 else _pct(report.speedup(i, j)) for i in range(levels)]
            rank = str(depth.index(arm) + 1) if arm in depth else ""
            back = recovery(run)
            back = "" if j == 0 or not run.growths else "never" if back is None else f"{back:.0%} of the rest"
            lines.append(
                f"| {seed} | {NAMES.get(arm, arm)} | " + " | ".join(cells) + f" | {finals[arm]:.4f} | {rank} | {back} |"
            )
            means[arm].append(finals[arm])
    lines += ["", "| arm | mean final val loss | speedup at the final level, per seed |", "|---|---|---|"]
    for j, arm in enumerate(arms):
        per_seed = ", ".join(_pct(r.speedup(levels - 1, j)) for r in reports.values()) if j else "(baseline)"
        lines.append(f"| {NAMES.get(arm, arm)} | {sum(means[arm]) / len(means[arm]):.4f} | {per_seed} |")
    return "\n".join(lines)


def recovery(curve) -> float | None:
    """The share of the post-growth compute a grown run spends before its validation loss is below
    its value at the growth for good (0 where it never rose above it: the function was kept and the
    LR restart did not undo it); None for a run without growth or one that ends above it."""
    if not curve.growths or curve.val is None:
        return None
    at = curve.growths[0].flops
    v = curve.val
    before, after = v.loss[v.flops <= at], v.flops > at
    if not len(before) or not after.any():
        return None
    level, flops, loss = before[-1], v.flops[after], v.loss[after]
    above = np.nonzero(loss > level)[0]
    if not len(above):
        return 0.0
    if above[-1] == len(loss) - 1:
        return None
    i = above[-1]  # the last measurement above: it crosses between i and i + 1
    back = flops[i] + (loss[i] - level) / (loss[i] - loss[i + 1]) * (flops[i + 1] - flops[i])
    return (back - at) / (flops[-1] - at)


def _pct(x: float | None) -> str:
    return "not reached" if x is None else f"{x:+.1%}"


def write_section(
    results: Path, scale: str, table: str, command: str, hours: float, data: Path, pictures: Path, seeds: list[int]
) -> None:
    import platform

    import torch

    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    )
    rel = pictures.relative_to(ROOT / "bench")
    images = "\n".join(f"![seed {s}: validation loss vs FLOPs]({rel}/seed{s}_loss_vs_flops.png)" for s in seeds)
    body = (
        f"**{time.strftime('%Y-%m-%d')}, {device}, torch {torch.__version__}.** Command: `{command}` "
        f"({hours:.2f} h of training for the whole suite; data: `{data.name}`).\n\n"
        "Speedup = FLOPs_scratch / FLOPs_arm - 1 to reach each loss level of the scratch run's validation "
        "curve (L1 a tenth of the way in, L5 its final loss); every arm spends the scratch run's FLOPs.\n\n"
        f"{table}\n\n{images}\n"
    )
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    begin, end = BEGIN.format(scale), END.format(scale)
    section = f"{begin}\n{body}{end}"
    if begin in text:
        text = text[: text.index(begin)] + section + text[text.index(end) + len(end) :]
    else:
        text += f"\n## The growth study ({scale}) — `bench/study.py`\n\n{section}\n"
    results.write_text(text)
    print(f"wrote the study to {results}")


if __name__ == "__main__":
    sys.exit(main())
