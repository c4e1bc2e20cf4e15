"""Run lm-eval tasks on a growdsl model, offline: the shipped task definitions are materialised
next to the local data, lm-eval's TaskManager reads only them (not its 200-odd built-in tasks,
which point at the Hugging Face hub), and no bootstrap is run (it costs minutes for nothing a
training curve needs). Results are {task: {metric: value}}."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from growdsl.eval import benchmarks
from growdsl.files import FileProblem, read_json, write_replacing
from growdsl.plan.tasks import EVAL_TASKS


def default_tasks(heldout: Path | None) -> list[str]:
    """Every shipped task; `heldout` only where the run's data has held-out documents."""
    return [t for t in EVAL_TASKS if t != "heldout" or (heldout is not None and heldout.exists())]


def run_tasks(
    lm, tasks: list[str], heldout: Path | None, *, limit: int | None = None, benchmarks_home: Path | None = None
) -> dict[str, dict[str, float]]:
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    needed = [t for t in tasks if t in benchmarks.SOURCES]
    home = benchmarks.ensure(needed, benchmarks_home or benchmarks.HOME) if needed else None
    for name in ("lm-eval", "lm_eval", "datasets"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory() as tmp, _quiet():
        folder = benchmarks.task_folder(Path(tmp), list(tasks), home, heldout)
        manager = TaskManager(include_path=str(folder), include_defaults=False)
        out = simple_evaluate(
            model=lm, tasks=list(tasks), task_manager=manager, limit=limit, bootstrap_iters=0, log_samples=False
        )
    if out is None:  # lm-eval reports on the processes of local rank 0 only; the others scored alike
        return {}
    return {task: _metrics(values) for task, values in out["results"].items()}


@contextmanager
def _quiet():
    """lm-eval and datasets draw progress bars and run `git` on stderr, which would fill a training
    log: stderr (the file descriptor: subprocesses too) goes to a file, shown only if they fail."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace")[-3000:])
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _metrics(values: dict) -> dict[str, float]:
    """lm-eval's "acc,none": 0.5, "acc_stderr,none": "N/A", "alias": ... -> {"acc": 0.5}."""
    out = {}
    for key, value in values.items():
        metric = key.split(",")[0]
        if "stderr" not in metric and isinstance(value, (int, float)):
            out["samples" if metric == "sample_len" else metric] = float(value)
    return out


def _results_file(run_dir: Path, label: str, limit: int | None = None) -> Path:
    return run_dir / "eval" / f"{label}{'-limit' + str(limit) if limit else ''}.json"


def read_results(run_dir: Path, label: str) -> dict | None:
    """The scores written at LABEL ({task: {metric: value}}), or None where none can be read."""
    try:
        results = read_json(_results_file(run_dir, label)).get("results")
    except (OSError, FileProblem, AttributeError):
        return None
    return results if isinstance(results, dict) else None


def write_results(run_dir: Path, label: str, results: dict, about: dict) -> Path:
    """RUN/eval/LABEL.json (LABEL-limitN.json for a --limit one): the scores and what was scored
    (stage, step, tokens, FLOPs), merged with the other tasks already scored there."""
    path = _results_file(run_dir, label, about.get("limit"))
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = read_results(run_dir, path.stem) or {}  # other tasks' scores there stay; one scored again is replaced
    merged = {**kept, **results}
    record = {**about, "time": time.strftime("%Y-%m-%d %H:%M:%S"), "results": merged}
    write_replacing(path, json.dumps(record, indent=1).encode())
    return path


def summary(results: dict[str, dict[str, float]]) -> str:
    """One line: the headline metric of every task."""
    parts = []
    for task, metrics in results.items():
        for name in ("acc", "bits_per_byte", "perplexity"):
            if name in metrics:
                parts.append(f"{task} {name} {metrics[name]:.4g}")
                break
    return ", ".join(parts)
