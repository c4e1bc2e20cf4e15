"""Checkpoints: the model (ramp masks included), the AdamW state, the RNG, and where the run stands
(stage, step, data position, ramps, growth log, the plan), written with torch.distributed.checkpoint
so they reshard across world sizes.

A checkpoint is written into `NAME.partial/` and renamed to `NAME/` only when complete: a write
killed halfway leaves a `.partial` folder that `latest` never picks."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn

from growdsl.ops.layout import named_parameters
from growdsl.ops.optimizer import MOMENTS, State

PREFIX = "ckpt-"


@dataclass
class Progress:
    """Where a run stands. phase "start": stage `stage` is about to run step `step` (its growths
    applied); "end": stage `stage` has finished (its successor's growths not applied yet)."""

    seq: int
    stage: int
    phase: str
    step: int
    position: int
    global_step: int
    flops: int
    plan_prefix: list  # the JSON of stages 0..stage: resuming needs them unchanged
    ramps: list[dict] = field(default_factory=list)
    optimizer_names: list[str] = field(default_factory=list)
    growth_checks: list[str] = field(default_factory=list)
    val_flops: int = 0  # validation's forward passes so far (not training compute)


def save(directory: Path, model: nn.Module, state: State, progress: Progress, world) -> Path:
    """Every rank writes its shards (DCP); the first rank commits the checkpoint by renaming it."""
    final = directory / f"{PREFIX}{progress.seq:06d}"
    partial = final.with_name(final.name + ".partial")
    if world.main:
        shutil.rmtree(partial, ignore_errors=True)
    world.barrier()
    progress.optimizer_names = sorted(state)
    dcp.save(
        {"model": model.state_dict(), "optimizer": state, "rng": torch.get_rng_state()}, checkpoint_id=str(partial)
    )
    if world.main:
        (partial / "progress.json").write_text(json.dumps(asdict(progress), indent=1))
        os.replace(partial, final)  # the commit point
    world.barrier()
    return final


def latest(directory: Path) -> Path | None:
    done = sorted(p for p in directory.glob(f"{PREFIX}*") if p.is_dir() and not p.name.endswith(".partial"))
    return done[-1] if done else None


def read_progress(path: Path) -> Progress:
    return Progress(**json.loads((path / "progress.json").read_text()))


def load(path: Path, model: nn.Module, progress: Progress) -> State:
    """Load weights into `model` (built in the checkpoint's shape, ramps attached) and return the
    optimizer state by parameter name."""
    params = named_parameters(model)
    state = {
        name: {"step": torch.zeros(()), **{m: torch.zeros_like(params[name]) for m in MOMENTS}}
        for name in progress.optimizer_names
    }
    rng = torch.get_rng_state()
    holder = {"model": model.state_dict(), "optimizer": state, "rng": rng}
    dcp.load(holder, checkpoint_id=str(path))
    torch.set_rng_state(holder["rng"])
    return state
