"""Freezing by origin (`freeze new`, `freeze base embeddings head`): a stage trains only some of its
parameters, named by where they came from in the latest growth, which no index-based option can say
once new blocks are interleaved (LLaMA-Pro):

    base        the layers the model had before its latest growth (each source layer's first place
                in the map; every layer of a model no growth has touched)
    new         the layers its latest growth added (every later place of a source layer)
    copies      the added layers that start as copies of their source (init direct or learn)
    embeddings  the input embedding table
    head        the output projection and the final norm

What is frozen costs less to train, counted block by block: a frozen block runs forward (2 FLOPs a
parameter a token, and attention's 4 H d T) and, when anything below it trains, passes gradients
down (2 more, and attention's 8 H d T); only trained weights pay for their weight gradients (2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from growdsl.plan.shape import ModelShape

WORDS = ("base", "new", "copies", "embeddings", "head")


@dataclass(frozen=True, kw_only=True)
class Frozen:
    """What a stage does not train: blocks by index, the embedding table, the head (output and final norm)."""

    __pydantic_config__ = {"extra": "forbid"}

    layers: tuple[int, ...] = ()
    embeddings: bool = False
    head: bool = False

    def __bool__(self) -> bool:
        return bool(self.layers) or self.embeddings or self.head

    def holds(self, name: str) -> bool:
        """Whether the parameter of this state-dict name is frozen."""
        if name.startswith("layers."):
            return int(name.split(".")[1]) in self.layers
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
    from growdsl.plan.operators import start_kind  # here: the operators import the plan, which imports this

    new = added(origins)
    picked = set()
    for i, (o, is_new) in enumerate(zip(origins, new)):
        if ("base" in words and not is_new) or ("new" in words and is_new):
            picked.add(i)
        elif "copies" in words and is_new and start_kind(o.init) == "copy":
            picked.add(i)
    return Frozen(layers=tuple(sorted(picked)), embeddings="embeddings" in words, head="head" in words)


def trainable_params(shape: ModelShape, frozen: Frozen) -> int:
    head = shape.dim + (0 if shape.tied_embeddings else shape.embedding_params)  # final norm and output
    out = shape.params - sum(shape.block_params(i) for i in frozen.layers)
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
    below = not frozen.embeddings  # whether anything below the current block trains
    total = 0
    for i in range(shape.n_layers):
        trains = i not in frozen.layers
        p = shape.block_params(i, active=True)  # a mixture: the experts a token goes through
        total += 2 * p + attention  # forward
        if trains or below:
            total += 2 * p + 2 * attention  # gradients passed down through it
        if trains:
            total += 2 * p  # its weight gradients
        below = below or trains
    head = shape.embedding_params + shape.dim  # the output projection (tied: the table) and the final norm
    # its forward; the gradient into it when anything below trains, or the final norm (before the output
    # projection) does; its weight gradients when it trains
    total += 2 * head + (2 * head if below or not frozen.head else 0) + (0 if frozen.head else 2 * head)
    return total
