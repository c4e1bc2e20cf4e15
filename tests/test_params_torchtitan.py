"""Our parameter and FLOPs counts equal what torchtitan 0.2.2's Llama3 Transformer holds and reports,
and torchtitan_model_args builds exactly the shape we plan (FFN width included)."""

from dataclasses import replace

import pytest
import torch
from torchtitan.models.llama3 import Transformer, TransformerModelArgs

from growdsl.ops.model import model_args
from growdsl.plan.presets import PRESETS
from growdsl.plan.shape import ModelShape

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
