"""A prepared data folder (growdsl data prepare): what lies in it and its meta.json, read without
torch or numpy so that `growdsl plan` can say how much of the data each stage reads, and refuse data
that is missing or half-prepared before anything is built. The run reads it the same way.

    meta.json               the record below
    tokenizer.json          the tokenizer (tokenizer_config.json: its conventions; tokenizer.model: SentencePiece's)
    train-NNNNN.bin         the training stream's shards, in order (train.bin before shards)
    val.bin, val.jsonl      the held-out split, as tokens and as text"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import field_validator

from growdsl.errors import GrowdslError
from growdsl.files import FileProblem, read_json
from growdsl.records.record import STRICT, Count, RecordError, parse

META, TOKENIZER, HELD_OUT_TOKENS, HELD_OUT_TEXT = "meta.json", "tokenizer.json", "val.bin", "val.jsonl"
DTYPES = {"uint16": 2, "uint32": 4}  # token files' element types and their sizes in bytes


class DataError(GrowdslError, ValueError):
    """Data that is not a (complete) prepared folder; the message names what is wrong."""


@dataclass
class Shard:
    __pydantic_config__ = STRICT
    file: str
    tokens: Count

    @field_validator("file")
    @classmethod
    def _a_file_of_the_folder(cls, name: str) -> str:
        if Path(name).name != name or not name.endswith(".bin"):
            raise ValueError(f"{name[:80]!r} is not a token file of the folder")
        return name


@dataclass
class DataMeta:
    """meta.json: the counts of a prepared folder and how its tokens are stored."""

    __pydantic_config__ = STRICT
    vocab_size: Count
    eot_id: Count
    dtype: Literal["uint16", "uint32"]
    train_tokens: Count
    val_tokens: Count
    documents: Count
    val_documents: Count  # held-out documents, or pieces of documents (holdout_unit)
    sources_sha256: str
    holdout_unit: Literal["documents", "pieces"] = "documents"
    bos_id: Count | None = None  # the token that starts every document, where the tokenizer's convention has one
    tokenizer: str = "bpe"  # trained here ("bpe"), or given: "tokenizer.json", "sentencepiece"
    shards: list[Shard] = field(default_factory=list)  # the training stream ([]: one train.bin, before shards)

    @property
    def training_shards(self) -> list[Shard]:
        return self.shards or [Shard("train.bin", self.train_tokens)]


def tokenizer_digest(folder: Path) -> str:
    """What names a prepared folder's tokenizer: the SHA-256 of its tokenizer.json (two folders of one
    run must have the same; a run resumes only on data of the one it recorded)."""
    return hashlib.sha256((folder / TOKENIZER).read_bytes()).hexdigest()


def train_files(directory: Path, meta: DataMeta) -> list[Path]:
    """A prepared folder's training stream: its shards in order."""
    return [directory / s.file for s in meta.training_shards]


def read_meta(directory: Path) -> DataMeta:
    """A prepared folder's meta.json, checked against the folder: its token files present with
    exactly the tokens it counts, its tokenizer there. A DataError says what is missing or wrong."""
    file = directory / META
    if not directory.is_dir():
        if any(directory.parent.glob(f".{directory.name}.old-*")):  # a prepare killed as it swapped folders
            raise DataError(
                f"{directory} does not exist: a prepare was stopped while it replaced it; the old folder is kept "
                f"aside and goes back in place when you run growdsl data prepare ... --out {directory} again"
            )
        raise DataError(f"{directory} does not exist: prepare it with growdsl data prepare SOURCES --out {directory}")
    if not file.exists() and any(directory.iterdir()):
        raise DataError(
            f"{directory} is not a prepared data folder (no meta.json): if it holds your corpus, prepare it into "
            f"a new folder, growdsl data prepare {directory} --out NEW_FOLDER, and name that"
        )
    try:
        meta = parse(DataMeta, read_json(file), file)
    except FileNotFoundError:
        raise DataError(
            f"{directory} is not a prepared data folder (no meta.json): prepare it with growdsl data prepare "
            f"SOURCES --out {directory}"
        ) from None
    except RecordError as e:
        raise DataError(f"{file} is not a prepared folder's meta.json: {e.detail}") from None
    except FileProblem as e:
        raise DataError(str(e)) from None
    except OSError as e:
        raise DataError(f"{file} is unreadable: {e.strerror}") from None
    if sum(s.tokens for s in meta.training_shards) != meta.train_tokens:
        raise DataError(f"{file} lists its training shards wrongly: they do not hold its train_tokens")
    for name, tokens in [(s.file, s.tokens) for s in meta.training_shards] + [(HELD_OUT_TOKENS, meta.val_tokens)]:
        path = directory / name
        size = path.stat().st_size if path.is_file() else None
        if size != tokens * DTYPES[meta.dtype]:
            raise DataError(
                f"{path} {'is missing' if size is None else f'holds {size:,} bytes'}, not the {tokens:,} tokens "
                f"meta.json counts: half-prepared; prepare {directory} again"
            )
    if not (directory / TOKENIZER).is_file():
        raise DataError(f"{directory / TOKENIZER} is missing: prepare {directory} again")
    return meta
