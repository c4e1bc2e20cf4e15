"""Our parameter and FLOPs counts equal what torchtitan 0.2.2's Llama3 Transformer holds and reports,
and torchtitan_model_args builds exactly the shape we plan (FFN width included)."""

from dataclasses import replace

import pytest
import torch
from torchtitan.models.llama3 import Transformer, TransformerModelArgs

from growdsl.ops.model import model_args
from growdsl.plan.presets import PRESETS
from growdsl.plan.shape import Experts, ModelShape

SHAPES = {
    "1.1B base (6L, GQA 4)": replace(PRESETS["1.1B"].shape, n_layers=6),
    "3B (ffn 7040, not a multiple of 256)": replace(PRESETS["3B"].shape, n_layers=2),
    "7B": replace(PRESETS["7B"].shape, n_layers=2),
    "410M": PRESETS["410M"].shape,
    "tiny": PRESETS["tiny"].shape,
    "odd": ModelShape(dim=96, n_layers=3, n_heads=6, n_kv_heads=2, ffn_dim=250, vocab_size=517),
}


def build(shape: ModelShape, seq_len: int) -> tuple[Transformer, TransformerModelArgs]:
    args = model_args(shape, seq_len)
    with torch.device("meta"):
        return Transformer(args), args


@pytest.mark.parametrize("name", SHAPES)
def test_params_and_flops_match_torchtitan(name):
    shape = SHAPES[name]
    model, args = build(shape, seq_len=2048)
    state = model.state_dict()
    assert state["layers.0.feed_forward.w1.weight"].shape == (shape.ffn_dim, shape.dim)
    assert state["layers.0.attention.wk.weight"].shape == (shape.n_kv_heads * shape.head_dim, shape.dim)
    assert len(model.layers) == shape.n_layers
    assert shape.params == sum(p.numel() for p in model.parameters())
    nparams, flops_per_token = args.get_nparams_and_flops(model, 2048)
    assert (shape.params, shape.flops_per_token(2048)) == (nparams, flops_per_token)


def test_full_size_presets_count_what_the_paper_calls_them():
    # 7B is Llama2-7B (6.74B); the 1.1B family is TinyLlama's (4 KV heads) at 24 layers.
    assert PRESETS["7B"].shape.params == 6_738_415_616
    assert PRESETS["1.1B"].shape.params == 1_188_136_960
    assert 2.3e9 < PRESETS["3B"].shape.params < 3.0e9
    assert 3.5e8 < PRESETS["410M"].shape.params < 4.5e8


def test_tied_shapes_build_one_shared_table_and_count_it_once():
    from growdsl.ops.model import build_model

    shape = ModelShape(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, vocab_size=101, tied_embeddings=True)
    model = build_model(shape, 16)
    assert model.output.weight is model.tok_embeddings.weight
    assert shape.params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_a_model_built_block_by_block_is_torchtitans_draw_for_draw(tied):
    """build_model hands torchtitan's init_weights one block at a time (so that a laid-out model never
    exists whole on a rank); its weights are what init_weights draws on the whole model."""
    from growdsl.ops.model import build_model

    shape = replace(SHAPES["odd"], tied_embeddings=tied)
    ours = build_model(shape, 32, dtype=torch.float64, seed=5)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        theirs = Transformer(model_args(shape, 32))
        if tied:
            theirs.output.weight = theirs.tok_embeddings.weight
        torch.manual_seed(5)
        with torch.no_grad():
            theirs.init_weights()
    finally:
        torch.set_default_dtype(previous)
    want = theirs.state_dict()
    assert list(ours.state_dict()) == list(want)
    for name, value in ours.state_dict().items():
        assert value.dtype == torch.float64 and torch.equal(value, want[name]), name
    assert torch.equal(ours.freqs_cis, theirs.freqs_cis)


def test_materialize_holds_one_whole_block_at_a_time(monkeypatch):
    import gc
    import weakref

    from torchtitan.models.llama3.model.model import TransformerBlock

    from growdsl.ops.model import build_model

    alive: list[weakref.ref] = []
    counts = []
    original = TransformerBlock.init_weights

    def init_weights(block):
        gc.collect()
        alive.append(weakref.ref(block))
        counts.append(sum(ref() is not None for ref in alive))
        original(block)

    monkeypatch.setattr(TransformerBlock, "init_weights", init_weights)
    build_model(SHAPES["odd"], 32)
    assert counts == [1, 1, 1]


@pytest.mark.parametrize(
    "experts",
    [Experts(count=8, top_k=2), Experts(count=4, top_k=1, shared=1, every=2), Experts(count=6, top_k=3, every=3)],
    ids=["8 top 2", "4 top 1 + shared, every 2", "6 top 3, every 3"],
)
def test_mixture_params_and_active_flops_match_torchtitans_moe(experts):
    """torchtitan's own MoE layers in place of the FFN of the blocks that hold experts: the parameters it
    holds, and the FLOPs its MoE formula gives (active parameters only: the top_k experts, shared, router)."""
    from types import SimpleNamespace

    from torchtitan.models.moe.moe import MoE, MoEArgs
    from torchtitan.models.utils import get_moe_model_nparams_and_flops

    shape = replace(SHAPES["odd"], n_layers=6, experts=experts)
    dense, _ = build(replace(shape, experts=None), seq_len=512)
    moe_args = MoEArgs(
        num_experts=experts.count, num_shared_experts=experts.shared, top_k=experts.top_k, score_func="softmax",
        route_norm=True, score_before_experts=False, load_balance_coeff=None, use_grouped_mm=False,
    )  # fmt: skip
    with torch.device("meta"):
        for i, block in enumerate(dense.layers.values()):
            if experts.holds(i):
                del block.feed_forward
                block.moe = MoE(moe_args, dim=shape.dim, hidden_dim=shape.ffn_dim)
    assert shape.params == sum(p.numel() for p in dense.parameters())
    args = SimpleNamespace(moe_args=moe_args, n_layers=shape.n_layers, n_heads=shape.n_heads)
    nparams, flops = get_moe_model_nparams_and_flops(args, dense, 2 * shape.head_dim, 512)
    assert (shape.params, shape.flops_per_token(512)) == (nparams, flops)
    # by hand: a mixture block holds count + shared FFNs and a router; a token passes through top_k + shared
    ffn, router = 3 * shape.dim * shape.ffn_dim, shape.dim * experts.count
    mixtures = sum(experts.holds(i) for i in range(6))
    assert shape.params - replace(shape, experts=None).params == mixtures * (
        (experts.count + experts.shared - 1) * ffn + router
    )
    assert shape.active_params - replace(shape, experts=None).params == mixtures * (
        (experts.top_k + experts.shared - 1) * ffn + router
    )
