"""The 0 -> 1 mask that fades fresh blocks in (depth `init random`, MSG style):

    y = m * block(x) + (1 - m) * x

At m = 0 the block is an identity, so the grown model computes what the base did; at m = 1 it is
the plain block. The mask is a persistent buffer of the block (`layers.{i}.growth_ramp`), so it is
saved and resharded with the model, and a forward hook applies it, so torchtitan's block, FSDP and
activation checkpointing stay as they are. `remove_ramp` takes both away once m reaches 1."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from growdsl.records.progress import RampRecord

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


def remove_ramp(block: nn.Module) -> None:
    """Drop the mask (it must be 1: the block is then exactly the plain block)."""
    value = float(getattr(block, RAMP))
    if value != 1.0:
        raise ValueError(f"ramp is at {value}, not 1: removing it would change the model")
    getattr(block, _HOOK).remove()
    delattr(block, _HOOK)
    delattr(block, RAMP)


# ---- width ---------------------------------------------------------------------------------
# A widened model whose new units start fresh (width `init random`) carries one mask m on the
# root (`growth_ramp`): new residual dims, new heads and new FFN units are scaled by m where they
# are written, and every RMSNorm takes its mean square over d + m (D - d) dims instead of D. At
# m = 0 the model is the base (new dims hold zeros that no norm counts); at m = 1 it is the plain
# widened model.

_WIDTH_HOOKS = "_growdsl_width_ramp_hooks"


def attach_width_ramp(model: Any, old_dim: int, old_heads: int, old_ffn: int, value: float = 0.0) -> None:
    """Put the mask on `model` (torchtitan's Transformer: its blocks, norms and projections by name)."""
    if hasattr(model, _WIDTH_HOOKS):
        raise ValueError("model already has a width ramp")
    param = next(model.parameters())
    model.register_buffer(RAMP, torch.tensor(float(value), device=param.device))
    head_dim = model.layers["0"].attention.head_dim
    hooks = [model.tok_embeddings.register_forward_hook(_mask_out(model, old_dim))]
    for block in model.layers.values():
        attn, ffn = block.attention, block.feed_forward
        hooks += [
            attn.wo.register_forward_pre_hook(_mask_in(model, old_heads * head_dim)),
            attn.wo.register_forward_hook(_mask_out(model, old_dim)),
            ffn.w2.register_forward_pre_hook(_mask_in(model, old_ffn)),
            ffn.w2.register_forward_hook(_mask_out(model, old_dim)),
            block.attention_norm.register_forward_hook(_norm_over_active(model, old_dim)),
            block.ffn_norm.register_forward_hook(_norm_over_active(model, old_dim)),
        ]
    hooks.append(model.norm.register_forward_hook(_norm_over_active(model, old_dim)))
    setattr(model, _WIDTH_HOOKS, hooks)


def _scale(model: nn.Module, old: int, t: torch.Tensor) -> torch.Tensor:
    """Ones for the first `old` features of t, m for the new ones."""
    m = getattr(model, RAMP).to(t.dtype)
    return torch.cat([torch.ones(old, dtype=t.dtype, device=t.device), m.expand(t.shape[-1] - old)])


def _mask_out(model: nn.Module, old: int):
    return lambda module, args, out: out * _scale(model, old, out)


def _mask_in(model: nn.Module, old: int):
    return lambda module, args: (args[0] * _scale(model, old, args[0]), *args[1:])


def _norm_over_active(model: nn.Module, old: int):
    def hook(norm: nn.Module, args, out: torch.Tensor) -> torch.Tensor:
        x = args[0]
        width = x.shape[-1]
        active = old + getattr(model, RAMP).to(x.dtype) * (width - old)
        sq = x.pow(2).sum(-1, keepdim=True)
        eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
        return out * torch.sqrt((sq / width + eps) / (sq / active + eps))

    return hook


def remove_width_ramp(model: nn.Module) -> None:
    value = float(getattr(model, RAMP))
    if value != 1.0:
        raise ValueError(f"ramp is at {value}, not 1: removing it would change the model")
    for handle in getattr(model, _WIDTH_HOOKS):
        handle.remove()
    delattr(model, _WIDTH_HOOKS)
    delattr(model, RAMP)


@dataclass
class Ramp:
    """A live ramp: the module holding the mask (`name` in the model), its length in optimizer
    steps, the steps done; `old` (dim, heads, ffn) for a width ramp, None for a depth ramp."""

    module: nn.Module
    steps: int
    name: str
    old: tuple[int, int, int] | None = None
    step: int = 0

    def advance(self) -> bool:
        """One optimizer step more; at the end the mask is 1 and is removed (the plain model
        stays). True once it has ended."""
        self.step += 1
        set_ramp(self.module, ramp_value(self.step, self.steps))
        if self.step >= self.steps:
            (remove_width_ramp if self.old else remove_ramp)(self.module)
            return True
        return False

    def write_mask(self) -> None:
        """Set the mask to its value after the steps done (a model just given storage holds garbage)."""
        set_ramp(self.module, ramp_value(self.step, self.steps))

    def describe(self) -> RampRecord:
        """What a checkpoint records of it (the mask's value comes with the weights)."""
        return RampRecord(self.name, self.steps, self.step, list(self.old) if self.old else None)

    @staticmethod
    def restore(model: nn.Module, record: RampRecord) -> Ramp:
        """Put a recorded ramp back on a freshly built model: a width ramp (old dim, heads, ffn) on
        the model itself, a depth ramp on one of its blocks; anything else is a ValueError."""
        name = record.name
        old = (record.old[0], record.old[1], record.old[2]) if record.old and len(record.old) == 3 else None
        width = old is not None and name == ""
        depth = not record.old and re.fullmatch(r"layers\.\d+", name) is not None
        try:
            module = model.get_submodule(name) if width or depth else None
        except AttributeError:
            module = None
        if module is None:
            raise ValueError(f"a ramp on {name!r} with old {record.old!r}, which this model cannot have")
        if old:
            attach_width_ramp(module, *old)
        else:
            attach_ramp(module)
        return Ramp(module, record.steps, name, old, record.step)
