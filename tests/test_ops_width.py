"""Width operators: heads kept whole, MLP exact, the whole model as far as RMSNorm allows."""

import pytest
import torch
from ops_helpers import FAMILY, SEQ, grown_plan, models, probe, train_ligo

from growdsl.ops.check import check_preservation
from growdsl.ops.operators import grow, grown_state
from growdsl.ops.width import WidthMaps


def widened(growth: str, family: str = FAMILY):
    plan, g = grown_plan(growth, family=family)
    base, target = models(plan)
    grow(base.state_dict(), target.state_dict(), g)
    return base, target, g


@pytest.mark.parametrize("family", [FAMILY, FAMILY.replace("layers 12", "layers 12 tied")], ids=["untied", "tied"])
def test_direct_by_whole_factors_preserves_logits(family):
    base, target, g = widened("widen dim 128 init direct", family)
    assert (g.target.dim, g.target.n_heads, g.target.n_kv_heads, g.target.ffn_dim) == (128, 8, 4, 192)
    result = check_preservation(base, target, probe(), g.guarantee)
    assert g.guarantee == "approximate" and result.max_abs_diff < 1e-10 * result.scale, result


def test_direct_keeps_the_mlp_exact_and_bounds_the_rest_when_widths_do_not_divide():
    base, target, g = widened("widen dim 96 init direct")  # 1.5x: heads 4 -> 6, kv 2 -> 3, ffn 96 -> 144
    maps = WidthMaps(g.source, g.target)
    x = torch.randn(2, SEQ, 64, dtype=torch.float64)
    old, new = base.layers["0"].feed_forward, target.layers["0"].feed_forward
    assert torch.allclose(new(x[..., maps.dim]), old(x)[..., maps.dim], rtol=0, atol=1e-12)
    result = check_preservation(base, target, probe(), g.guarantee)
    # RMSNorm sees a different mean square once dims are copied unevenly: measured 0.1-0.2 of
    # max |logits| on this model; the declared guarantee is "approximate".
    assert 1e-6 < result.relative < 0.5, result


def test_direct_keeps_heads_whole_and_gqa_consistent():
    base, target, g = widened("widen dim 128 init direct")
    hd = g.source.head_dim
    src, dst = base.state_dict(), target.state_dict()
    wq, wk = dst["layers.0.attention.wq.weight"], dst["layers.0.attention.wk.weight"]
    for head in range(g.target.n_heads):  # query head j is old head j mod 4, reading kv head j // 2
        old = head % g.source.n_heads
        assert torch.equal(
            wq[head * hd : (head + 1) * hd, :64] * 2, src["layers.0.attention.wq.weight"][old * hd : (old + 1) * hd]
        )
        kv_new, kv_old = head // 2, old // 2
        assert torch.equal(
            wk[kv_new * hd : (kv_new + 1) * hd, 64:] * 2,
            src["layers.0.attention.wk.weight"][kv_old * hd : (kv_old + 1) * hd],
        )


def test_zero_is_exact_up_to_the_norm_epsilon():
    tiny_eps = FAMILY.replace("layers 12", "layers 12 norm_eps 1e-30")
    base, target, g = widened("widen dim 128 init zero", tiny_eps)
    result = check_preservation(base, target, probe(), g.guarantee)
    assert g.guarantee == "exact" and result.max_abs_diff < 1e-10 * result.scale, result
    base, target, g = widened("widen dim 128 init zero")  # eps 1e-5 meets a mean square d/D smaller
    assert check_preservation(base, target, probe(), g.guarantee).relative < 1e-4
    dst = target.state_dict()
    assert dst["tok_embeddings.weight"][:, 64:].abs().max() == 0
    assert dst["layers.1.feed_forward.w2.weight"][:, 96:].abs().max() == 0
    assert dst["layers.1.feed_forward.w1.weight"][96:].abs().max() > 0  # new fan-in is live


def test_width_carry_gathers_moments_and_zero_growth_starts_new_units_at_zero():
    plan, g = grown_plan("widen dim 128 init direct")
    base, _ = models(plan)
    state = {
        n: {"step": torch.tensor(3.0), "exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)}
        for n, p in base.named_parameters()
    }
    carried = grown_state("carry", state, g)
    w1 = carried["layers.2.feed_forward.w1.weight"]["exp_avg"]
    assert w1.shape == (192, 128)
    assert torch.equal(w1[100, 70], state["layers.2.feed_forward.w1.weight"]["exp_avg"][100 % 96, 70 % 64])
    plan, g = grown_plan("widen dim 128 init zero")
    zero = grown_state("carry", state, g)["layers.2.feed_forward.w1.weight"]["exp_avg"]
    assert torch.equal(zero[:96, :64], state["layers.2.feed_forward.w1.weight"]["exp_avg"])
    assert zero[96:].abs().max() == 0 and zero[:, 64:].abs().max() == 0


def test_random_is_the_base_at_mask_0_and_the_plain_wide_model_at_1():
    from growdsl.ops import ramp
    from growdsl.ops.check import logits

    plan, g = grown_plan("widen dim 128 init random ramp 4 steps")
    base, target = models(plan)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    ramp.attach_width_ramp(target, g.source.dim, g.source.n_heads, g.source.ffn_dim)
    grow(base.state_dict(), target.state_dict(), g)
    dst = target.state_dict()
    assert torch.equal(dst["layers.0.feed_forward.w2.weight"][:, 96:], fresh["layers.0.feed_forward.w2.weight"][:, 96:])
    assert torch.equal(
        dst["layers.0.feed_forward.w2.weight"][:64, :96], base.state_dict()["layers.0.feed_forward.w2.weight"]
    )
    tokens = probe()
    result = check_preservation(base, target, tokens, g.guarantee)
    assert g.guarantee == "exact" and result.max_abs_diff < 1e-10 * result.scale, result
    ramp.set_ramp(target, ramp.ramp_value(2, g.ramp_steps))
    half = logits(target, tokens)
    ramp.set_ramp(target, ramp.ramp_value(4, g.ramp_steps))
    full = logits(target, tokens)
    assert (half - full).abs().max() > 1e-6 and (full - logits(base, tokens)).abs().max() > 1e-3
    assert float(target.state_dict()["growth_ramp"]) == 1.0  # checkpointed with the model
    ramp.remove_width_ramp(target)
    assert torch.equal(logits(target, tokens), full)


def test_learn_expands_with_identity_on_old_units_trains_the_map_and_bakes():
    from growdsl.ops.check import logits
    from growdsl.ops.ligo import LigoWidth

    plan, g = grown_plan("widen dim 128 init learn 3 steps at lr 1e-2")
    base, target = models(plan)
    ligo = LigoWidth(base.state_dict(), g)
    start = ligo.weights()
    src = base.state_dict()
    assert torch.equal(start["layers.1.attention.wq.weight"][:64, :64], src["layers.1.attention.wq.weight"])
    assert torch.equal(start["layers.1.feed_forward.w2.weight"][:64, :96], src["layers.1.feed_forward.w2.weight"])
    assert start["layers.1.feed_forward.w1.weight"][96:].abs().max() > 0  # Gaussian rows for new units
    tokens = probe()
    losses = train_ligo(ligo, target, tokens, g.learn)
    assert losses[-1] < losses[0]
    ligo.bake(target.state_dict())
    assert torch.allclose(logits(target, tokens), ligo(target, tokens), rtol=0, atol=1e-12)
    grown = models(plan)[1]
    grow(src, grown.state_dict(), g)  # grow(learn) writes LiGO's starting point
    assert torch.equal(grown.state_dict()["layers.0.attention.wk.weight"], start["layers.0.attention.wk.weight"])


def test_the_check_fails_only_a_broken_exact_promise():
    from growdsl.ops.check import compare

    before = torch.zeros(2, 3, dtype=torch.float64) + 1.0
    after = before + 0.1
    assert compare(before, after, "approximate").ok and compare(before, after, "none").ok
    assert not compare(before, after, "exact").ok and compare(before, before, "exact").ok
