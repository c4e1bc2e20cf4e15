"""Optimizer state at growth: carry maps moments exactly as weights; reset leaves none."""

import torch
from ops_helpers import grown_plan, models, probe

from growdsl.ops.layout import LAYER_PARAMS, layer_key
from growdsl.ops.operators import grow, grown_state
from growdsl.ops.optimizer import MOMENTS, load_named_state, named_state


def trained_base(plan, steps: int = 2):
    base, target = models(plan)
    opt = torch.optim.AdamW(base.parameters(), lr=1e-3)
    tokens = probe()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(base(tokens).flatten(0, 1), tokens.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad()
    return base, target, named_state(base, opt)


def test_carry_places_moments_like_weights_and_loads_into_fresh_adamw():
    plan, g = grown_plan('stack layers "1-23*5-3" init zero')
    base, target, state = trained_base(plan)
    carried = grown_state("carry", state, g)
    for i, origin in enumerate(g.layer_map):
        for name in LAYER_PARAMS:
            got, src = carried[layer_key(i, name)], state[layer_key(origin.source, name)]
            assert torch.equal(got["step"], src["step"])
            zeroed = origin.init == "zero" and name in ("attention.wo.weight", "feed_forward.w2.weight")
            for m in MOMENTS:
                assert torch.equal(got[m], torch.zeros_like(src[m]) if zeroed else src[m]), (i, name, m)
    assert torch.equal(carried["output.weight"]["exp_avg"], state["output.weight"]["exp_avg"])
    # the grown optimizer takes it through torch's own load_state_dict, and steps
    grow(base.state_dict(), target.state_dict(), g)
    opt = torch.optim.AdamW(target.parameters(), lr=1e-3)
    load_named_state(target, opt, carried)
    assert torch.equal(
        named_state(target, opt)[layer_key(7, "attention.wq.weight")]["exp_avg"],
        state[layer_key(g.layer_map[7].source, "attention.wq.weight")]["exp_avg"],
    )
    tokens = probe()
    torch.nn.functional.cross_entropy(target(tokens).flatten(0, 1), tokens.flatten()).backward()
    opt.step()
    assert int(named_state(target, opt)["norm.weight"]["step"]) == 3  # step counts kept, then advanced


def test_carry_gives_fresh_layers_zero_moments():
    plan, g = grown_plan("stack x2 init random")
    _, _, state = trained_base(plan)
    carried = grown_state("carry", state, g)
    fresh = carried[layer_key(4, "feed_forward.w1.weight")]
    assert all(fresh[m].abs().max() == 0 for m in MOMENTS)
    assert torch.equal(
        carried[layer_key(1, "feed_forward.w1.weight")]["exp_avg"],
        state[layer_key(1, "feed_forward.w1.weight")]["exp_avg"],
    )


def test_reset_leaves_no_state():
    plan, g = grown_plan("stack x4")
    _, target, state = trained_base(plan)
    assert state and grown_state("reset", state, g) == {}
    opt = torch.optim.AdamW(target.parameters(), lr=1e-3)
    load_named_state(target, opt, grown_state("reset", state, g))
    assert len(opt.state) == 0
