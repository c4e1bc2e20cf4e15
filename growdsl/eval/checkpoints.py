"""A trained model back from a run: the checkpoint (a run directory means its newest), the model
in that checkpoint's shape with its weights (ramp masks included), and the run's tokenizer."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tokenizers import Tokenizer

from growdsl.data.tokenizer import Specials, TokenizerError, read_prepared
from growdsl.errors import UsageError
from growdsl.files import read_json
from growdsl.ops.model import build_model
from growdsl.plan.shape import ModelShape
from growdsl.records.progress import RampRecord
from growdsl.runtime import checkpoint
from growdsl.runtime.rundir import RunDirError, check_plain


class LoadError(UsageError):
    pass


@dataclass
class Trained:
    model: torch.nn.Module
    shape: ModelShape
    progress: checkpoint.Progress
    path: Path  # the checkpoint
    run_dir: Path
    tokenizer: Tokenizer
    specials: Specials  # how a document starts and ends
    seq_len: int  # what the checkpoint's stage trained on: the evaluation window
    ramps: list[RampRecord]

    @property
    def eot_id(self) -> int:
        eot = self.tokenizer.token_to_id(self.specials.eos)
        assert eot is not None  # read_prepared checks the config's tokens are the tokenizer's
        return eot

    @property
    def bos_id(self) -> int | None:
        return None if self.specials.bos is None else self.tokenizer.token_to_id(self.specials.bos)

    @property
    def label(self) -> str:
        p = self.progress
        return f"stage{p.stage}-{'end' if p.phase == 'end' else f'step{p.step}'}"

    def run_file(self, name: str) -> Path:
        return self.run_dir / name


def find(path: Path) -> Path:
    """The checkpoint `path` names: itself, or a run directory's newest committed one."""
    if (path / checkpoint.MANIFEST).exists() or (path / "progress.json").exists():
        return path
    if path.name.endswith(".partial"):
        raise LoadError(f"{path} is a checkpoint whose write never finished")
    newest = checkpoint.latest(path / "checkpoints")
    if newest is None:
        raise LoadError(f"{path} is neither a checkpoint nor a run directory with a complete checkpoint")
    return newest


def load(path: Path, device: torch.device = torch.device("cpu"), appends: bool = False) -> Trained:
    """The checkpoint `path` names, verified against its manifest and loaded without running any of
    its code (growdsl.runtime.checkpoint); a damaged one is named, with the newest good one to use.
    `appends`: the caller will append to the run's history (`eval`), so none of it may be a hard link."""
    from growdsl.ops.ramp import Ramp
    from growdsl.plan.plan import stage_from_record, with_fields_since

    ckpt = find(path)
    run_dir = ckpt.parent.parent
    if ckpt.parent.name != "checkpoints" or not (run_dir / "plan.json").exists():
        raise LoadError(
            f"{ckpt} is not inside a run directory (RUN/checkpoints/{ckpt.name} beside RUN/plan.json): eval and "
            f"export read the run's plan and tokenizer; give the checkpoint in its run"
        )
    try:
        check_plain(run_dir, appends)
    except RunDirError as e:
        raise LoadError(str(e)) from None
    try:
        progress = checkpoint.check(ckpt)
    except checkpoint.NewerCheckpoint as e:
        raise LoadError(str(e)) from None
    except checkpoint.CheckpointError as e:
        try:
            good = checkpoint.newest_good(ckpt.parent)
        except checkpoint.NewerCheckpoint:
            good = None
        hint = (
            f"; the newest checkpoint that checks out is {good[0]}"
            if good
            else "; no checkpoint of this run checks out"
        )
        raise LoadError(f"{e}{hint}") from None
    try:
        plan = read_json(run_dir / "plan.json")
        record = progress.plan_prefix[progress.stage]
        stage = stage_from_record(with_fields_since(record, plan["stages"][progress.stage]))
        max_seq = max(int(s["training"]["seq_len"]) for s in plan["stages"])  # the RoPE table the run built
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError) as e:
        raise LoadError(
            f"{ckpt} or {run_dir / 'plan.json'} does not describe a model: {str(e).splitlines()[0][:200]}"
        ) from None
    max_seq = max(max_seq, stage.training.seq_len)
    if max_seq > MAX_SEQ:
        raise LoadError(f"{run_dir / 'plan.json'} asks for {max_seq:,}-token sequences: not a run growdsl made")
    _check_tensors(ckpt, stage.shape, max_seq)
    model = build_model(stage.shape, max_seq, device=device)
    try:
        for r in progress.ramps:
            Ramp.restore(model, r)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*single process.*")
            checkpoint.read(ckpt, {"model": model.state_dict()})
    except (checkpoint.CheckpointError, ValueError) as e:
        raise LoadError(str(e)) from None
    model.eval()
    try:
        tokenizer, specials = read_prepared(tokenizer_file(run_dir).parent)
    except TokenizerError as e:
        raise LoadError(str(e)) from None
    return Trained(
        model,
        stage.shape,
        progress,
        ckpt,
        run_dir,
        tokenizer,
        specials,
        stage.training.seq_len,
        progress.ramps,
    )


MAX_SEQ = 2**20


def _check_tensors(ckpt: Path, shape, seq_len: int) -> None:
    """The model progress.json records must be the one whose tensors the checkpoint holds, and those
    tensors must fit in its files: checked on the metadata, before a model is built."""
    from growdsl.ops.model import transformer

    try:
        held = checkpoint.SafeReader(ckpt).read_metadata().state_dict_metadata
    except checkpoint.CheckpointError as e:
        raise LoadError(str(e)) from None
    with torch.device("meta"):
        wanted = transformer(shape, seq_len).state_dict()
    for name, t in wanted.items():
        have = held.get(f"model.{name}")
        if name != "freqs_cis" and (have is None or tuple(have.size) != tuple(t.shape)):
            raise LoadError(
                f"{ckpt}: its progress.json records a {shape.describe()} model, but its tensors are not that "
                f"model's ({name}: {tuple(have.size) if have else 'missing'}, not {tuple(t.shape)})"
            )
    claimed = sum(m.size.numel() * m.properties.dtype.itemsize for m in held.values())
    stored = sum(p.stat().st_size for p in ckpt.glob("*.distcp"))
    if claimed > stored:
        raise LoadError(f"{ckpt / '.metadata'} claims {claimed:,} bytes of tensors; its files hold {stored:,}")


def tokenizer_file(run_dir: Path) -> Path:
    """The tokenizer a run trained with: its own copy, else the one of the data it names."""
    own = run_dir / "tokenizer.json"
    if own.is_file():
        return own
    data = data_dir(run_dir)
    if data is None or not (data / "tokenizer.json").is_file():
        raise LoadError(f"{run_dir} has no tokenizer.json and names no data folder that has one")
    return data / "tokenizer.json"


def data_dir(run_dir: Path) -> Path | None:
    """The prepared data folder the run read (recorded in run.json), if it is still a prepared folder."""
    from growdsl.runtime.rundir import read_record

    if not (run_dir / "run.json").is_file():
        return None
    try:
        data = Path(read_record(run_dir).data)
    except RunDirError as e:
        raise LoadError(str(e)) from None
    return data if (data / "meta.json").is_file() else None
