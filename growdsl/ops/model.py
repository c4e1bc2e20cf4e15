"""Build torchtitan's Llama3 `Transformer` for a planned shape, the way torchtitan does:
on the meta device first, then materialised and initialised."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torchtitan.models.llama3 import Transformer, TransformerModelArgs
from torchtitan.models.llama3.model.args import RoPEScalingArgs

from growdsl.ops.layout import GLOBAL_PARAMS, state_dict, write_full
from growdsl.plan.shape import ModelShape, torchtitan_model_args


def model_args(shape: ModelShape, seq_len: int) -> TransformerModelArgs:
    args = torchtitan_model_args(shape, seq_len)
    scaling = RoPEScalingArgs(*args.pop("rope_scaling"))
    return TransformerModelArgs(**args, rope_scaling_args=scaling)


def transformer(shape: ModelShape, seq_len: int) -> Transformer:
    """torchtitan's Llama3 Transformer of `shape` (on the current default device), each block that holds
    experts with torchtitan's MoE for its feed-forward (growdsl.ops.experts)."""
    model = Transformer(model_args(shape, seq_len))
    if shape.experts is not None:
        from growdsl.ops.experts import with_experts

        for key, block in model.layers.items():
            if shape.experts.holds(int(key)):
                with_experts(block, shape.experts, shape.dim, shape.ffn_dim)
    return model


@contextmanager
def _default_dtype(dtype: torch.dtype):
    # Built under the dtype rather than cast afterwards: `Module.to(float64)` would also cast the
    # complex RoPE table to real and silently break attention.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def meta_model(shape: ModelShape, seq_len: int, dtype: torch.dtype = torch.float32) -> Transformer:
    """The model's structure without storage (the meta device): to be laid out, then `materialize`d.
    A tied shape shares one tensor between `tok_embeddings` and `output` (torchtitan 0.2.2 has no
    tying of its own)."""
    with _default_dtype(dtype), torch.device("meta"):
        model = transformer(shape, seq_len)
    if shape.tied_embeddings:
        model.output.weight = model.tok_embeddings.weight
    return model


def build_model(
    shape: ModelShape,
    seq_len: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int | None = None,
) -> Transformer:
    """A freshly initialised model (torchtitan's own init_weights) of `shape`, whole, built in `dtype`."""
    model = meta_model(shape, seq_len, dtype)
    materialize(model, shape, seq_len, dtype=dtype, device=device, seed=seed)
    return model


class _BlockInit(nn.Module):
    """Stands in for a block of the whole model while its init_weights runs (which calls each
    block's init_weights in turn): `init` builds that block, initialises it and hands it on."""

    def __init__(self, init) -> None:
        super().__init__()
        self.init = init

    def init_weights(self) -> None:
        self.init()


def materialize(
    model: nn.Module,
    shape: ModelShape,
    seq_len: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int | None = None,
) -> None:
    """Give a `meta_model` (laid out already, or not) storage on `device` and torchtitan's initial weights.

    The weights are the ones torchtitan's init_weights draws for the whole model, draw for draw, but
    a rank never holds more than its own shards, the embedding and head tables, and one whole block:
    a whole model of the same shape runs init_weights with each block standing in, built when
    its turn comes and written into `model` (each rank keeping its shard), then dropped. So the
    same seed gives the same model on one process and on any layout."""
    device = torch.device(device)
    model.to_empty(device=device)
    if shape.tied_embeddings:  # to_empty gives each its own storage
        model.get_submodule("output").weight = model.get_parameter("tok_embeddings.weight")
    into = state_dict(model)
    with _default_dtype(dtype):
        with torch.device("meta"):
            whole = transformer(shape, seq_len)
        blocks = dict(whole.layers.items())

        def init_block(key: str) -> None:
            block = blocks.pop(key).to_empty(device=device)
            block.init_weights()
            for name, value in block.state_dict().items():
                write_full(into[f"layers.{key}.{name}"], value)

        whole.layers = nn.ModuleDict({key: _BlockInit(lambda key=key: init_block(key)) for key in blocks})
        parts = [whole.tok_embeddings, whole.norm] + ([] if shape.tied_embeddings else [whole.output])
        for part in parts:  # a tied head gets no storage of its own: it is the embedding's
            part.to_empty(device=device)
        if shape.tied_embeddings:  # the head's init wins, as on a tied model
            whole.output.weight = whole.tok_embeddings.weight
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad():
            whole.init_weights(buffer_device=device)
            for name in GLOBAL_PARAMS:
                write_full(into[name], whole.get_parameter(name))
    model.freqs_cis = whole.freqs_cis
    if shape.experts is not None:
        from growdsl.ops.experts import zero_counts

        zero_counts(model)
