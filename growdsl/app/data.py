"""Which prepared folders a run reads, decided once for `plan` and `run` alike, and what `plan`
says of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from growdsl.app.schedule import beside
from growdsl.data.corpora import DEFAULT
from growdsl.errors import UsageError
from growdsl.plan.data import RunData, folder_uses, run_data, stage_data, start_tokenizer_problem, vocab_problem
from growdsl.plan.plan import Plan
from growdsl.records.data_folder import META, DataError

DEFAULT_NOT_PREPARED = (
    "data: none named: `growdsl run` prepares and reads the default corpus (Shakespeare, ~2.0M tokens)"
)


def start_data_hint(plan: Plan) -> str:
    """What to do for the data of a schedule that starts from a model: the default corpus never fits it."""
    assert plan.start is not None
    return (
        f"a model it starts from reads data tokenized by its own tokenizer: growdsl data prepare CORPUS "
        f'--tokenizer {plan.start.tokenizer_folder} --out DATA, then data "DATA" in the schedule or --data DATA'
    )


def choose_data(plan: Plan, schedule: str, given: str | None, recorded: list[Path] | None = None) -> RunData:
    """The prepared folders a run of `plan` reads: --data (`given`), else the schedule's `data` (names
    relative to the schedule), else the folder a resumed run recorded (wherever the default has moved
    since), else the default corpus (DEFAULT: prepared on the run's first use). A schedule that starts
    from a model and names no data is a UsageError; data that cannot be read as one run a DataError."""
    named = any(stage_data(plan))
    if recorded and not given and not named:
        return RunData.single(recorded[0], len(plan.stages))
    if given or named:
        return run_data(plan, lambda name: beside(schedule, name), Path(given) if given else None)
    if plan.start:
        raise UsageError(f"{schedule}: the schedule names no data; {start_data_hint(plan)}")
    return RunData.single(DEFAULT, len(plan.stages))


@dataclass
class DataReport:
    """What `plan` says of the run's data: lines for stdout, warnings, and the error that stops it."""

    lines: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


def describe_data(plan: Plan, schedule: str, given: str | None) -> DataReport:
    """What the run will read: each data folder's tokens, each stage's share of them, and a warning
    when the run repeats a folder; data that is missing, half-prepared or of two tokenizers is an
    error now, not after a model is built."""
    named = bool(given) or any(stage_data(plan))
    if not named and plan.start:
        return DataReport([f"data: none named; {start_data_hint(plan)}"])
    try:
        sources = choose_data(plan, schedule, given)
        if not named and not (DEFAULT / META).is_file():
            return DataReport(
                ["data: none named: `growdsl run` prepares and reads the default corpus (Shakespeare, ~2.0M tokens)"]
            )
        uses = folder_uses(plan, sources)
    except DataError as e:
        return DataReport(error=str(e))
    vocab = uses[0].meta.vocab_size
    problem = vocab_problem(plan, vocab) or start_tokenizer_problem(plan, sources.folders[0])
    if problem and not named:  # the default corpus fits the small schedules, not every schedule
        return DataReport(
            [
                f"data: none named, and the default corpus (vocab {vocab:,}) does not fit this model's vocab "
                f"{plan.stages[0].shape.vocab_size:,}: name its data with `data` or --data"
            ]
        )
    report = DataReport([line for read in uses for line in read.lines()], error=problem)
    for read in uses if not problem else []:
        if read.epochs > 1:
            what = "its data" if len(uses) == 1 else str(read.directory)
            n = read.tokens
            report.warnings.append(
                f"the run reads {what} {read.epochs:.2f} times ({n:,} tokens of {read.meta.train_tokens:,}): "
                f"repeated tokens teach less than new ones; prepare more data, or accept the repetition knowingly"
            )
    return report
