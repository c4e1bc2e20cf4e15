"""AdamW state across a growth: `reset` (a fresh optimizer, as the paper does) or `carry` (every
moment follows the same map as its weight).

State is handled keyed by parameter name ({"layers.3.attention.wq.weight": {"step", "exp_avg",
"exp_avg_sq"}}), the way torch.distributed.checkpoint keys it, and installed into a fresh
torch.optim.AdamW through its own load_state_dict. Moments are cloned tensor by tensor, so FSDP2
shards stay shard-local."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from growdsl.ops.layout import GLOBAL_PARAMS, LAYER_PARAMS, RESIDUAL_WRITERS, layer_key, named_parameters
from growdsl.plan.plan import DepthGrowth

State = dict[str, dict[str, torch.Tensor]]
MOMENTS = ("exp_avg", "exp_avg_sq")


def named_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> State:
    names = {id(p): name for name, p in named_parameters(model).items()}
    return {names[id(p)]: dict(st) for p, st in optimizer.state.items()}


def load_named_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: State) -> None:
    """Install name-keyed state into `optimizer` (built over `model`'s parameters)."""
    index = {}
    position = 0
    order = {id(p): name for name, p in named_parameters(model).items()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            index[order[id(p)]] = position
            position += 1
    unknown = set(state) - set(index)
    if unknown:
        raise KeyError(f"optimizer state for parameters the model does not have: {sorted(unknown)[:3]}")
    full = optimizer.state_dict()
    full["state"] = {index[name]: st for name, st in state.items()}
    optimizer.load_state_dict(full)


def _clone(st: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in st.items()}


def _zeroed(st: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Zero moments for a parameter that starts at zero or fresh; the step count is kept."""
    return {k: (torch.zeros_like(v) if k in MOMENTS else v.clone()) for k, v in st.items()}


def carry_depth(state: State, growth: DepthGrowth) -> State:
    """The grown model's AdamW state: moments placed by the layer map exactly as the weights;
    zero-initialised weights (an identity block's wo, w2) and fresh layers start with zero moments."""
    out: State = {name: _clone(state[name]) for name in GLOBAL_PARAMS if name in state}
    for i, origin in enumerate(growth.layer_map):
        for name in LAYER_PARAMS:
            src = state.get(layer_key(origin.source, name))
            if src is None:  # the parameter never stepped: nothing to carry
                continue
            fresh = origin.init == "random" or (origin.init == "zero" and name in RESIDUAL_WRITERS)
            out[layer_key(i, name)] = _zeroed(src) if fresh else _clone(src)
    return out


def grown_state(policy: str, state: State, growth) -> State:
    """What the grown model's optimizer starts from under the growth's `optimizer` policy."""
    if policy == "reset":
        return {}
    if isinstance(growth, DepthGrowth):
        return carry_depth(state, growth)
    from growdsl.ops.width import carry_width

    return carry_width(state, growth)
