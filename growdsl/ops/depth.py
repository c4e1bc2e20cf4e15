"""Depth growth by a layer map: target layer i takes source layer m[i] (G_stack, partial stacking,
interpolation, gradual stacking and LLaMA-Pro are all such maps), started as the map's `init` says.
The operators (growdsl.ops.operators) build on these:

- copy / learn: the source layer's weights, bit-exact (LiGO starts from the copy);
- zero:   the copy with its residual writers (attention wo, MLP w2) zeroed: an identity block;
- random: left as the target model's own fresh init (a ramp fades it in).

Embeddings, the final norm and the output head are copied unchanged. Every write is a shard-local
copy (layout.copy_into), so on FSDP2 models nothing is gathered."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from growdsl.ops.layout import GLOBAL_PARAMS, LAYER_PARAMS, RESIDUAL_WRITERS, copy_into, layer_key, local
from growdsl.ops.optimizer import State, cloned, zeroed
from growdsl.plan.operators import start_kind
from growdsl.plan.plan import DepthGrowth


@torch.no_grad()
def copy_layers(src: Mapping[str, torch.Tensor], dst: Mapping[str, torch.Tensor], growth: DepthGrowth) -> None:
    """Write every layer's source weights into `dst` (the target model's state dict, in place),
    the global weights too; fresh layers are left alone and `zero` layers get zero residual writers."""
    if len(growth.layer_map) != growth.target_layers:
        raise ValueError("layer map and target depth disagree")
    for name in GLOBAL_PARAMS:
        if name in dst:  # a tied output head is not in the state dict twice
            copy_into(dst[name], src[name])
    for i, origin in enumerate(growth.layer_map):
        kind = start_kind(origin.init)  # what the operator declares its new layers are
        if kind == "fresh":
            continue
        assert origin.source is not None  # a depth growth's map gives every layer a source
        for name in LAYER_PARAMS:
            copy_into(dst[layer_key(i, name)], src[layer_key(origin.source, name)])
        if kind == "silent":
            for name in RESIDUAL_WRITERS:
                local(dst[layer_key(i, name)]).zero_()


def carry_depth(state: State, growth: DepthGrowth) -> State:
    """The grown model's AdamW state: moments placed by the layer map exactly as the weights;
    zero-initialised weights (an identity block's wo, w2) and fresh layers start with zero moments."""
    out: State = {name: cloned(state[name]) for name in GLOBAL_PARAMS if name in state}
    for i, origin in enumerate(growth.layer_map):
        assert origin.source is not None  # a depth growth's map gives every layer a source
        for name in LAYER_PARAMS:
            src = state.get(layer_key(origin.source, name))
            if src is None:  # the parameter never stepped: nothing to carry
                continue
            kind = start_kind(origin.init)
            fresh = kind == "fresh" or (kind == "silent" and name in RESIDUAL_WRITERS)
            out[layer_key(i, name)] = zeroed(src) if fresh else cloned(src)
    return out
