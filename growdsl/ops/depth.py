"""Depth growth: target layer i takes source layer m[i] (G_stack, partial stacking, interpolation,
gradual stacking and LLaMA-Pro are all such maps), initialised as the plan's layer map says:

- copy:   the source layer's weights, bit-exact;
- zero:   the copy with its residual writers (attention wo, MLP w2) zeroed: an identity block;
- random: the target model's own fresh init, faded in by a ramp (ops.ramp) that starts at 0;
- learn:  the copy (LiGO starts at G_stack; ops.ligo trains the mixing and bakes it in).

Embeddings, the final norm and the output head are copied unchanged. Every write is a shard-local
copy (layout.copy_into), so on FSDP2 models nothing is gathered."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from growdsl.ops import ramp
from growdsl.ops.layout import GLOBAL_PARAMS, LAYER_PARAMS, RESIDUAL_WRITERS, copy_into, layer_key, local
from growdsl.plan.plan import DepthGrowth


@torch.no_grad()
def grow_depth(src: Mapping[str, torch.Tensor], dst: Mapping[str, torch.Tensor], growth: DepthGrowth) -> None:
    """Write the grown weights into `dst` (the target model's state dict, filled in place)."""
    if len(growth.layer_map) != growth.target_layers:
        raise ValueError("layer map and target depth disagree")
    for name in GLOBAL_PARAMS:
        if name in dst:  # a tied output head is not in the state dict twice
            copy_into(dst[name], src[name])
    for i, origin in enumerate(growth.layer_map):
        if origin.init == "random":
            continue
        for name in LAYER_PARAMS:
            copy_into(dst[layer_key(i, name)], src[layer_key(origin.source, name)])
        if origin.init == "zero":
            for name in RESIDUAL_WRITERS:
                local(dst[layer_key(i, name)]).zero_()


def attach_depth_ramps(model: nn.Module, growth: DepthGrowth, value: float = 0.0) -> list[int]:
    """Put a ramp on every layer the map initialises at random; returns their indices."""
    fresh = [i for i, o in enumerate(growth.layer_map) if o.init == "random"]
    for i in fresh:
        ramp.attach_ramp(model.layers[str(i)], value)
    return fresh
