"""Build a model of a shape laid out as a stage trains it, without any rank holding it whole.

Built as torchtitan builds: on the meta device, laid out (FSDP2, TP, AC, compile), then given
storage and its initial weights block by block (growdsl.ops.model.materialize). A 7B model is 28 GB
in float32; a rank holds its shards plus an embedding, the head and one block. Every layout starts
from the weights one process draws."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn

from growdsl.errors import RunError
from growdsl.ops.model import materialize, meta_model
from growdsl.ops.ramp import Ramp
from growdsl.plan.plan import Stage
from growdsl.plan.shape import ModelShape
from growdsl.runtime.distributed import World, is_sharded, parallelize

PutRamps = Callable[[nn.Module], list[Ramp]]  # puts a growth's ramps on a model before it has storage


@dataclass
class Built:
    model: nn.Module
    ramps: list[Ramp]
    mixed: bool  # computes in bf16 over float32 weights


@dataclass(frozen=True)
class ModelBuilder:
    max_seq: int  # the longest sequence of any stage: the rotary table covers them all
    dtype: torch.dtype
    world: World
    mixed_precision: bool | None = None  # forces bf16 compute on or off; None: each stage's `mixed`

    @property
    def device(self) -> torch.device:
        return self.world.device

    def mixed(self, stage: Stage) -> bool:
        """Whether the stage computes in bf16 over float32 weights (`mixed auto`: on GPUs, as torchtitan)."""
        if self.mixed_precision is not None:
            return self.mixed_precision
        setting = stage.training.parallel.mixed
        return setting == "bf16" or (setting == "auto" and self.device.type == "cuda")

    def build(self, shape: ModelShape, stage: Stage, put_ramps: PutRamps | None = None) -> Built:
        """A freshly initialised model of `shape`, laid out as `stage` trains it, with the ramps
        `put_ramps` puts on (none by default)."""
        model = meta_model(shape, self.max_seq, self.dtype)
        ramps = put_ramps(model) if put_ramps else []
        mixed = self.mixed(stage)
        try:
            model = parallelize(model, stage.training, self.max_seq, self.world, self.dtype, mixed)
        except ValueError as e:
            raise RunError(str(e)) from None
        materialize(model, shape, self.max_seq, dtype=self.dtype, device=self.device)
        for ramp in ramps:  # the masks are buffers, and the storage just given holds garbage
            ramp.write_mask()
        return Built(model, ramps, mixed)


def autocast(model: nn.Module, mixed: bool):
    """bf16 autocast where mixed precision is on and FSDP does not already provide it (one GPU:
    torchtitan's maybe_enable_amp does the same)."""
    if mixed and not is_sharded(model):
        device = next(model.parameters()).device
        return torch.autocast(device.type, torch.bfloat16)
    return nullcontext()
