"""How fast `growdsl validate` and `growdsl plan` answer, as a user runs them: a fresh process
per call (interpreter start, imports, parse, compile, print). Goal: well under 0.3 s.
Python writes and reuses its bytecode cache as on a user's machine (PYTHONDONTWRITEBYTECODE is
cleared for the calls; the first, untimed call fills the cache).

    python bench/plan_speed.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, env=ENV)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr.decode()}")
    return elapsed


PHASES = """
import sys, time
t0 = time.perf_counter()
import lark
t1 = time.perf_counter()
import growdsl.plan, growdsl.plan.render
from growdsl.lang.parser import lark_parser, parse
t2 = time.perf_counter()
lark_parser()
t3 = time.perf_counter()
source = open(sys.argv[1]).read()
tree = parse(source, sys.argv[1])
t4 = time.perf_counter()
plan = growdsl.plan.compile_schedule(tree)
t5 = time.perf_counter()
growdsl.plan.render.render_plan(plan)
t6 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)
"""


def phases(path: Path, repeat: int) -> list[float]:
    """Median seconds of each phase of one `plan`, inside a fresh interpreter."""
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", PHASES, str(path)], capture_output=True, text=True, env=ENV)
        runs.append([float(x) for x in out.stdout.split()])
    return [statistics.median(col) for col in zip(*runs)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    schedules = sorted((ROOT / "schedules").glob("*.grow"))
    base = [sys.executable, "-m", "growdsl"]
    wall(base + ["validate", str(schedules[0])])  # warm the OS cache and Lark's grammar cache
    python = statistics.median(wall([sys.executable, "-c", "pass"]) for _ in range(args.repeat))
    print(f"{'schedule':32} {'validate (s)':>13} {'plan (s)':>9} {'plan --json (s)':>16}")
    worst = 0.0
    for path in schedules:
        row = [
            statistics.median(wall(base + cmd + [str(path)]) for _ in range(args.repeat))
            for cmd in (["validate"], ["plan"], ["plan", "--json"])
        ]
        worst = max(worst, *row)
        print(f"{path.name:32} {row[0]:13.3f} {row[1]:9.3f} {row[2]:16.3f}")
    print(f"\nworst median {worst:.3f} s; bare interpreter start {python:.3f} s; {args.repeat} runs each")
    names = ("import lark", "import growdsl", "load grammar", "parse", "compile", "render")
    cost = phases(ROOT / "schedules" / "gstack_7b.grow", args.repeat)
    print("\nwhere `plan schedules/gstack_7b.grow` spends its time (median, s):")
    print("  " + "  ".join(f"{n} {c:.3f}" for n, c in zip(names, cost)))


if __name__ == "__main__":
    main()
