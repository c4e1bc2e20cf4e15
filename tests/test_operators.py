"""The operator registry: every operator is one description (growdsl.plan.operators) and one
implementation (growdsl.ops.operators) under the same name, and keeps its declared guarantee."""

import pytest
import torch
from ops_helpers import FAMILY, grown_plan, models, probe

from growdsl.ops import operators as implementations
from growdsl.ops.check import check_preservation
from growdsl.ops.layout import named_parameters
from growdsl.plan import operators as descriptions

# Whole factors: `exact` means exact. Upcycling every other block: its dense blocks are copies too.
GROWTH = {"depth": "stack x2", "width": "widen dim 128", "experts": "upcycle experts 4 top 2 shared 1 every 2"}
NO_EPS = FAMILY.replace("layers 12", "layers 12 norm_eps 1e-30")  # zero width is exact up to eps only


def test_every_description_has_an_implementation_of_the_same_name():
    assert set(descriptions.OPERATORS) == set(implementations.OPERATORS)
    assert descriptions.DEFAULT in descriptions.OPERATORS
    for op in descriptions.OPERATORS.values():
        assert op.kinds, op.name
        assert len({o.name for o in op.options}) == len({o.words for o in op.options}) == len(op.options), op.name


CASES = [(name, kind) for name, op in descriptions.OPERATORS.items() for kind in GROWTH if op.mode(kind)]


@pytest.mark.parametrize("name,kind", CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_every_operator_keeps_its_guarantee_and_carries_state_for_every_parameter(name, kind):
    plan, g = grown_plan(f"{GROWTH[kind]} init {name} optimizer carry", family=NO_EPS)
    base, target = models(plan)
    op = implementations.get(name)
    op.ramps(target, g)
    op.grow(base.state_dict(), target.state_dict(), g)
    result = check_preservation(base, target, probe(), g.guarantee)
    assert g.guarantee == descriptions.OPERATORS[name].mode(kind).guarantee
    if g.guarantee == "exact":
        assert result.max_abs_diff < 1e-10 * result.scale, result
    else:
        assert result.ok
    opt = torch.optim.AdamW(base.parameters())
    base(probe()).sum().backward()
    opt.step()
    state = {n: opt.state[p] for n, p in named_parameters(base).items()}
    carried = implementations.grown_state("carry", state, g)
    params = named_parameters(target)
    new = {n for n in params if ".moe.router." in n}  # an upcycled router is new: it starts without state
    assert set(carried) == set(params) - new
    for n, st in carried.items():
        assert st["exp_avg"].shape == st["exp_avg_sq"].shape == params[n].shape, n


def test_an_unknown_operator_name_is_a_clear_error_everywhere():
    with pytest.raises(KeyError, match="no growth operator 'nope'.*direct"):
        implementations.get("nope")


DEPTH = [name for name, op in descriptions.OPERATORS.items() if op.depth]


@pytest.mark.parametrize("name", DEPTH)
def test_the_layers_a_depth_operator_adds_are_what_it_declares(name):
    """`Mode.new` is what freezing by origin, the compiler's checks and the depth copy go by: a copy
    holds its source's weights, a silent layer too but for zero residual writers, a fresh one keeps
    the grown model's own initial weights."""
    from growdsl.ops.layout import LAYER_PARAMS, RESIDUAL_WRITERS, layer_key
    from growdsl.plan.freeze import added

    declared = descriptions.OPERATORS[name].depth
    plan, g = grown_plan(f"stack x2 init {name}")
    base, target = models(plan)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    op = implementations.get(name)
    op.ramps(target, g)
    op.grow(base.state_dict(), target.state_dict(), g)
    src, dst = base.state_dict(), target.state_dict()
    new = [i for i, is_new in enumerate(added(g.layer_map)) if is_new]
    assert new and {descriptions.start_kind(g.layer_map[i].init) for i in new} == {declared.new}
    for i in new:
        for param in LAYER_PARAMS:
            got, source = dst[layer_key(i, param)], src[layer_key(g.layer_map[i].source, param)]
            if declared.new == "fresh":
                assert torch.equal(got, fresh[layer_key(i, param)]), (i, param)
            elif declared.new == "silent" and param in RESIDUAL_WRITERS:
                assert not got.any(), (i, param)
            else:
                assert torch.equal(got, source), (i, param)
