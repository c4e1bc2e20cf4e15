"""Growth by `learn` (LiGO): the grown weights are a learned linear function of the base's, trained
for the plan's LiGO steps (the map alone: base weights frozen) and then baked into plain weights.

Depth (LigoDepth): every target layer's weight is a learned mix of the source layers' weights of
the same kind,

    W_target[i] = sum_j D[i, j] * W_source[j],     one D (L_target x L_source) per weight kind,

with D starting as the layer map's one-hot selection (so the model starts exactly at G_stack or
whatever map the plan resolved); embeddings, final norm and head are the base's.

Width (LigoWidth): every weight is expanded as W' = E_out W E_in^T, with one expansion for the
residual stream (shared by all weights, as LiGO ties it) and per layer one for the query heads,
one for the kv heads and one for the FFN units. Each starts as the identity on the old units with
Gaussian rows for the new ones, so the old block of every weight is the base's, bit-exact.

Both: `forward(model, tokens)` runs the target model on the expanded weights (gradients reach the
map only), `bake(dst)` writes them into the target model's state dict."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torch.func import functional_call

from growdsl.ops.layout import GLOBAL_PARAMS, LAYER_PARAMS, full, layer_key, write_full
from growdsl.plan.plan import DepthGrowth, WidthGrowth


class _Ligo(nn.Module):
    def weights(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
        """The target model's logits on the expanded weights (gradients reach the map only)."""
        return functional_call(model, self.weights(), (tokens,), strict=False)

    @torch.no_grad()
    def bake(self, dst: Mapping[str, torch.Tensor]) -> None:
        """Write the expanded weights into the target model: from here on it is a plain model."""
        for name, value in self.weights().items():
            if name in dst:
                write_full(dst[name], value)


class LigoDepth(_Ligo):
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
            stacked = torch.stack([full(src[layer_key(j, name)]).detach() for j in range(source_layers)])
            self.sources[name] = stacked
            self.mix[_slot(name)] = nn.Parameter(select.to(stacked.dtype).to(stacked.device))
        self.fixed = {name: full(src[name]).detach() for name in GLOBAL_PARAMS if name in src}

    def weights(self) -> dict[str, torch.Tensor]:
        """Every weight of the target model under the current mix."""
        out = dict(self.fixed)
        for name, stacked in self.sources.items():
            mixed = torch.einsum("ij,j...->i...", self.mix[_slot(name)], stacked)
            for i in range(self.target_layers):
                out[layer_key(i, name)] = mixed[i]
        return out


class LigoWidth(_Ligo):
    def __init__(self, src: Mapping[str, torch.Tensor], growth: WidthGrowth, std: float = 0.02, seed: int = 0):
        super().__init__()
        a, b = growth.source, growth.target
        self.layers, self.tied = a.n_layers, b.tied_embeddings
        self.base = {name: full(t).detach() for name, t in src.items()}
        some = next(iter(self.base.values()))
        gen = torch.Generator().manual_seed(seed)  # on the CPU: the same map on any device

        def expansion(old: int, new: int) -> nn.Parameter:
            e = torch.zeros(new, old, dtype=some.dtype)
            e[:old] = torch.eye(old, dtype=some.dtype)
            e[old:] = torch.randn(new - old, old, generator=gen, dtype=some.dtype) * std
            return nn.Parameter(e.to(some.device))

        hd = a.head_dim
        self.dim = expansion(a.dim, b.dim)
        self.q = nn.ParameterList([expansion(a.n_heads * hd, b.n_heads * hd) for _ in range(self.layers)])
        self.kv = nn.ParameterList([expansion(a.n_kv_heads * hd, b.n_kv_heads * hd) for _ in range(self.layers)])
        self.ffn = nn.ParameterList([expansion(a.ffn_dim, b.ffn_dim) for _ in range(self.layers)])

    def weights(self) -> dict[str, torch.Tensor]:
        w, d = self.base, self.dim
        out = {"tok_embeddings.weight": w["tok_embeddings.weight"] @ d.T, "norm.weight": d @ w["norm.weight"]}
        if not self.tied:
            out["output.weight"] = w["output.weight"] @ d.T
        for i in range(self.layers):
            q, kv, f = self.q[i], self.kv[i], self.ffn[i]
            expand = {
                "attention.wq.weight": (q, d),
                "attention.wk.weight": (kv, d),
                "attention.wv.weight": (kv, d),
                "attention.wo.weight": (d, q),
                "feed_forward.w1.weight": (f, d),
                "feed_forward.w3.weight": (f, d),
                "feed_forward.w2.weight": (d, f),
            }
            for name, (e_out, e_in) in expand.items():
                out[layer_key(i, name)] = e_out @ w[layer_key(i, name)] @ e_in.T
            for name in ("attention_norm.weight", "ffn_norm.weight"):
                out[layer_key(i, name)] = d @ w[layer_key(i, name)]
        return out


def _slot(name: str) -> str:
    return name.replace(".", "_")  # ParameterDict keys cannot hold dots
