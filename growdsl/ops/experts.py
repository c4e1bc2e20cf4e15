"""Upcycling: a dense block's feed-forward becomes a mixture of experts (growdsl.plan.shape.Experts).

Each expert starts as a copy of the dense FFN (sparse upcycling, Komatsuzaki et al. 2023). With the
router's softmax renormalised over the picked experts (Mixtral's routing, torchtitan's `route_norm`)
and the scores applied to the experts' outputs, the picked scores sum to 1 and every expert computes
the dense FFN: the mixture computes exactly the dense block, whatever the router starts as. A shared
expert starts as a copy whose output projection is zero, so it adds nothing yet. Drop-Upcycling
(Nakamura et al. 2025) re-initialises a share of each expert's hidden units, each expert its own;
noise perturbs each copy. Both give up the exact start for experts that differ from the first step.

The tensors are torchtitan's MoE layout: experts.w1 and w3 [experts, hidden, dim], w2 [experts, dim,
hidden]; shared_experts.w1/w2/w3 as nn.Linear weights."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchtitan.models.llama3.model.model import TransformerBlock
from torchtitan.models.moe.moe import MoE, MoEArgs, TokenChoiceTopKRouter, TokenReorderer

from growdsl.ops.layout import copy_into, full, laid_out_like, write_full
from growdsl.ops.optimizer import MOMENTS, State, cloned, zeroed
from growdsl.plan.shape import Experts, ModelShape

# What draws the dropped units and the noise: the same in every run and on every rank (the run's seed
# varies everything else), as HyperCloning's noise.
SEED = 0


@dataclass(frozen=True)
class Upcycling:
    """How the experts start: copies, with `drop` of each one's hidden units re-initialised, or `noise`
    (a std relative to each weight's RMS) added."""

    drop: float = 0.0
    noise: float = 0.0


def dropped_units(hidden: int, count: int, drop: float, generator: torch.Generator) -> list[torch.Tensor]:
    """The hidden units of each of `count` experts that Drop-Upcycling draws afresh, each expert its own
    (the first draws of `generator`: the growth and its optimizer carry find the same ones)."""
    units = round(drop * hidden)
    return [torch.randperm(hidden, generator=generator)[:units] for _ in range(count)] if units else []


def upcycled_ffn(
    w1: torch.Tensor, w2: torch.Tensor, w3: torch.Tensor, experts: Experts, how: Upcycling, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """The MoE tensors (torchtitan's names under `moe.`, router excluded: it keeps the init it is built
    with) that one dense FFN (w1, w3: [hidden, dim]; w2: [dim, hidden]) becomes. `generator` (on the
    CPU) draws the dropped units and the noise."""
    out = {
        "experts.w1": w1.unsqueeze(0).repeat(experts.count, 1, 1),
        "experts.w2": w2.unsqueeze(0).repeat(experts.count, 1, 1),
        "experts.w3": w3.unsqueeze(0).repeat(experts.count, 1, 1),
    }
    for e, picked in enumerate(dropped_units(w1.shape[0], experts.count, how.drop, generator)):
        picked = picked.to(w1.device)
        for name, axis in (("experts.w1", 0), ("experts.w3", 0), ("experts.w2", 1)):
            t = out[name][e]
            # drawn with the statistics of the dense weight, as Drop-Upcycling does
            fresh = _randn(t.shape, generator, t) * t.std() + t.mean()
            if axis == 0:
                t[picked] = fresh[picked]
            else:
                t[:, picked] = fresh[:, picked]
    if how.noise:
        for name in ("experts.w1", "experts.w2", "experts.w3"):
            t = out[name]
            t += how.noise * t[0].pow(2).mean().sqrt() * _randn(t.shape, generator, t)
    if experts.shared:
        out["shared_experts.w1.weight"] = w1.repeat(experts.shared, 1)
        out["shared_experts.w2.weight"] = torch.zeros_like(w2).repeat(1, experts.shared)  # adds nothing yet
        out["shared_experts.w3.weight"] = w3.repeat(experts.shared, 1)
    return out


def _randn(shape: torch.Size, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Gaussian draws from a CPU generator (the same on every rank and device), as `like`."""
    return torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device)


def layer_generator(seed: int, layer: int) -> torch.Generator:
    """What draws block `layer`'s dropped units and noise: its own, so one block can be redone alone."""
    return torch.Generator().manual_seed(seed * 100_003 + layer)


def mixture(experts: Experts, dim: int, hidden: int) -> MoE:
    """torchtitan's MoE layer as growdsl builds it: Mixtral's routing (a softmax over every expert, the
    top_k picked by it plus any load-balancing bias, their scores renormalised and applied to the
    experts' outputs), the for-loop experts (grouped matmuls need a GPU), and tokens counted by
    bincount: torch.histc, which torchtitan's router and reorderer count with, has no CPU kernel for
    integers."""
    args = MoEArgs(
        num_experts=experts.count,
        num_shared_experts=experts.shared,
        top_k=experts.top_k,
        score_func="softmax",
        route_norm=True,
        score_before_experts=False,
        load_balance_coeff=experts.balance,
        use_grouped_mm=False,
    )
    moe = MoE(args, dim=dim, hidden_dim=hidden)
    moe.router.__class__, moe.reorderer.__class__ = Router, Reorderer  # the same state, counted on any device
    moe.router.aux_coeff = experts.aux_loss
    return moe


class Router(TokenChoiceTopKRouter):
    """torchtitan's token-choice top-k router with Mixtral's routing, counting with bincount."""

    # The tokens each expert gets, given instead of counted: for a measurement without data (growdsl fit)
    fixed_counts: torch.Tensor | None = None
    aux_coeff: float | None = None  # the auxiliary load-balancing loss's coefficient (Experts.aux_loss)
    # of the last training forward, until routing_loss takes them: each expert's share of the picks, and
    # its mean routing probability
    aux: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor, expert_bias: torch.Tensor | None = None):
        scores = F.softmax(self.gate(x).to(torch.float32), dim=1)  # in float32, as torchtitan does
        choice = scores if expert_bias is None else scores + expert_bias  # the bias picks, never weighs
        _, picked = torch.topk(choice, k=self.top_k, dim=-1, sorted=False)
        top = scores.gather(dim=1, index=picked)
        top = top / (top.sum(dim=-1, keepdim=True) + 1e-20) * self.route_scale
        counts = self.fixed_counts if self.fixed_counts is not None else tokens_per_expert(picked, self.num_experts)
        if self.aux_coeff and self.training:
            self.aux = (counts.to(scores.dtype) / x.shape[0], scores.mean(dim=0))  # routing_loss combines them
        return top, picked, counts


class Reorderer(TokenReorderer):
    """torchtitan's reorderer (the routed tokens grouped by expert), counting with bincount."""

    fixed_counts: torch.Tensor | None = None  # as Router's

    def forward(self, top_scores: torch.Tensor, selected_experts_indices: torch.Tensor):
        order = torch.argsort(selected_experts_indices.view(-1), stable=True)
        counts = self.fixed_counts
        if counts is None:
            counts = tokens_per_expert(selected_experts_indices, self.num_experts)
        return top_scores.view(-1)[order], order, counts


def tokens_per_expert(picked: torch.Tensor, experts: int) -> torch.Tensor:
    """How many of the routed tokens each expert got (what torch.histc counts on a GPU)."""
    return torch.bincount(picked.view(-1), minlength=experts)


class MixtureBlock(TransformerBlock):
    """torchtitan's Llama3 block with a mixture of experts for its feed-forward, named `moe` as in
    torchtitan's own MoE models."""

    moe: MoE

    def forward(self, x, freqs_cis, attention_masks, positions=None):
        h = x + self.attention(self.attention_norm(x), freqs_cis, attention_masks, positions)
        return h + self.moe(self.ffn_norm(h))

    def init_weights(self):
        for norm in (self.attention_norm, self.ffn_norm):
            norm.reset_parameters()
        self.attention.init_weights(self.weight_init_std)
        self.moe.init_weights(self.weight_init_std, self.ffn_norm.weight.device)


def with_experts(block: TransformerBlock, experts: Experts, dim: int, hidden: int) -> MixtureBlock:
    """`block` with its feed-forward replaced by a mixture (built on the current default device)."""
    del block.feed_forward
    block.moe = mixture(experts, dim, hidden)
    block.__class__ = MixtureBlock  # the same block, its forward and init through `moe`
    return block


def upcycled_tensors(
    dense: Mapping[str, torch.Tensor], experts: Experts, how: Upcycling, seed: int = 0
) -> Iterator[tuple[str, torch.Tensor]]:
    """A dense model's state (`dense`) as the tensors of its model with `experts`, name by name: every
    tensor as it is, but the feed-forward of each block that holds experts, upcycled (each block's draws
    from layer_generator(seed, block)). Routers are left out: they keep the init the model is built with.
    A sharded feed-forward (FSDP2) is gathered, and its mixture made whole, one block at a time."""
    upcycled = []
    for name, tensor in dense.items():
        parts = name.split(".")
        if parts[0] == "layers" and parts[2] == "feed_forward" and experts.holds(int(parts[1])):
            if parts[3] == "w1":
                upcycled.append(int(parts[1]))
        else:
            yield name, tensor
    for layer in upcycled:
        ffn = {w: full(dense[f"layers.{layer}.feed_forward.{w}.weight"]) for w in ("w1", "w2", "w3")}
        moe = upcycled_ffn(ffn["w1"], ffn["w2"], ffn["w3"], experts, how, layer_generator(seed, layer))
        yield from ((f"layers.{layer}.moe.{name}", t) for name, t in moe.items())


def upcycled_state(
    dense: Mapping[str, torch.Tensor], experts: Experts, how: Upcycling, seed: int = 0
) -> dict[str, torch.Tensor]:
    """upcycled_tensors, all at once (a model on one device)."""
    return dict(upcycled_tensors(dense, experts, how, seed))


def write_upcycled(
    src: Mapping[str, torch.Tensor], dst: Mapping[str, torch.Tensor], experts: Experts, how: Upcycling
) -> None:
    """The growth: `src` (a dense model's state dict) upcycled into `dst` (its model's with `experts`, in
    place). The dense tensors are copied shard by shard; each rank keeps its shard of the mixtures', made
    one block at a time."""
    for name, tensor in upcycled_tensors(src, experts, how, SEED):
        (write_full if ".moe." in name else copy_into)(dst[name], tensor)


def carry_experts(
    state: State, experts: Experts, how: Upcycling, like: Mapping[str, torch.Tensor] | None = None
) -> State:
    """The upcycled model's AdamW state under `optimizer carry`: every expert takes its feed-forward's
    moments, as it took its weights; the units drawn afresh (Drop-Upcycling, the same ones as
    write_upcycled's) and a shared expert's zero output projection start at zero, and the router
    without state (it is new). `like`: the upcycled model's parameters, whose layout each moment takes
    as soon as it is made (a rank holds one dense moment and its copies for the experts whole at most)."""
    out: State = {}
    dense: dict[int, dict[str, dict[str, torch.Tensor]]] = {}
    for name, st in state.items():
        parts = name.split(".")
        if parts[0] == "layers" and parts[2] == "feed_forward" and experts.holds(int(parts[1])):
            dense.setdefault(int(parts[1]), {})[parts[3]] = st
        else:
            out[name] = cloned(st)

    for layer, ffn in dense.items():
        if set(ffn) != {"w1", "w2", "w3"}:  # a feed-forward that never stepped: nothing to carry
            continue
        hidden = ffn["w1"]["exp_avg"].shape[0]
        picks = dropped_units(hidden, experts.count, how.drop, layer_generator(SEED, layer))
        moe = f"layers.{layer}.moe."
        for w in ("w1", "w2", "w3"):
            name = f"{moe}experts.{w}"
            out[name] = _expert_moments(ffn[w], w, experts.count, picks, like[name] if like is not None else None)
            if experts.shared:
                name = f"{moe}shared_experts.{w}.weight"
                shared = _shared_moments(ffn[w], w, experts.shared, like[name] if like is not None else None)
                out[name] = zeroed(shared) if w == "w2" else shared
    return out


# One tensor's moments at a time, each made whole and laid out in a call of its own: what a rank holds
# whole at once is the dense moments of one weight and their copies for one expert tensor.


def _expert_moments(
    dense: dict[str, torch.Tensor], w: str, count: int, picks: list[torch.Tensor], like: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """The moments of a mixture's stacked `w` (w1, w2, w3): the dense ones, once per expert, zero at the
    units Drop-Upcycling drew afresh (`picks`: rows of w1 and w3, columns of w2)."""
    out = {}
    for k, v in dense.items():
        if k not in MOMENTS:
            out[k] = v.clone()
            continue
        m = full(v).unsqueeze(0).repeat(count, 1, 1)
        for e, picked in enumerate(picks):
            picked = picked.to(m.device)
            if w == "w2":
                m[e][:, picked] = 0
            else:
                m[e][picked] = 0
        out[k] = laid_out_like(m, like) if like is not None else m
    return out


def _shared_moments(
    dense: dict[str, torch.Tensor], w: str, shared: int, like: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """The moments of the shared experts' `w`: the dense ones, once per shared expert (w2 along its inputs)."""
    reps = (1, shared) if w == "w2" else (shared, 1)
    out = {}
    for k, v in dense.items():
        if k not in MOMENTS:
            out[k] = v.clone()
            continue
        m = full(v).repeat(*reps)
        out[k] = laid_out_like(m, like) if like is not None else m
    return out


def balance(
    model: torch.nn.Module, summed: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor | None:
    """torchtitan's load balancing without an auxiliary loss, once a step (as its optimizer hook does):
    each mixture's routing bias moves by its coefficient towards the experts that got fewer tokens than
    the mean, the moves of one mixture summing to zero; then its counts restart. `summed` adds a tensor
    up over the data-parallel ranks (None: one process). Returns the tokens each expert got, a row per
    mixture, for the metrics; None for a model without experts."""
    mixtures = [block.moe for block in model.get_submodule("layers").children() if isinstance(block, MixtureBlock)]
    if not mixtures:
        return None
    counts = torch.vstack([m.tokens_per_expert for m in mixtures])
    if summed is not None:
        counts = summed(counts)
    with torch.no_grad():
        for moe, count in zip(mixtures, counts.float()):
            if moe.load_balance_coeff is not None:
                move = moe.load_balance_coeff * torch.sign(count.mean() - count)
                moe.expert_bias.add_(move - move.mean())
            moe.tokens_per_expert.zero_()
    return counts


def _mixtral_names(shape: ModelShape):
    """For each mixture: growdsl's router and stacked experts' names, and a Mixtral's gate and per-expert names."""
    experts = shape.experts
    assert experts is not None
    for layer in range(shape.n_layers):
        ours, theirs = f"layers.{layer}.moe.", f"model.layers.{layer}.block_sparse_moe."
        stacks = {
            f"{ours}experts.{w}": [f"{theirs}experts.{e}.{w}.weight" for e in range(experts.count)]
            for w in ("w1", "w2", "w3")
        }
        yield ours + "router.gate.weight", theirs + "gate.weight", stacks


def to_mixtral(state: dict[str, torch.Tensor], shape: ModelShape) -> dict[str, torch.Tensor]:
    """The mixtures' tensors of `state` by a Hugging Face Mixtral's names (the gate, one w1/w2/w3 per expert)."""
    hf = {}
    for router, gate, stacks in _mixtral_names(shape):
        hf[gate] = state[router]
        for stacked, names in stacks.items():
            hf |= {name: state[stacked][e].contiguous() for e, name in enumerate(names)}
    return hf


def from_mixtral(hf: dict[str, torch.Tensor], shape: ModelShape) -> dict[str, torch.Tensor]:
    """A Mixtral's gate and experts taken out of `hf` (what is left is a Llama's) as growdsl's tensors."""
    ours = {}
    for router, gate, stacks in _mixtral_names(shape):
        ours[router] = hf.pop(gate)
        ours |= {stacked: torch.stack([hf.pop(name) for name in names]) for stacked, names in stacks.items()}
    return ours


def routing_loss(model: torch.nn.Module) -> torch.Tensor | None:
    """The auxiliary load-balancing loss of `model`'s last training forward (None for a model without
    one), its coefficient applied, and every mixture's inputs to it taken. Switch's loss as transformers'
    Mixtral computes it (load_balancing_loss_func) over all its mixtures at once: E times the sum over
    experts of the mean share of the picks each got and its mean routing probability (the shares sum
    to top_k: top_k when balanced; only the probabilities carry a gradient)."""
    routers = [m for m in model.modules() if isinstance(m, Router) and m.aux is not None]
    if not routers:
        return None
    shares, probabilities = (torch.stack(parts).mean(dim=0) for parts in zip(*(r.aux for r in routers)))
    for r in routers:
        r.aux = None
    first = routers[0]
    assert first.aux_coeff is not None  # only a router with a coefficient keeps its inputs
    return first.aux_coeff * first.num_experts * (shares * probabilities).sum()


def even_routing(model: torch.nn.Module, tokens: int) -> None:
    """Have every mixture of `model` say, without counting, that each expert got an even share of the
    `tokens` tokens of a forward pass: for a measurement without data (growdsl fit), whose counts
    would need the values. The for-loop experts go through every routed token once whichever expert
    gets it, so their memory is the same for any routing."""
    for module in model.modules():
        if isinstance(module, MoE):
            routed, count = tokens * module.router.top_k, module.router.num_experts
            even = torch.tensor([routed // count + (e < routed % count) for e in range(count)])
            module.router.fixed_counts = module.reorderer.fixed_counts = even


def zero_counts(model: torch.nn.Module) -> None:
    """Restart every mixture's token counts (they are no state: not in its state dict): after a model is
    built, and after forward passes that train nothing (validation)."""
    for module in model.modules():
        if isinstance(module, MoE):
            module.tokens_per_expert.zero_()
