"""How fast `growdsl data prepare` tokenizes, against the `tokenizers` library's own encode_batch on
the same text, and how its peak memory grows with the corpus.

    python bench/prepare_throughput.py [--tokenizer llama-32k] [--corpus debian-docs]

For each share of the corpus (a quarter, a half, all of it) one fresh process runs `prepare` and
another `encode_batch` over the same documents (all cores, no special tokens); each reports its
wall time, its tokens and its peak resident memory. Then prepare's peak memory on a quarter of the
corpus and on ten copies of it. Prints two tables (paste them into bench/RESULTS.md with the date
and machine)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
mode, spec, share, root, out = sys.argv[1:6]
files = sorted(p for p in Path(root).rglob("*.txt")) or sorted(Path(root).glob("*.jsonl"))
files = files[: max(2, round(len(files) * float(share)))]
begin = time.perf_counter()
if mode == "prepare":
    from growdsl.data import prepare as data
    meta = data.prepare(files, Path(out), tokenizer=spec)
    tokens, chars = meta.train_tokens + meta.val_tokens, sum(p.stat().st_size for p in files)  # bytes of input
else:
    from growdsl.data import tokenizer as tokenizers
    kind, what = tokenizers.parse(spec)
    chosen = tokenizers.load(what)
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    chosen.tokenizer.encode_special_tokens = True
    tokens = sum(len(e.ids) for e in chosen.tokenizer.encode_batch(texts, add_special_tokens=False))
    chars = sum(len(t) for t in texts)
seconds = time.perf_counter() - begin
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
print(json.dumps({"tokens": tokens, "seconds": seconds, "peak_mib": peak, "mb": chars / 1e6, "files": len(files)}))
"""


def child(mode: str, spec: str, share: float, root: str, out: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, spec, str(share), root, out], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    from growdsl.data import corpora

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokenizer", default="llama-32k")
    p.add_argument("--corpus", default="debian-docs")
    args = p.parse_args()
    spec = args.tokenizer
    if spec in corpora.TOKENIZERS:
        spec = str(corpora.fetch_tokenizer(spec))
    root = str(corpora.fetch(args.corpus))
    print(f"{args.corpus} with {args.tokenizer}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    print(
        f"{'share':>5}  {'MB':>6}  {'tokens':>11}  {'prepare tok/s':>13}  {'encode_batch tok/s':>18}  "
        f"{'ratio':>5}  {'prepare peak MiB':>16}  {'encode peak MiB':>15}"
    )
    for share in (0.25, 0.5, 1.0):
        with tempfile.TemporaryDirectory() as tmp:
            prep = child("prepare", spec, share, root, os.path.join(tmp, "out"))
        enc = child("encode", spec, share, root, "")
        a, b = prep["tokens"] / prep["seconds"], enc["tokens"] / enc["seconds"]
        print(
            f"{share:>5.2f}  {prep['mb']:>6.1f}  {prep['tokens']:>11,}  {a:>13,.0f}  {b:>18,.0f}  {a / b:>5.2f}  "
            f"{prep['peak_mib']:>16,.0f}  {enc['peak_mib']:>15,.0f}"
        )
    # Memory against the corpus's size: a quarter of it, then ten copies of that quarter (as .jsonl).
    print(f"\n{'copies':>6}  {'MB':>6}  {'tokens':>11}  {'prepare tok/s':>13}  {'prepare peak MiB':>16}")
    texts = sorted(Path(root).rglob("*.txt"))
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in texts[: round(len(texts) * 0.25)]]
    for copies in (1, 10):
        with tempfile.TemporaryDirectory() as tmp:
            for k in range(copies):
                with open(os.path.join(tmp, f"copy{k:02d}.jsonl"), "w") as f:
                    f.writelines(json.dumps({"text": t}) + "\n" for t in texts)
            prep = child("prepare", spec, 1.0, tmp, os.path.join(tmp, "out"))
        rate = prep["tokens"] / prep["seconds"]
        print(f"{copies:>6}  {prep['mb']:>6.1f}  {prep['tokens']:>11,}  {rate:>13,.0f}  {prep['peak_mib']:>16,.0f}")


if __name__ == "__main__":
    main()
