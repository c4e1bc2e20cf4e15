"""Depth growth by `learn` (LiGO): every target layer's weight is a learned mix of the source
layers' weights of the same kind,

    W_target[i] = sum_j D[i, j] * W_source[j],     one D (L_target x L_source) per weight kind,

with D starting as the layer map's one-hot selection (so the model starts exactly at G_stack or
whatever map the plan resolved). The runtime trains D alone for the plan's LiGO steps (source
weights, embeddings, final norm and head frozen), then `bake` writes the mixed weights into the
plain model and training goes on as usual."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.func import functional_call

from growdsl.ops.layout import GLOBAL_PARAMS, LAYER_PARAMS, copy_into, layer_key
from growdsl.plan.plan import DepthGrowth


class LigoDepth(nn.Module):
    def __init__(self, src: Mapping[str, torch.Tensor], growth: DepthGrowth):
        super().__init__()
        self.target_layers = growth.target_layers
        source_layers = growth.source_layers
        select = torch.zeros(growth.target_layers, source_layers)
        for i, origin in enumerate(growth.layer_map):
            select[i, origin.source] = 1.0
        self.mix = nn.ParameterDict()
        self.sources: dict[str, torch.Tensor] = {}
        for name in LAYER_PARAMS:
            stacked = torch.stack([src[layer_key(j, name)].detach() for j in range(source_layers)])
            self.sources[name] = stacked
            self.mix[_slot(name)] = nn.Parameter(select.to(stacked.dtype).clone())
        self.fixed = {name: src[name].detach() for name in GLOBAL_PARAMS if name in src}

    def weights(self) -> dict[str, torch.Tensor]:
        """Every weight of the target model under the current mix."""
        out = dict(self.fixed)
        for name, stacked in self.sources.items():
            mixed = torch.einsum("ij,j...->i...", self.mix[_slot(name)], stacked)
            for i in range(self.target_layers):
                out[layer_key(i, name)] = mixed[i]
        return out

    def forward(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """The target model's logits with the mixed weights (gradients reach the mix only)."""
        return functional_call(model, self.weights(), (tokens,), strict=False)

    @torch.no_grad()
    def bake(self, dst: Mapping[str, torch.Tensor]) -> None:
        """Write the mixed weights into the target model: from here on it is a plain model."""
        for name, value in self.weights().items():
            if name in dst:
                copy_into(dst[name], value.to(dst[name].dtype))


def _slot(name: str) -> str:
    return name.replace(".", "_")  # ParameterDict keys cannot hold dots
