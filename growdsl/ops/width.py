"""Width growth: a wider model (dim, heads, kv heads, FFN) whose function starts at the base's.

Heads stay whole: head_dim is kept, new query heads come in whole heads and the GQA group size is
kept, so query head j still reads kv head j // group. Index maps, with d -> D, h -> H, f -> F:
residual dim k copies dim k mod d, query head j copies head j mod h, kv head i copies i mod kv,
FFN unit u copies unit u mod f.

The transforms the width operators (growdsl.ops.operators) are made of:

- split (direct; Net2Net / bert2BERT): rows of new units are copies; the fan-in columns of
  duplicated inputs are split so the copies sum to the original (divided by the copy count). The
  MLP and attention paths are exact. RMSNorm is exact too when every width grows by a whole factor
  (each dim copied equally often keeps the mean square); otherwise it is approximate.
- in_place (random): the old weights in their old places, everything new fresh (the target's own
  init), faded in by ops.ramp.attach_width_ramp. Exact at mask 0.
- zero_new (zero): the old weights in their old places; the new residual dims start at zero (zero
  embedding columns, zero rows in wo and w2), new heads and FFN units write nothing (zero columns
  in wo and w2) while their fan-in keeps the target's fresh init; every RMSNorm weight is scaled
  by sqrt(d/D) so the norms see the old mean square. Exact up to RMSNorm's epsilon (it is added to
  a mean square that is d/D of the old one).

Operates on whole tensors and writes each rank's shard (layout.write_full): width growth reshards."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from growdsl.ops.layout import full, write_full
from growdsl.ops.optimizer import MOMENTS, State
from growdsl.plan.plan import WidthGrowth
from growdsl.plan.shape import ModelShape


class WidthMaps:
    """Source index of every target unit, along each width axis, and how often each source unit is copied."""

    def __init__(self, src: ModelShape, dst: ModelShape):
        if src.head_dim != dst.head_dim:
            raise ValueError("width growth keeps head_dim")
        self.hd = src.head_dim
        self.dim = torch.arange(dst.dim) % src.dim
        self.ffn = torch.arange(dst.ffn_dim) % src.ffn_dim
        self.q_heads = torch.arange(dst.n_heads) % src.n_heads
        self.q = _head_rows(self.q_heads, self.hd)
        self.kv = _head_rows(torch.arange(dst.n_kv_heads) % src.n_kv_heads, self.hd)

    @staticmethod
    def share(index: torch.Tensor) -> torch.Tensor:
        """1 / (copies of the source unit) for every target unit: the fan-in split."""
        counts = torch.bincount(index)
        return 1.0 / counts[index].double()


def _head_rows(heads: torch.Tensor, hd: int) -> torch.Tensor:
    return (heads[:, None] * hd + torch.arange(hd)[None, :]).reshape(-1)


def gather_units(name: str, w: torch.Tensor, m: WidthMaps) -> torch.Tensor:
    """The grown tensor's entries, each taken from the source unit it copies (rows: outputs)."""
    if name in ("tok_embeddings.weight", "output.weight"):
        return w[:, m.dim]
    if name.endswith("norm.weight"):
        return w[m.dim]
    if name.endswith(("wq.weight", "wk.weight", "wv.weight")):
        return w[m.q if name.endswith("wq.weight") else m.kv][:, m.dim]
    if name.endswith("wo.weight"):
        return w[m.dim][:, m.q]
    if name.endswith(("w1.weight", "w3.weight")):
        return w[m.ffn][:, m.dim]
    if name.endswith("w2.weight"):
        return w[m.dim][:, m.ffn]
    raise KeyError(name)


def fan_in_share(name: str, m: WidthMaps, tied: bool) -> torch.Tensor | float:
    """The fan-in share of each input column: copies of one source input sum to the original."""
    share = WidthMaps.share
    if name == "norm.weight":  # tied: the head is the (copied, unsplit) embedding; split here
        return share(m.dim) if tied else 1.0
    if name.endswith("norm.weight") or name == "tok_embeddings.weight":
        return 1.0
    if name.endswith("wo.weight"):
        return share(m.q_heads).repeat_interleave(m.hd)
    if name.endswith("w2.weight"):
        return share(m.ffn)
    return share(m.dim)  # every reader of the residual stream: wq wk wv w1 w3 output


def split(name: str, w: torch.Tensor, m: WidthMaps, tied: bool) -> torch.Tensor:
    """Net2Net: the units copied, each input's copies sharing its fan-in."""
    split = fan_in_share(name, m, tied)
    return gather_units(name, w, m) * (split.to(w.device, w.dtype) if isinstance(split, torch.Tensor) else split)


def in_place(w: torch.Tensor, fresh: torch.Tensor) -> torch.Tensor:
    """The target's fresh tensor with the old weight written over its leading block."""
    out = fresh.clone()
    out[tuple(slice(0, n) for n in w.shape)] = w
    return out


def zero_new(name: str, w: torch.Tensor, fresh: torch.Tensor, src: ModelShape, dst: ModelShape) -> torch.Tensor:
    """Old weights in place, `fresh` elsewhere, zeros wherever a new unit would write into the
    residual stream; norms scaled by sqrt(d/D)."""
    out = in_place(w, fresh)
    if name == "tok_embeddings.weight":
        out[:, src.dim :] = 0
    elif name.endswith("wo.weight") or name.endswith("w2.weight"):
        out[src.dim :, :] = 0  # new residual dims receive nothing
        out[:, w.shape[1] :] = 0  # new heads / FFN units send nothing
    elif name.endswith("norm.weight"):
        out = out * math.sqrt(src.dim / dst.dim)
    return out


@torch.no_grad()
def write_widened(
    src: Mapping[str, torch.Tensor],
    dst: Mapping[str, torch.Tensor],
    growth: WidthGrowth,
    value: Callable[[str, torch.Tensor, torch.Tensor], torch.Tensor],
) -> None:
    """dst[name] <- value(name, the whole source weight, the target's whole fresh weight), for every
    weight of the target (the target model's state dict, filled in place; each rank keeps its shard)."""
    for name, target in dst.items():
        if name not in src or (name == "output.weight" and growth.target.tied_embeddings):
            continue  # buffers of the target alone (a ramp); a tied head is the embedding
        write_full(target, value(name, full(src[name]), full(target)))


def carry_width(state: State, growth: WidthGrowth, gather: bool) -> State:
    """Moments for the widened model: `gather`: by the same index maps as copied weights (not
    rescaled); otherwise old units keep theirs in place and new units start at zero."""
    maps = WidthMaps(growth.source, growth.target)
    out: State = {}
    for name, st in state.items():
        shape_src = st["exp_avg"].shape
        out[name] = {}
        for key, v in st.items():
            if key not in MOMENTS:
                out[name][key] = v.clone()
                continue
            v = full(v)
            if gather:
                out[name][key] = gather_units(name, v, maps)
            else:
                grown = torch.zeros(gather_units(name, v, maps).shape, dtype=v.dtype, device=v.device)
                grown[tuple(slice(0, n) for n in shape_src)] = v
                out[name][key] = grown
    return out
