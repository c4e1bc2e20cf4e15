"""A trained model back from a run: the checkpoint (a run directory means its newest), the model
in that checkpoint's shape with its weights (ramp masks included), and the run's tokenizer."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

from growdsl.ops.model import build_model
from growdsl.plan.shape import ModelShape
from growdsl.runtime import checkpoint
from growdsl.runtime.data import EOT


class LoadError(Exception):
    pass


@dataclass
class Trained:
    model: torch.nn.Module
    shape: ModelShape
    progress: checkpoint.Progress
    path: Path  # the checkpoint
    run_dir: Path
    tokenizer: object  # tokenizers.Tokenizer
    eot_id: int
    seq_len: int  # what the checkpoint's stage trained on: the evaluation window
    ramps: list[dict]

    @property
    def label(self) -> str:
        p = self.progress
        return f"stage{p.stage}-{'end' if p.phase == 'end' else f'step{p.step}'}"

    def run_file(self, name: str) -> Path:
        return self.run_dir / name


def find(path: Path) -> Path:
    """The checkpoint `path` names: itself, or a run directory's newest complete one."""
    if (path / "progress.json").exists():
        return path
    if path.name.endswith(".partial"):
        raise LoadError(f"{path} is a checkpoint whose write never finished")
    newest = checkpoint.latest(path / "checkpoints") if (path / "checkpoints").is_dir() else None
    if newest is None:
        raise LoadError(f"{path} is neither a checkpoint nor a run directory with a complete checkpoint")
    return newest


def load(path: Path, device: torch.device = torch.device("cpu")) -> Trained:
    from tokenizers import Tokenizer

    from growdsl.ops.ramp import Ramp

    ckpt = find(path)
    run_dir = ckpt.parent.parent
    progress = checkpoint.read_progress(ckpt)
    stage = progress.plan_prefix[progress.stage]
    shape = ModelShape(**stage["shape"])
    plan = json.loads((run_dir / "plan.json").read_text())
    max_seq = max(s["training"]["seq_len"] for s in plan["stages"])  # the RoPE table the run built
    model = build_model(shape, max_seq, device=device)
    for r in progress.ramps:
        Ramp.restore(model, r)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*single process.*")
        dcp.load({"model": model.state_dict()}, checkpoint_id=str(ckpt))
    model.eval()
    tokenizer = Tokenizer.from_file(str(tokenizer_file(run_dir)))
    return Trained(
        model,
        shape,
        progress,
        ckpt,
        run_dir,
        tokenizer,
        tokenizer.token_to_id(EOT),
        stage["training"]["seq_len"],
        progress.ramps,
    )


def tokenizer_file(run_dir: Path) -> Path:
    """The tokenizer a run trained with: its own copy, else the one of the data it names."""
    own = run_dir / "tokenizer.json"
    if own.exists():
        return own
    data = data_dir(run_dir)
    if data is None or not (data / "tokenizer.json").exists():
        raise LoadError(f"{run_dir} has no tokenizer.json and names no data folder that has one")
    return data / "tokenizer.json"


def data_dir(run_dir: Path) -> Path | None:
    """The prepared data folder the run read (recorded in run.json)."""
    info = run_dir / "run.json"
    return Path(json.loads(info.read_text())["data"]) if info.exists() else None
