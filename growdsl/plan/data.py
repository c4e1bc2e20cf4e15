"""What a prepared data folder holds, read without torch or numpy (meta.json and its files' sizes),
so that `growdsl plan` can say how much of its data each stage reads, warn when a run repeats it,
and refuse data that is missing or half-prepared before anything is built. `growdsl run` reads
meta.json through the same check."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from growdsl.plan.plan import Plan

DTYPES = {"uint16": 2, "uint32": 4}  # token files' element types and their sizes in bytes
COUNTS = ("vocab_size", "eot_id", "train_tokens", "val_tokens", "documents", "val_documents")


class DataError(ValueError):
    """Data that is not a (complete) prepared folder; the message names what is wrong."""


def read_meta(directory: Path) -> dict:
    """A prepared folder's meta.json, checked against the folder: its counts whole numbers, its token
    files present with exactly the tokens it counts, its tokenizer there."""
    file = directory / "meta.json"
    if not directory.is_dir():
        raise DataError(f"{directory} does not exist: prepare it with growdsl data prepare SOURCES --out {directory}")
    if not file.exists() and any(directory.iterdir()):
        raise DataError(
            f"{directory} is not a prepared data folder (no meta.json): if it holds your corpus, prepare it into "
            f"a new folder, growdsl data prepare {directory} --out NEW_FOLDER, and name that"
        )
    try:
        meta = json.loads(file.read_text())
    except FileNotFoundError:
        raise DataError(
            f"{directory} is not a prepared data folder (no meta.json): prepare it with growdsl data prepare "
            f"SOURCES --out {directory}"
        ) from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{file} is unreadable: {e}") from None
    if not isinstance(meta, dict):
        raise DataError(f"{file} is not a prepared folder's meta.json")
    counts = [meta.get(k) for k in COUNTS] + ([] if meta.get("bos_id") is None else [meta["bos_id"]])
    if (
        not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts)
        or meta.get("dtype") not in DTYPES
    ):
        raise DataError(f"{file} is not a prepared folder's meta.json")
    shards = meta.get("shards") or [{"file": "train.bin", "tokens": meta["train_tokens"]}]
    ok = isinstance(shards, list) and all(
        isinstance(s, dict)
        and isinstance(s.get("file"), str)
        and Path(s["file"]).name == s["file"]
        and s["file"].endswith(".bin")
        and isinstance(s.get("tokens"), int)
        for s in shards
    )
    if not ok or sum(s["tokens"] for s in shards) != meta["train_tokens"]:
        raise DataError(f"{file} lists its training shards wrongly")
    for name, tokens in [(s["file"], s["tokens"]) for s in shards] + [("val.bin", meta["val_tokens"])]:
        path = directory / name
        size = path.stat().st_size if path.is_file() else None
        if size != tokens * DTYPES[meta["dtype"]]:
            raise DataError(
                f"{path} {'is missing' if size is None else f'holds {size:,} bytes'}, not the {tokens:,} tokens "
                f"meta.json counts: half-prepared; prepare {directory} again"
            )
    if not (directory / "tokenizer.json").is_file():
        raise DataError(f"{directory / 'tokenizer.json'} is missing: prepare {directory} again")
    return meta


@dataclass(frozen=True)
class Reading:
    """How a run reads one prepared folder: its tokens, and the share of them every stage reads."""

    directory: Path
    meta: dict
    stages: tuple[tuple[int, int, int], ...]  # (stage, first token, tokens read), over the whole stream

    @property
    def epochs(self) -> float:
        return sum(n for _, _, n in self.stages) / max(1, self.meta["train_tokens"])

    def lines(self) -> list[str]:
        m = self.meta
        unit = "pieces of documents" if m.get("holdout_unit") == "pieces" else "documents"
        out = [
            f"data {self.directory}: {m['documents']:,} documents, {m['train_tokens']:,} training tokens and "
            f"{m['val_tokens']:,} held out ({m['val_documents']:,} {unit}); vocab {m['vocab_size']:,} "
            f"({m.get('tokenizer', 'bpe')})"
        ]
        for stage, first, n in self.stages:
            out.append(
                f"  stage {stage} reads {n:,} tokens ({n / max(1, m['train_tokens']):.2f} epochs), from token {first:,}"
            )
        out.append(f"  the run reads {self.epochs:.2f} epochs of it")
        return out


def reading(plan: Plan, directory: Path) -> Reading:
    """The stream the trainer reads (one folder, front to back, every stage going on where the one
    before stopped, LiGO phases included), stage by stage."""
    meta = read_meta(directory)
    stages, position = [], 0
    for s in plan.stages:
        n = s.tokens + sum(g.learn.tokens for g in s.growths if g.learn is not None)  # a learned map reads too
        stages.append((s.index, position, n))
        position += n
    return Reading(directory, meta, tuple(stages))


def vocab_problem(plan: Plan, have: int) -> str | None:
    """Why the model's vocab and a tokenizer of `have` tokens disagree, or None: a smaller model cannot
    read the data; a larger one has rows no token uses, which only a stated `padded` allows."""
    for stage in plan.stages:
        v = stage.shape.vocab_size
        if v < have:
            return (
                f"the data's tokenizer has {have:,} tokens but the model's vocab is {v:,} (stage {stage.index}): "
                f"set vocab {have} in the model statement"
            )
        if v > have and not stage.shape.vocab_padded:
            return (
                f"the model's vocab is {v:,} but the data's tokenizer has {have:,} tokens (stage {stage.index}): "
                f"set vocab {have} in the model statement, or `vocab {v} padded` if the extra rows are on "
                f"purpose (padding to a multiple of 64 or 128 is common)"
            )
    return None
