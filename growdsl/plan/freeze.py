"""Freezing by origin (`freeze new`, `freeze base embeddings head`): a stage trains only some of its
parameters, named by where they came from in the latest growth, which no index-based option can say
once new blocks are interleaved (LLaMA-Pro):

    base        the layers the model had before its latest growth (each source layer's first place
                in the map; every layer of a model no growth has touched)
    new         the layers its latest growth added (every later place of a source layer)
    copies      the added layers that start as copies of their source (init direct or learn)
    embeddings  the input embedding table
    head        the output projection and the final norm

After an upcycling (`upcycle experts ...`) the same words name parts of blocks: `base` is what the
dense model had (attention, norms, the feed-forwards that stayed dense), `new` the mixtures (routers,
experts, shared experts), `copies` the routed experts alone (their routers and shared experts train).

What is frozen costs less to train, counted block by block (a block's attention half, then its
feed-forward half; a mixture's routed experts beside its router and shared experts): a frozen part
runs forward (2 FLOPs a parameter a token, and attention's 4 H d T) and, when anything below it
trains, passes gradients down (2 more, and attention's 8 H d T); only trained weights pay for their
weight gradients (2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from growdsl.plan.shape import ModelShape

WORDS = ("base", "new", "copies", "embeddings", "head")


@dataclass(frozen=True, kw_only=True)
class Frozen:
    """What a stage does not train: blocks by index (whole, or parts of blocks with experts), the
    embedding table, the head (output and final norm)."""

    __pydantic_config__ = {"extra": "forbid"}

    layers: tuple[int, ...] = ()
    embeddings: bool = False
    head: bool = False
    dense: tuple[int, ...] = ()  # blocks whose parts outside their mixture are frozen (attention, norms)
    mixtures: tuple[int, ...] = ()  # blocks whose mixture is frozen (router, experts, shared experts)
    experts: tuple[int, ...] = ()  # blocks whose routed experts are frozen (their router trains)

    def __bool__(self) -> bool:
        return bool(self.blocks) or self.embeddings or self.head

    @property
    def blocks(self) -> set[int]:
        """The blocks of which anything is frozen."""
        return {*self.layers, *self.dense, *self.mixtures, *self.experts}

    def holds(self, name: str) -> bool:
        """Whether the parameter of this state-dict name is frozen."""
        if name.startswith("layers."):
            parts = name.split(".")
            layer = int(parts[1])
            if layer in self.layers:
                return True
            if parts[2] == "moe":
                return layer in self.mixtures or (layer in self.experts and parts[3] == "experts")
            return layer in self.dense
        if name.startswith("tok_embeddings."):
            return self.embeddings
        return self.head and name.startswith(("output.", "norm."))


def added(origins: Sequence) -> list[bool]:
    """For every layer (growdsl.plan.plan.LayerOrigin), whether the latest growth added it: a later
    place of a source layer the map has already placed."""
    seen: set[int] = set()
    out = []
    for o in origins:
        out.append(o.source is not None and o.source in seen)
        if o.source is not None:
            seen.add(o.source)
    return out


def frozen_of(words: Sequence[str], origins: Sequence) -> Frozen:
    from growdsl.plan.operators import UPCYCLED, start_kind  # here: the operators import the plan, which imports this

    mixtures = [i for i, o in enumerate(origins) if o.init in UPCYCLED]
    if mixtures:  # the latest growth was an upcycling: the words name parts of blocks
        return _frozen_parts(words, len(origins), mixtures)
    new = added(origins)
    picked = set()
    for i, (o, is_new) in enumerate(zip(origins, new)):
        if ("base" in words and not is_new) or ("new" in words and is_new):
            picked.add(i)
        elif "copies" in words and is_new and start_kind(o.init) == "copy":
            picked.add(i)
    return Frozen(layers=tuple(sorted(picked)), embeddings="embeddings" in words, head="head" in words)


def _frozen_parts(words: Sequence[str], n_layers: int, mixtures: list[int]) -> Frozen:
    """`freeze` after an upcycling (module docstring): `base` the dense model's parameters, `new` the
    mixtures, `copies` their experts."""
    dense = [i for i in range(n_layers) if i not in mixtures]
    whole: list[int] = []
    parts: dict[str, list[int]] = {"dense": [], "mixtures": [], "experts": []}
    if "base" in words:
        whole += dense
        if "new" in words:
            whole += mixtures
        else:
            parts["dense"] = mixtures
            parts["experts"] = mixtures if "copies" in words else []
    elif "new" in words:
        parts["mixtures"] = mixtures
    elif "copies" in words:
        parts["experts"] = mixtures
    return Frozen(
        layers=tuple(sorted(whole)),
        embeddings="embeddings" in words,
        head="head" in words,
        **{k: tuple(v) for k, v in parts.items()},
    )


def trainable_params(shape: ModelShape, frozen: Frozen) -> int:
    head = shape.dim + (0 if shape.tied_embeddings else shape.embedding_params)  # final norm and output
    out = shape.params - sum(_frozen_block_params(shape, frozen, i) for i in frozen.blocks)
    if frozen.embeddings:
        out -= shape.embedding_params
    if frozen.head:
        out -= head if not (shape.tied_embeddings and frozen.embeddings) else shape.dim
    return out


def flops_per_token(shape: ModelShape, seq_len: int, frozen: Frozen) -> int:
    """Training FLOPs per token with `frozen` left out of the weight gradients (and of the backward
    pass below the lowest trained parameter); with nothing frozen, torchtitan's 6 N + 12 L H d T
    (shape.flops_per_token)."""
    attention = 4 * shape.n_heads * shape.head_dim * seq_len  # a block's QK^T and AV, forward
    below = not frozen.embeddings  # whether anything below the current part trains
    total = 0
    for i in range(shape.n_layers):
        whole = i in frozen.layers
        mixture = _mixture_params(shape, i, active=True)  # a mixture: the experts a token goes through
        routed = _routed_params(shape, i, active=True)  # 0 in a dense block: its feed-forward is `rest`
        rest = mixture - routed  # the router and the shared experts, beside the routed ones
        sections = [  # bottom up, each a list of branches side by side: (active parameters, trains, attention)
            [(shape.block_params(i, active=True) - mixture, not (whole or i in frozen.dense), attention)],
            [
                (routed, not (whole or i in frozen.mixtures or i in frozen.experts), 0),
                (rest, not (whole or i in frozen.mixtures), 0),
            ],
        ]
        for branches in sections:
            trained_here = False
            for p, trains, attn in branches:
                if not p:
                    continue
                total += 2 * p + attn  # forward
                if trains or below:  # a branch beside a trained one needs no gradient through it
                    total += 2 * p + 2 * attn  # gradients passed down through it
                if trains:
                    total += 2 * p  # its weight gradients
                trained_here = trained_here or trains
            below = below or trained_here
    head = shape.embedding_params + shape.dim  # the output projection (tied: the table) and the final norm
    # its forward; the gradient into it when anything below trains, or the final norm (before the output
    # projection) does; its weight gradients when it trains
    total += 2 * head + (2 * head if below or not frozen.head else 0) + (0 if frozen.head else 2 * head)
    return total


def _mixture_params(shape: ModelShape, layer: int, active: bool = False) -> int:
    """Block `layer`'s mixture: its router and experts (routed, shared); for a dense block, its feed-forward
    (0 would do: a dense block's feed-forward is counted with the rest of it, unless frozen apart)."""
    e = shape.experts
    ffn = 3 * shape.dim * shape.ffn_dim
    if e is None or not e.holds(layer):
        return ffn
    return ((e.top_k if active else e.count) + e.shared) * ffn + shape.dim * e.count


def _routed_params(shape: ModelShape, layer: int, active: bool = False) -> int:
    """Block `layer`'s routed experts (0 for a dense block)."""
    e = shape.experts
    if e is None or not e.holds(layer):
        return 0
    return (e.top_k if active else e.count) * 3 * shape.dim * shape.ffn_dim


def _frozen_block_params(shape: ModelShape, frozen: Frozen, layer: int) -> int:
    """The parameters of block `layer` that `frozen` holds."""
    if layer in frozen.layers:
        return shape.block_params(layer)
    mixture = _mixture_params(shape, layer)
    out = shape.block_params(layer) - mixture if layer in frozen.dense else 0
    if layer in frozen.mixtures:
        return out + mixture
    return out + (_routed_params(shape, layer) if layer in frozen.experts else 0)
