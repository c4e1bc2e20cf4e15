"""A run directory's layout and its record, run.json.

    RUN/schedule.grow, plan.json    the schedule as written and as planned
    RUN/run.json                    the record below, written last when a run is accepted
    RUN/tokenizer.json, ...         the first data folder's tokenizer files (eval and export read them)
    RUN/log.txt, history.jsonl      what the run said, and its metrics a line per event (appended to)
    RUN/checkpoints/                growdsl.records.progress
    RUN/eval/, compare/, baseline/  `growdsl eval`'s results, `run --baseline`'s comparison and baseline run

run.json names the data by identity (each folder's tokenizer and corpus digests, its token count),
so that a resume on other data is refused even where the folders have moved."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import field_validator

from growdsl.files import read_json
from growdsl.records.data_folder import TOKENIZER, read_meta, tokenizer_digest
from growdsl.records.record import STRICT, Count, parse

RECORD, SCHEDULE, PLAN, LOG, HISTORY, CHECKPOINTS = (
    "run.json",
    "schedule.grow",
    "plan.json",
    "log.txt",
    "history.jsonl",
    "checkpoints",
)
TOKENIZER_FILES = (TOKENIZER, "tokenizer_config.json", "tokenizer.model")
APPENDED = (LOG, HISTORY)  # the files a run (and eval) writes into in place


def _absolute_path(data: str) -> str:
    if not Path(data).is_absolute():
        raise ValueError("not an absolute path")
    return data


@dataclass(frozen=True)
class DataIdentity:
    """What makes a prepared data folder the same data: its tokenizer, its corpus, its tokens."""

    __pydantic_config__ = {**STRICT, "extra": "forbid"}
    tokenizer: str  # tokenizer_digest
    corpus: str  # meta.json's digest of the source documents
    train_tokens: Count

    @staticmethod
    def of(data_dir: Path) -> DataIdentity:
        meta = read_meta(data_dir)
        return DataIdentity(tokenizer_digest(data_dir), meta.sources_sha256, meta.train_tokens)

    def differences(self, other: DataIdentity) -> list[str]:
        return [
            what
            for what, a, b in (
                ("its tokenizer", self.tokenizer, other.tokenizer),
                ("its corpus", self.corpus, other.corpus),
                ("its number of training tokens", self.train_tokens, other.train_tokens),
            )
            if a != b
        ]


@dataclass(frozen=True)
class Source:
    """One prepared folder a run reads: where it was (absolute), and what it was (None before identities)."""

    __pydantic_config__ = STRICT
    data: str
    identity: DataIdentity | None = None

    _absolute = field_validator("data")(lambda cls, data: _absolute_path(data))


@dataclass(frozen=True)
class RunRecord:
    """run.json: the run's data (the first folder as `data`, whose tokenizer the run keeps; every folder
    under `sources`, in the order the schedule names them), the processes it ran on, the growdsl."""

    __pydantic_config__ = STRICT
    data: str
    identity: DataIdentity | None = None
    sources: list[Source] = field(default_factory=list)  # [] before mixtures: the one folder, `data`
    processes: Count = 1
    growdsl: str = ""

    _absolute = field_validator("data")(lambda cls, data: _absolute_path(data))

    @property
    def folders(self) -> list[Source]:
        return self.sources or [Source(self.data, self.identity)]


def read_record(run_dir: Path) -> RunRecord:
    """A run's run.json, its fields checked (FileProblem, OSError or RecordError)."""
    file = run_dir / RECORD
    return parse(RunRecord, read_json(file), file)
