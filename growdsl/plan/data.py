"""The data a plan reads: which prepared folders (a mixture's, a stage's own, --data), how much of
each every stage takes, and whether their tokenizer fits the model. Torch-free, for `growdsl plan`:
it says how much of its data each stage reads, warns when a run repeats it, and refuses data that is
missing, half-prepared or of two tokenizers before anything is built."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from growdsl.files import read_json
from growdsl.plan.plan import Plan
from growdsl.records.data_folder import DataError, DataMeta, read_meta, tokenizer_digest


@dataclass(frozen=True)
class RunData:
    """The prepared folders a run reads, in the order its schedule first names them, and each stage's
    weights over them (0: the stage does not read that folder). One folder is a mixture of one."""

    folders: tuple[Path, ...]
    weights: tuple[tuple[float, ...], ...]  # per stage, one weight per folder

    @staticmethod
    def single(folder: Path, stages: int) -> RunData:
        return RunData((folder,), ((1.0,),) * stages)


def stage_data(plan: Plan) -> list[tuple[tuple[str, float], ...]]:
    """Each stage's data as the schedule names it, (folder, weight) pairs: its mixture, its one folder
    (weight 1), or () where it names none."""
    return [s.training.mix or (((s.training.data, 1.0),) if s.training.data else ()) for s in plan.stages]


def run_data(plan: Plan, where: Callable[[str], Path], given: Path | None = None) -> RunData:
    """The folders the run reads: the schedule's (each name through `where`, e.g. relative to the
    schedule's file), or `given` (--data, or the default corpus) for a schedule that names one
    folder or none. Raises DataError for what cannot be read as one run."""
    named = stage_data(plan)
    stages = len(plan.stages)
    if given is not None:
        mixture = next((s for s, m in zip(plan.stages, named) if len(m) > 1), None)
        if mixture is not None:
            raise DataError(
                f"stage {mixture.index} (line {mixture.line}) reads a mixture; --data stands in for one folder: "
                f"name the mixture's folders in the schedule instead"
            )
        if len({m for m in named if m}) > 1:
            raise DataError(
                "the schedule's stages read different folders; --data stands in for one folder: name each "
                "stage's data in the schedule instead"
            )
        return RunData.single(given, stages)
    if not any(named):
        raise DataError("the schedule names no data")
    bare = next((s for s, m in zip(plan.stages, named) if not m), None)
    if bare is not None:
        raise DataError(
            f"stage {bare.index} (line {bare.line}) names no data while other stages do: name the run's data "
            f'once at the top (data "FOLDER"), and a stage\'s own with `with data`'
        )
    folders: list[Path] = []
    keys: list[Path] = []  # resolved, so that two names of one folder are one source
    weights = []
    for pairs in named:
        w: dict[int, float] = {}
        for name, weight in pairs:
            path = where(name)
            key = path.resolve()
            if key not in keys:
                keys.append(key)
                folders.append(path)
            w[keys.index(key)] = w.get(keys.index(key), 0.0) + weight
        weights.append(w)
    return RunData(tuple(folders), tuple(tuple(w.get(i, 0.0) for i in range(len(folders))) for w in weights))


def exact_shares(weights: Sequence[float]) -> list[Fraction]:
    """Weights as exact shares of their sum, each weight as written (0.7 is 7/10, not the float
    nearest it): no weight, however large or small, changes a mixture by rounding."""
    exact = [Fraction(repr(float(w))) for w in weights]
    total = sum(exact)
    return [w / total for w in exact]


def one_tokenizer(folders: tuple[Path, ...]) -> None:
    """Every folder of a run is tokenized by the same tokenizer (byte for byte), or DataError."""
    digests = [tokenizer_digest(f) for f in folders]
    for folder, digest in zip(folders[1:], digests[1:]):
        if digest != digests[0]:
            raise DataError(
                f"{folder} and {folders[0]} are tokenized by different tokenizers: a run reads one vocabulary; "
                f"prepare them with the same --tokenizer"
            )


@dataclass(frozen=True)
class StageRead:
    """What one stage reads of a folder: of a mixture, to within a sequence."""

    stage: int
    first_token: int
    tokens: int
    share: float  # of the stage's tokens


@dataclass(frozen=True)
class FolderUse:
    """How a run reads one prepared folder: its tokens, and what every stage reading it takes."""

    directory: Path
    meta: DataMeta
    stages: tuple[StageRead, ...]

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.stages)

    @property
    def epochs(self) -> float:
        return self.tokens / max(1, self.meta.train_tokens)

    def lines(self) -> list[str]:
        m = self.meta
        unit = "pieces of documents" if m.holdout_unit == "pieces" else "documents"
        out = [
            f"data {self.directory}: {m.documents:,} documents, {m.train_tokens:,} training tokens and "
            f"{m.val_tokens:,} held out ({m.val_documents:,} {unit}); vocab {m.vocab_size:,} "
            f"({m.tokenizer})"
        ]
        for read in self.stages:
            stage, first, n, share = read.stage, read.first_token, read.tokens, read.share
            mixed, about = (f", {share:.0%} of its mixture", "~") if share < 1 else ("", "")
            out.append(
                f"  stage {stage} reads {about}{n:,} tokens ({n / max(1, m.train_tokens):.2f} epochs{mixed}), "
                f"from token {about}{first:,}"
            )
        out.append(f"  the run reads {self.epochs:.2f} epochs of it")
        return out


def folder_uses(plan: Plan, data: Path | RunData) -> list[FolderUse]:
    """How the trainer reads each folder (front to back, every stage going on where the one before
    stopped, LiGO phases included; a mixture's share of a stage by its weights, to within a sequence),
    checked: every folder prepared and all of one tokenizer."""
    run = data if isinstance(data, RunData) else RunData.single(data, len(plan.stages))
    metas = [read_meta(folder) for folder in run.folders]
    one_tokenizer(run.folders)
    positions = [0] * len(run.folders)
    taken: list[list[StageRead]] = [[] for _ in run.folders]
    for s, weights in zip(plan.stages, run.weights):
        n = s.tokens + sum(g.learn.tokens for g in s.growths if g.learn is not None)  # a learned map reads too
        for i, share in enumerate(exact_shares(weights)):
            if share > 0:
                taken[i].append(StageRead(s.index, positions[i], round(n * share), float(share)))
                positions[i] += round(n * share)
    return [FolderUse(f, m, tuple(t)) for f, m, t in zip(run.folders, metas, taken)]


def start_tokenizer_problem(plan: Plan, data: Path) -> str | None:
    """Why the data's tokenizer is not the one of the model the schedule starts from, or None (also when
    that model's is not a tokenizer.json: the run checks it then): any token with another id."""
    if plan.start is None:
        return None
    theirs = Path(plan.start.tokenizer_folder) / "tokenizer.json"
    if not theirs.is_file():
        return None
    try:
        a, b = (read_json(f) for f in (theirs, data / "tokenizer.json"))
        same = a["model"].get("vocab") == b["model"].get("vocab") and [
            (t.get("id"), t.get("content")) for t in a.get("added_tokens", [])
        ] == [(t.get("id"), t.get("content")) for t in b.get("added_tokens", [])]
    except (OSError, ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        return None  # the run's own check says what is wrong
    if same:
        return None
    return (
        f"the data {data} is tokenized by another tokenizer than the model the schedule starts from: prepare "
        f"it with --tokenizer {plan.start.tokenizer_folder}"
    )


def vocab_problem(plan: Plan, have: int) -> str | None:
    """Why the model's vocab and a tokenizer of `have` tokens disagree, or None: a smaller model cannot
    read the data; a larger one has rows no token uses, which only a stated `padded` allows, or a
    model the schedule starts from (its rows are its own)."""
    for stage in plan.stages:
        v = stage.shape.vocab_size
        if v < have and plan.start:
            return (
                f"the data's tokenizer has {have:,} tokens but the model the schedule starts from has {v:,} rows: "
                f"prepare the data with its tokenizer (growdsl data prepare CORPUS --tokenizer "
                f"{plan.start.tokenizer_folder})"
            )
        if v < have:
            return (
                f"the data's tokenizer has {have:,} tokens but the model's vocab is {v:,} (stage {stage.index}): "
                f"set vocab {have} in the model statement"
            )
        if v > have and not stage.shape.vocab_padded and plan.start is None:
            return (
                f"the model's vocab is {v:,} but the data's tokenizer has {have:,} tokens (stage {stage.index}): "
                f"set vocab {have} in the model statement, or `vocab {v} padded` if the extra rows are on "
                f"purpose (padding to a multiple of 64 or 128 is common)"
            )
    return None
