"""The 0 -> 1 mask that fades fresh blocks in (depth `init random`, MSG style):

    y = m * block(x) + (1 - m) * x

At m = 0 the block is an identity, so the grown model computes what the base did; at m = 1 it is
the plain block. The mask is a persistent buffer of the block (`layers.{i}.growth_ramp`), so it is
saved and resharded with the model, and a forward hook applies it, so torchtitan's block, FSDP and
activation checkpointing stay as they are. `remove_ramp` takes both away once m reaches 1."""

from __future__ import annotations

import torch
from torch import nn

RAMP = "growth_ramp"
_HOOK = "_growdsl_ramp_hook"


def attach_ramp(block: nn.Module, value: float = 0.0) -> None:
    if hasattr(block, _HOOK):
        raise ValueError("block already has a ramp")
    device = next(block.parameters()).device
    block.register_buffer(RAMP, torch.tensor(float(value), device=device if device.type != "meta" else None))
    setattr(block, _HOOK, block.register_forward_hook(_mix))


def _mix(block: nn.Module, args, out: torch.Tensor) -> torch.Tensor:
    x = args[0]
    m = getattr(block, RAMP).to(out.dtype)
    return m * out + (1 - m) * x  # bit-exact at both ends: x at m = 0, out at m = 1


def set_ramp(block: nn.Module, value: float) -> None:
    getattr(block, RAMP).fill_(min(1.0, max(0.0, float(value))))


def ramp_value(step: int, ramp_steps: int) -> float:
    """The mask after `step` steps of a `ramp_steps` ramp (linear, reaches 1 at ramp_steps)."""
    return min(1.0, step / ramp_steps) if ramp_steps > 0 else 1.0


def has_ramp(block: nn.Module) -> bool:
    return hasattr(block, _HOOK)


def remove_ramp(block: nn.Module) -> None:
    """Drop the mask (it must be 1: the block is then exactly the plain block)."""
    value = float(getattr(block, RAMP))
    if value != 1.0:
        raise ValueError(f"ramp is at {value}, not 1: removing it would change the model")
    getattr(block, _HOOK).remove()
    delattr(block, _HOOK)
    delattr(block, RAMP)
