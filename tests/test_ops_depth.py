"""Depth operators: exact placement, identity blocks, masked fresh blocks."""

import pytest
import torch
from ops_helpers import grown_plan, models, probe, train_ligo

from growdsl.ops import ramp
from growdsl.ops.check import check_preservation, logits
from growdsl.ops.layout import GLOBAL_PARAMS, LAYER_PARAMS, layer_key
from growdsl.ops.operators import get, grow

MAPS = {
    "G_stack": "stack x4",
    "partial": 'stack layers "1-23*5-3"',
    "interpolation": "interpolate x2",
    "LLaMA-Pro": 'stack layers "1-1-2-2-3-3"',
}


@pytest.mark.parametrize("growth", MAPS.values(), ids=MAPS.keys())
def test_every_map_places_exactly_the_source_tensors(growth):
    plan, g = grown_plan(growth)
    base, target = models(plan)
    src, dst = base.state_dict(), target.state_dict()
    grow(src, dst, g)
    for name in GLOBAL_PARAMS:
        assert torch.equal(dst[name], src[name]), name
    for i, origin in enumerate(g.layer_map):
        for name in LAYER_PARAMS:
            assert torch.equal(dst[layer_key(i, name)], src[layer_key(origin.source, name)]), (i, name)
    assert [o.source for o in g.layer_map] == g.sources and len(target.layers) == g.target_layers


def test_gstack_changes_the_function_as_declared():
    plan, g = grown_plan("stack x4")
    base, target = models(plan)
    grow(base.state_dict(), target.state_dict(), g)
    result = check_preservation(base, target, probe(), g.guarantee)
    assert g.guarantee == "none" and result.ok and result.relative > 1e-3


@pytest.mark.parametrize(
    "growth", ["stack x4 init zero", 'stack layers "1-1-2-2-3-3" init zero', "interpolate x3 init zero"]
)
def test_depth_zero_preserves_logits(growth):
    plan, g = grown_plan(growth)
    base, target = models(plan)
    dst = target.state_dict()
    grow(base.state_dict(), dst, g)
    result = check_preservation(base, target, probe(), g.guarantee)
    assert g.guarantee == "exact" and result.max_abs_diff < 1e-10 * result.scale, result
    zeroed = [i for i, o in enumerate(g.layer_map) if o.init == "zero"]
    assert zeroed and all(dst[layer_key(i, "attention.wo.weight")].abs().max() == 0 for i in zeroed)
    # the other weights of an identity block are still the source's, so it can learn
    assert all(
        torch.equal(
            dst[layer_key(i, "attention.wq.weight")],
            base.state_dict()[layer_key(g.layer_map[i].source, "attention.wq.weight")],
        )
        for i in zeroed
    )


def test_depth_random_is_the_base_at_mask_0_and_fades_in():
    plan, g = grown_plan("stack x4 init random ramp 4 steps")
    base, target = models(plan)
    ramps = get("random").ramps(target, g)
    fresh = [int(r.name.split(".")[1]) for r in ramps]
    assert fresh == list(range(3, 12)) and g.ramp_steps == 4 and {r.steps for r in ramps} == {4}
    init = {k: v.clone() for k, v in target.state_dict().items()}
    grow(base.state_dict(), target.state_dict(), g)
    assert torch.equal(
        target.state_dict()[layer_key(5, "attention.wq.weight")], init[layer_key(5, "attention.wq.weight")]
    )
    tokens = probe()
    result = check_preservation(base, target, tokens, g.guarantee)
    assert result.max_abs_diff < 1e-10 * result.scale, result
    for step in range(1, 5):
        for i in fresh:
            ramp.set_ramp(target.layers[str(i)], ramp.ramp_value(step, g.ramp_steps))
    assert float(target.layers["3"].growth_ramp) == 1.0
    full = logits(target, tokens)
    assert (full - logits(base, tokens)).abs().max() > 1e-3  # the fresh blocks now act
    for i in fresh:
        ramp.remove_ramp(target.layers[str(i)])
    assert torch.equal(logits(target, tokens), full)  # at 1 the mask is the plain block
    assert not any(k.endswith(ramp.RAMP) for k in target.state_dict())


def test_ramp_is_checkpointed_with_the_model_and_refuses_early_removal():
    plan, g = grown_plan("stack x2 init random")
    _, target = models(plan)
    get("random").ramps(target, g)
    ramp.set_ramp(target.layers["4"], 0.25)
    state = target.state_dict()
    assert float(state["layers.4.growth_ramp"]) == 0.25
    _, restored = models(plan, seed=5)
    get("random").ramps(restored, g)
    restored.load_state_dict(state)
    assert float(restored.layers["4"].growth_ramp) == 0.25
    assert torch.equal(logits(restored, probe()), logits(target, probe()))
    with pytest.raises(ValueError, match="not 1"):
        ramp.remove_ramp(target.layers["4"])


def test_depth_learn_starts_at_the_map_trains_the_mix_and_bakes_into_plain_weights():
    from growdsl.ops.ligo import LigoDepth

    plan, g = grown_plan("stack x4 init learn 3 steps at lr 1e-2")
    base, target = models(plan)
    _, gstack = models(plan)
    grow(base.state_dict(), gstack.state_dict(), g)
    ligo = LigoDepth(base.state_dict(), g)
    tokens = probe()
    assert torch.equal(ligo(target, tokens), logits(gstack, tokens))  # LiGO starts exactly at G_stack
    losses = train_ligo(ligo, target, tokens, g.learn)
    assert losses[-1] < losses[0]
    assert not torch.equal(ligo.mix["attention_wq_weight"], torch.eye(3).repeat(4, 1).double())
    ligo.bake(target.state_dict())
    assert torch.allclose(logits(target, tokens), ligo(target, tokens), rtol=0, atol=1e-12)
    assert sum(p.numel() for p in ligo.parameters()) == 9 * 12 * 3  # one 12x3 mix per weight kind


def test_depth_zero_with_tied_embeddings_preserves_logits():
    from ops_helpers import FAMILY

    plan, g = grown_plan("stack x2 init zero", family=FAMILY.replace("layers 12", "layers 12 tied"))
    base, target = models(plan)
    assert target.output.weight is target.tok_embeddings.weight
    grow(base.state_dict(), target.state_dict(), g)
    result = check_preservation(base, target, probe(), g.guarantee)
    assert result.max_abs_diff < 1e-10 * result.scale, result
