"""Upcycling a dense FFN into torchtitan's own MoE layer: copies under Mixtral's routing compute exactly
the dense FFN, whatever the router and its load-balancing bias pick; Drop-Upcycling and noise do not,
by the amounts they state."""

from dataclasses import replace

import pytest
import torch
from torchtitan.models.moe.moe import FeedForward, MoE, TokenChoiceTopKRouter

from growdsl.ops.experts import Upcycling, balance, mixture, tokens_per_expert, upcycled_ffn
from growdsl.plan.shape import Experts

DIM, HIDDEN = 32, 48


def dense_ffn(seed: int = 0) -> FeedForward:
    torch.manual_seed(seed)
    ffn = FeedForward(DIM, HIDDEN)
    for w in (ffn.w1, ffn.w2, ffn.w3):
        torch.nn.init.normal_(w.weight, std=0.1)
    return ffn


def upcycled(experts: Experts, how: Upcycling, route_norm: bool = True, balance: float | None = None) -> MoE:
    moe = mixture(replace(experts, balance=balance), DIM, HIDDEN)
    if not route_norm:  # torchtitan's own router, plain softmax scores (counted as growdsl's counts them)
        moe.router.route_norm = False
        moe.router.__class__ = TokenChoiceTopKRouter
        moe.router.forward = lambda x, bias=None: _plain(moe.router, x)
    with torch.no_grad():
        moe.init_weights(0.02, torch.device("cpu"))  # the router as the model is built: random
    ffn = dense_ffn()
    tensors = upcycled_ffn(ffn.w1.weight, ffn.w2.weight, ffn.w3.weight, experts, how, torch.Generator().manual_seed(1))
    missing, unexpected = moe.load_state_dict(tensors, strict=False)
    assert not unexpected and set(missing) <= {"router.gate.weight", "expert_bias"}
    return moe


def _plain(router, x):
    scores = torch.softmax(router.gate(x).float(), dim=1)
    top, picked = torch.topk(scores, k=router.top_k, dim=-1)
    return top, picked, tokens_per_expert(picked, router.num_experts)


@pytest.mark.parametrize(
    "experts", [Experts(count=8, top_k=2), Experts(count=4, top_k=1), Experts(count=6, top_k=3, shared=1)]
)
@pytest.mark.parametrize("balance", [None, 1e-3])
def test_copies_compute_exactly_the_dense_ffn(experts, balance):
    moe = upcycled(experts, Upcycling(), balance=balance)
    if balance:  # a load-balancing bias changes which experts are picked, not what they compute
        moe.expert_bias.copy_(torch.randn(experts.count))
    x = torch.randn(3, 7, DIM)
    with torch.no_grad():
        out, dense = moe(x), dense_ffn()(x)
    torch.testing.assert_close(out, dense, rtol=1e-5, atol=1e-6)
    routed = moe.tokens_per_expert
    assert routed.sum() == 3 * 7 * experts.top_k
    assert balance or (routed > 0).sum() > 1  # the random router spreads the tokens (a large bias may not)


def test_without_renormalised_scores_copies_are_not_the_dense_ffn():
    """Why the routing is Mixtral's: a plain softmax's top-k scores sum to less than 1."""
    moe = upcycled(Experts(count=8, top_k=2), Upcycling(), route_norm=False)
    x = torch.randn(2, 5, DIM)
    with torch.no_grad():
        assert not torch.allclose(moe(x), dense_ffn()(x), atol=1e-3)


def test_drop_upcycling_reinitialises_its_share_of_each_experts_units_each_its_own():
    ffn = dense_ffn()
    experts = Experts(count=4, top_k=2)
    t = upcycled_ffn(
        ffn.w1.weight, ffn.w2.weight, ffn.w3.weight, experts, Upcycling(drop=0.5), torch.Generator().manual_seed(3)
    )
    dropped = []
    for e in range(4):
        changed = (t["experts.w1"][e] != ffn.w1.weight).any(dim=1)
        assert changed.sum() == HIDDEN // 2  # half of the 48 units of this expert
        assert torch.equal((t["experts.w3"][e] != ffn.w3.weight).any(dim=1), changed)  # the same units' rows
        assert torch.equal((t["experts.w2"][e] != ffn.w2.weight).any(dim=0), changed)  # and columns
        dropped.append(frozenset(changed.nonzero().flatten().tolist()))
    assert len(set(dropped)) == 4  # each expert its own units


def test_noise_perturbs_each_copy_by_its_stated_share_of_the_rms():
    ffn = dense_ffn()
    t = upcycled_ffn(
        ffn.w1.weight, ffn.w2.weight, ffn.w3.weight, Experts(count=8, top_k=2), Upcycling(noise=0.01),
        torch.Generator().manual_seed(4),
    )  # fmt: skip
    delta = t["experts.w1"] - ffn.w1.weight
    rms = ffn.w1.weight.pow(2).mean().sqrt()
    assert 0.009 < (delta.pow(2).mean().sqrt() / rms).item() < 0.011
    assert not torch.equal(t["experts.w1"][0], t["experts.w1"][1])  # the copies differ: symmetry broken


def test_the_upcycled_mixture_trains_on_cpu_and_its_copies_grow_apart():
    """A backward pass through the for-loop experts on CPU: each expert's gradient comes from the tokens routed
    to it, so identical copies get different updates (the router's, while they are identical, is zero: the
    renormalised scores sum to 1 whatever it says)."""
    moe = upcycled(Experts(count=4, top_k=2), Upcycling())
    moe(torch.randn(4, 16, DIM)).pow(2).mean().backward()
    grads = moe.experts.w1.grad
    assert grads is not None and torch.isfinite(grads).all()
    assert not torch.allclose(grads[0], grads[1])
    torch.testing.assert_close(moe.router.gate.weight.grad, torch.zeros_like(moe.router.gate.weight), atol=1e-7, rtol=0)


def test_a_whole_model_with_experts_is_built_as_planned_and_upcycled_computes_the_dense_logits():
    """torchtitan's Llama3 with its MoE in every other block: as many parameters as the plan counts; a dense
    model's weights upcycled into it give the dense model's logits (the router as built, random)."""
    from growdsl.ops.experts import upcycled_state
    from growdsl.ops.model import build_model
    from growdsl.plan.presets import PRESETS

    dense_shape = replace(PRESETS["tiny"].shape, n_layers=4, vocab_size=256)
    shape = replace(dense_shape, experts=Experts(count=4, top_k=2, shared=1, every=2, balance=1e-3))
    dense = build_model(dense_shape, 32, seed=0)
    moe = build_model(shape, 32, seed=1)
    assert sum(p.numel() for p in moe.parameters()) == shape.params
    assert [hasattr(block, "moe") for block in moe.layers.values()] == [False, True, False, True]
    state = upcycled_state(dense.state_dict(), shape.experts, Upcycling())
    missing, unexpected = moe.load_state_dict(state, strict=False)
    assert not unexpected and sorted(missing) == [
        "layers.1.moe.expert_bias", "layers.1.moe.router.gate.weight",
        "layers.3.moe.expert_bias", "layers.3.moe.router.gate.weight",
    ]  # fmt: skip
    tokens = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(moe(tokens), dense(tokens), rtol=1e-5, atol=1e-5)
    moe(tokens).logsumexp(-1).mean().backward()  # and it trains, on CPU
    assert torch.isfinite(moe.layers["1"].moe.experts.w2.grad).all()


def test_dense_upcycled_and_exported_as_a_mixtral_gives_transformers_the_dense_logits(tmp_path):
    """dense -> MoE (upcycled) -> Hugging Face Mixtral: transformers' MixtralForCausalLM computes the dense
    model's logits; what a Mixtral cannot hold is named."""
    import json
    from types import SimpleNamespace

    from safetensors.torch import save_file
    from transformers import MixtralForCausalLM

    from growdsl.eval.export import config, hf_state, mixtral_problem
    from growdsl.ops.experts import upcycled_state
    from growdsl.ops.model import build_model
    from growdsl.plan.presets import PRESETS

    dense_shape = replace(PRESETS["tiny"].shape, n_layers=2, vocab_size=256)
    shape = replace(dense_shape, experts=Experts(count=4, top_k=2))
    dense, moe = build_model(dense_shape, 32, seed=0), build_model(shape, 32, seed=1)
    moe.load_state_dict(upcycled_state(dense.state_dict(), shape.experts, Upcycling()), strict=False)
    state = {k: v.detach().clone() for k, v in moe.state_dict().items()}
    assert mixtral_problem(shape, state) is None
    save_file({k: v.contiguous() for k, v in hf_state(state, shape, 32).items()}, str(tmp_path / "model.safetensors"))
    trained = SimpleNamespace(shape=shape, seq_len=32, bos_id=None, eot_id=0, model=moe)
    (tmp_path / "config.json").write_text(json.dumps(config(trained)))
    hf = MixtralForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    tokens = torch.randint(0, 256, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, dense(tokens), rtol=1e-5, atol=1e-5)
    assert "one block of every 2" in mixtral_problem(replace(shape, experts=Experts(count=4, top_k=2, every=2)), state)
    assert "shared" in mixtral_problem(replace(shape, experts=Experts(count=4, top_k=2, shared=1)), state)
    state["layers.0.moe.expert_bias"] = torch.ones(4)
    assert "load-balancing bias" in mixtral_problem(shape, state)


def _moe_model():
    from growdsl.ops.model import build_model
    from growdsl.plan.presets import PRESETS

    shape = replace(PRESETS["tiny"].shape, n_layers=2, vocab_size=256, experts=Experts(count=4, top_k=2, shared=1))
    return build_model(shape, 32, seed=0)


def _sharded_step(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        model = _moe_model()
        for block in model.layers.values():
            fully_shard(block)
        fully_shard(model)
        assert type(model.layers["0"].moe.experts.w1).__name__ == "DTensor"
        tokens = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(7))
        model(tokens).logsumexp(-1).mean().backward()  # the same tokens on both ranks: the mean gradient is theirs
        grads = {n: p.grad.full_tensor() for n, p in model.named_parameters() if ".moe." in n}
        if rank == 0:
            torch.save(grads, out)
    finally:
        dist.destroy_process_group()


def test_a_model_with_experts_shards_with_fsdp2_on_two_processes_and_matches_one(tmp_path):
    """FSDP2 (gloo, CPU) over the blocks of a model with experts: the experts' and routers' gradients
    equal one process's."""
    import torch.multiprocessing as mp

    mp.spawn(_sharded_step, args=(str(tmp_path / "init"), str(tmp_path / "grads.pt")), nprocs=2)
    sharded = torch.load(tmp_path / "grads.pt")
    model = _moe_model()
    tokens = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(7))
    model(tokens).logsumexp(-1).mean().backward()
    whole = {n: p.grad for n, p in model.named_parameters() if ".moe." in n}
    assert sharded.keys() == whole.keys() and any("experts.w1" in n for n in whole)
    for name, grad in whole.items():
        torch.testing.assert_close(sharded[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_balance_moves_the_bias_towards_the_experts_that_got_fewer_tokens_and_restarts_the_counts():
    from growdsl.ops.model import build_model
    from growdsl.plan.presets import PRESETS

    shape = replace(PRESETS["tiny"].shape, n_layers=2, vocab_size=256, experts=Experts(count=4, top_k=1, balance=0.01))
    model = build_model(shape, 32, seed=0)
    moe = model.layers["0"].moe
    moe.tokens_per_expert.copy_(torch.tensor([10.0, 0.0, 4.0, 6.0]))  # mean 5
    model.layers["1"].moe.tokens_per_expert.copy_(torch.tensor([5.0, 5.0, 5.0, 5.0]))
    counts = balance(model, summed=lambda t: 2 * t)  # as if a second rank had routed the same
    assert counts.tolist() == [[20, 0, 8, 12], [10, 10, 10, 10]]
    # signs +-1 (over, under, under, over), less their mean (0): the overloaded lose, the others gain
    torch.testing.assert_close(moe.expert_bias, torch.tensor([-0.01, 0.01, 0.01, -0.01]))
    assert model.layers["1"].moe.expert_bias.abs().max() == 0  # balanced: no move
    assert moe.tokens_per_expert.sum() == 0 and model.layers["1"].moe.tokens_per_expert.sum() == 0
    dense = build_model(replace(shape, experts=None), 32, seed=0)
    assert balance(dense) is None
    off = build_model(replace(shape, experts=Experts(count=4, top_k=1)), 32, seed=0)
    off.layers["0"].moe.tokens_per_expert.fill_(3)
    assert balance(off).tolist()[0] == [3, 3, 3, 3] and off.layers["0"].moe.expert_bias is None
    assert off.layers["0"].moe.tokens_per_expert.sum() == 0
