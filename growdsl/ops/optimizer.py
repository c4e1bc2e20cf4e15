"""AdamW state by parameter name: what a growth's `optimizer carry` maps (each operator says how,
growdsl.ops.operators) and what checkpoints hold.

State is handled keyed by parameter name ({"layers.3.attention.wq.weight": {"step", "exp_avg",
"exp_avg_sq"}}), the way torch.distributed.checkpoint keys it, and installed into a fresh
torch.optim.AdamW through its own load_state_dict. Moments are cloned tensor by tensor, so FSDP2
shards stay shard-local."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from growdsl.ops.layout import named_parameters

State = dict[str, dict[str, torch.Tensor]]
MOMENTS = ("exp_avg", "exp_avg_sq")


def parameter_names(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its state-dict name. Taken when an optimizer is built over the model: a
    sharded model's forward may swap its parameters for unsharded ones for a while."""
    return {id(p): name for name, p in named_parameters(model).items()}


def named_state(model: nn.Module | dict[int, str], optimizer: torch.optim.Optimizer) -> State:
    """The optimizer's state by parameter name (names from the model, or from parameter_names)."""
    names = model if isinstance(model, dict) else parameter_names(model)
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


def cloned(st: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in st.items()}


def zeroed(st: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Zero moments for a parameter that starts at zero or fresh; the step count is kept."""
    return {k: (torch.zeros_like(v) if k in MOMENTS else v.clone()) for k, v in st.items()}
