"""A Llama model's shape and what follows from it: parameter count, training FLOPs per token,
and the torchtitan 0.2.2 arguments that build exactly this shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """RoPE's frequency scaling: Llama 3.1's ("llama3": torchtitan 0.2.2 always builds it, so growdsl's
    own models have it), "linear" (every frequency divided by `factor`), or "none" (Llama 2)."""

    __pydantic_config__ = {"extra": "forbid"}

    kind: Literal["llama3", "linear", "none"] = "llama3"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def torchtitan(self) -> tuple[float, float, float, int]:
        """torchtitan's RoPEScalingArgs (factor, low, high, original length) computing exactly this:
        its llama3 formula leaves every frequency alone whose wavelength is below original / high,
        and divides every one above original / low by the factor."""
        if self.kind == "none":
            return 1.0, 1.0, 4.0, 2**62  # every wavelength below original / high: untouched, no rounding
        if self.kind == "linear":
            return self.factor, 1.0, 4.0, 1  # every wavelength (>= 2 pi) above original / low: divided
        return self.factor, self.low_freq_factor, self.high_freq_factor, self.original_max_position_embeddings


@dataclass(frozen=True, kw_only=True)
class Experts:
    """The feed-forward of every `every`-th block as a mixture of experts (torchtitan's MoE): `count`
    experts of the dense FFN's width, of which a router picks `top_k` for each token (a softmax over
    all of them, the picked scores renormalised to sum to 1: Mixtral's routing), and `shared` experts
    every token goes through."""

    __pydantic_config__ = {"extra": "forbid"}

    count: int
    top_k: int
    shared: int = 0
    every: int = 1  # block i is a mixture when (i + 1) % every == 0 (torchtitan's interleave step)
    # torchtitan's load balancing without an auxiliary loss: a per-expert bias on the routing choice
    # (model state: it changes which experts a token goes to), moved by this much a step; None: none
    balance: float | None = None
    # the auxiliary load-balancing loss of Switch and Mixtral (transformers' load_balancing_loss_func),
    # this coefficient times it added to the training loss; None: none. It changes no weight's meaning,
    # so a Mixtral exports it.
    aux_loss: float | None = None

    def holds(self, layer: int) -> bool:
        """Whether block `layer` (0-based) has experts."""
        return (layer + 1) % self.every == 0


@dataclass(frozen=True, kw_only=True)
class ModelShape:
    """A Llama-style decoder (RoPE, RMSNorm, SwiGLU, no biases), as torchtitan's Llama3 builds it."""

    __pydantic_config__ = {"extra": "forbid"}

    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    ffn_dim: int
    vocab_size: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tied_embeddings: bool = False
    vocab_padded: bool = False  # vocab_size above the tokenizer's on purpose (`padded`): rows no token uses
    rope_scaling: RopeScaling = RopeScaling()
    experts: Experts | None = None  # None: every feed-forward dense

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, dict):  # through dataclasses.asdict and back
            object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))
        if isinstance(self.experts, dict):
            object.__setattr__(self, "experts", Experts(**self.experts))

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def layer_params(self) -> int:
        """One transformer block: wq, wk, wv, wo, w1, w2, w3 and its two RMSNorm weights."""
        kv = self.n_kv_heads * self.head_dim
        attention = 2 * self.dim * self.dim + 2 * self.dim * kv
        mlp = 3 * self.dim * self.ffn_dim
        return attention + mlp + 2 * self.dim

    def block_params(self, layer: int, active: bool = False) -> int:
        """Block `layer`'s parameters; `active`: those a token passes through (of a mixture's experts,
        its top_k and the shared ones, and the router)."""
        e = self.experts
        if e is None or not e.holds(layer):
            return self.layer_params
        experts = (e.top_k if active else e.count) + e.shared
        return self.layer_params + (experts - 1) * 3 * self.dim * self.ffn_dim + self.dim * e.count  # + router

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.dim

    @property
    def params(self) -> int:
        """Exactly the parameters torchtitan's `Transformer` holds (tied: one shared table)."""
        return self._params(active=False)

    @property
    def active_params(self) -> int:
        """The parameters a token passes through: all of them but a mixture's experts it is not routed to."""
        return self._params(active=True)

    def _params(self, active: bool) -> int:
        head = 0 if self.tied_embeddings else self.embedding_params
        blocks = sum(self.block_params(i, active) for i in range(self.n_layers)) if self.experts else None
        return self.embedding_params + (blocks or self.n_layers * self.layer_params) + self.dim + head

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token (forward + backward), torchtitan's formula:

            6 * (N - N_lookup) + 12 * L * n_heads * head_dim * T

        N are the active parameters (of a mixture, the experts a token is routed to, and its router);
        N_lookup is the input embedding table when it is not also the output head (a lookup is no
        matmul); the second term is attention's QK^T and AV over a T-token context (no causal
        discount), so MFU numbers agree with torchtitan's."""
        lookup = 0 if self.tied_embeddings else self.embedding_params
        attention = 12 * self.n_layers * self.n_heads * self.head_dim * seq_len
        return 6 * (self.active_params - lookup) + attention

    def describe(self) -> str:
        kv = "" if self.n_kv_heads == self.n_heads else f" (kv {self.n_kv_heads})"
        tied = " · tied" if self.tied_embeddings else ""
        e = self.experts
        moe = ""
        if e is not None:
            where = "" if e.every == 1 else f" every {e.every}"
            moe = f" · {e.count} experts top {e.top_k}{f' + {e.shared} shared' if e.shared else ''}{where}"
        return (
            f"{self.n_layers}L · dim {self.dim} · heads {self.n_heads}{kv} · ffn {self.ffn_dim}{moe}"
            f" · vocab {self.vocab_size}{' (padded)' if self.vocab_padded else ''}{tied}"
        )


def llama_ffn_dim(dim: int, multiple_of: int = 256) -> int:
    """The FFN width Llama derives from dim (2/3 of 4*dim, rounded up to multiple_of)."""
    hidden = int(2 * 4 * dim / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def torchtitan_model_args(shape: ModelShape, seq_len: int) -> dict:
    """Keyword arguments for torchtitan 0.2.2's `TransformerModelArgs` giving exactly `shape`.

    torchtitan derives the FFN width as multiple_of * ceil(int(m * int(8 * dim / 3)) / multiple_of);
    choosing multiple_of = ffn_dim and a multiplier m that lands in (0, ffn_dim] pins it exactly."""
    base = int(2 * 4 * shape.dim / 3)
    return dict(
        dim=shape.dim,
        n_layers=shape.n_layers,
        n_heads=shape.n_heads,
        n_kv_heads=shape.n_kv_heads,
        vocab_size=shape.vocab_size,
        multiple_of=shape.ffn_dim,
        ffn_dim_multiplier=shape.ffn_dim / base,
        norm_eps=shape.norm_eps,
        rope_theta=shape.rope_theta,
        rope_scaling=shape.rope_scaling.torchtitan(),  # growdsl.ops.model makes it torchtitan's RoPEScalingArgs
        max_seq_len=seq_len,
    )
