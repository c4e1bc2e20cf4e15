"""Build torchtitan's Llama3 `Transformer` for a planned shape, the way torchtitan does:
on the meta device first, then materialised and initialised."""

from __future__ import annotations

import torch
from torchtitan.models.llama3 import Transformer, TransformerModelArgs
from torchtitan.models.llama3.model.args import RoPEScalingArgs

from growdsl.plan.shape import ModelShape, torchtitan_model_args


def model_args(shape: ModelShape, seq_len: int) -> TransformerModelArgs:
    args = torchtitan_model_args(shape, seq_len)
    scaling = RoPEScalingArgs(*args.pop("rope_scaling"))
    return TransformerModelArgs(**args, rope_scaling_args=scaling)


def build_model(
    shape: ModelShape,
    seq_len: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int | None = None,
) -> Transformer:
    """A freshly initialised model (torchtitan's own init_weights) of `shape`, built in `dtype`.

    A tied shape shares one tensor between `tok_embeddings` and `output`. Built under that
    default dtype rather than cast afterwards: `Module.to(float64)` would also
    cast the complex RoPE table to real and silently break attention."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device("meta"):
            model = Transformer(model_args(shape, seq_len))
        model.to_empty(device=device)
        if shape.tied_embeddings:  # torchtitan 0.2.2 has no tying of its own; the head's init wins
            model.output.weight = model.tok_embeddings.weight
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad():
            model.init_weights(buffer_device=torch.device(device))
    finally:
        torch.set_default_dtype(previous)
    return model
