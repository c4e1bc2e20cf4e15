"""Where a torchtitan Llama3 keeps its weights, and the one sharded-tensor adapter the operators need."""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor

GLOBAL_PARAMS = ("tok_embeddings.weight", "norm.weight", "output.weight")
LAYER_PARAMS = (
    "attention.wq.weight",
    "attention.wk.weight",
    "attention.wv.weight",
    "attention.wo.weight",
    "feed_forward.w1.weight",
    "feed_forward.w2.weight",
    "feed_forward.w3.weight",
    "attention_norm.weight",
    "ffn_norm.weight",
)
# What depth zero clears to make a block an identity: the projections writing into the residual.
RESIDUAL_WRITERS = ("attention.wo.weight", "feed_forward.w2.weight")


def layer_key(layer: int, name: str) -> str:
    return f"layers.{layer}.{name}"


# What wrappers (activation checkpointing, torch.compile) insert into parameter names; state dicts
# leave them out, and so does every name growdsl keys weights or optimizer state by.
WRAPPER_PARTS = ("_checkpoint_wrapped_module.", "_orig_mod.")


def clean_name(name: str) -> str:
    for part in WRAPPER_PARTS:
        name = name.replace(part, "")
    return name


def named_parameters(model) -> dict[str, torch.Tensor]:
    """The model's parameters by their state-dict names."""
    return {clean_name(name): p for name, p in model.named_parameters()}


def state_dict(model) -> dict[str, torch.Tensor]:
    """The model's state dict by plain names: torch.compile's per-block wrapper puts `_orig_mod.`
    into its keys, which no checkpoint, operator or export should see."""
    return {clean_name(name): t for name, t in model.state_dict().items()}


def local(t: torch.Tensor) -> torch.Tensor:
    """The tensor this rank holds: an FSDP2/TP shard's local part, or the tensor itself."""
    return t.to_local() if isinstance(t, DTensor) else t


def copy_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """dst <- src, shard by shard. Both sharded alike (same shape, mesh and placements), so no
    rank sends or receives anything."""
    if dst.shape != src.shape:
        raise ValueError(f"shape mismatch: {tuple(src.shape)} -> {tuple(dst.shape)}")
    if isinstance(dst, DTensor) != isinstance(src, DTensor) or (
        isinstance(dst, DTensor) and isinstance(src, DTensor) and dst.placements != src.placements
    ):
        raise ValueError("source and target must be sharded alike for a shard-local copy")
    local(dst).copy_(local(src))


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (gathered across ranks for a DTensor)."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def write_full(dst: torch.Tensor, value: torch.Tensor) -> None:
    """dst <- value, where value is the whole tensor (the same on every rank): each rank keeps its own
    shard of it. Taken from a replicated view, which needs no communication and cuts unevenly too
    (FSDP over tensor-parallel weights whose rows do not split evenly, e.g. vocab 50257)."""
    if isinstance(dst, DTensor):
        from torch.distributed.tensor import Replicate

        mesh = dst.device_mesh
        whole = DTensor.from_local(value.to(dst.dtype), mesh, [Replicate()] * mesh.ndim, run_check=False)
        value = whole.redistribute(mesh, dst.placements).to_local()
    local(dst).copy_(value)


def reshard(model) -> None:
    """Put FSDP2's parameters back into their shards. A forward without a backward (a check, a
    validation) leaves the groups that keep their weights gathered after a forward (torchtitan's
    final norm and head, and the root) unsharded, with plain tensors standing in the model's
    parameters: an optimizer built then would update copies that the next forward throws away."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def laid_out_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`value` (an optimizer moment) laid out as the parameter `like`: sharded alike, or whole. One
    laid out alike already is kept as it is (gathering every moment of a large model would not fit)."""
    if isinstance(value, DTensor) == isinstance(like, DTensor) and value.shape == like.shape:
        if not isinstance(value, DTensor) or (
            isinstance(like, DTensor) and value.device_mesh == like.device_mesh and value.placements == like.placements
        ):
            return value
    out = torch.zeros_like(like)
    write_full(out, full(value))
    return out
