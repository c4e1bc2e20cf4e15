"""Upcycling as a growth (`upcycle experts N top K ...`): planned, its experts started as the operator
declares (copies: the dense model's function exactly; Drop-Upcycling: a share of each expert's units
drawn afresh), AdamW carried into every expert or reset, and a run resumed exactly across it."""

import json

import pytest
import torch
from ops_helpers import FAMILY, TINY_RUN, grown_plan, models, probe

from growdsl.cli import main
from growdsl.lang.errors import ScheduleError
from growdsl.ops import operators
from growdsl.ops.check import check_preservation
from growdsl.ops.experts import SEED, dropped_units, layer_generator
from growdsl.ops.layout import named_parameters
from growdsl.plan import plan_source
from growdsl.plan.plan import ExpertsGrowth, Plan
from growdsl.plan.render import growth_line


def test_upcycle_plans_a_mixture_where_it_says_with_its_operator_and_options():
    plan, g = grown_plan("upcycle experts 8 top 2 shared 1 every 2 balance 1e-3 init drop 0.25 noise 0.01")
    assert isinstance(g, ExpertsGrowth) and g.operator == "drop" and g.guarantee == "none"
    assert g.options == {"ratio": 0.25, "noise": 0.01}
    e = plan.stages[1].shape.experts
    assert (e.count, e.top_k, e.shared, e.every, e.balance) == (8, 2, 1, 2, 1e-3)
    assert plan.stages[1].shape == plan.stages[1].shape.__class__(**{**plan.stages[0].shape.__dict__, "experts": e})
    # the blocks that become mixtures say how they start; the others stay as they were
    assert [o.init for o in plan.stages[1].layers] == ["copy", "dropped", "copy"]
    assert [o.source for o in plan.stages[1].layers] == [0, 1, 2]
    # a token goes through 2 of the 8 experts and the shared one: the FLOPs are of those (and the router)
    assert plan.stages[1].flops_per_token == plan.stages[1].shape.flops_per_token(16)
    assert plan.stages[1].shape.active_params - plan.stages[0].shape.params == 2 * 3 * 64 * 96 + 64 * 8
    assert Plan.from_json(plan.to_json()) == plan
    top1, direct = grown_plan("upcycle experts 4 top 1")
    assert any("never trains the router" in w.message for w in top1.warnings)  # its one score is always 1
    assert any("without load balancing" in w.message for w in top1.warnings)
    assert not any("load balancing" in w.message for w in plan.warnings)  # balance 1e-3 balances
    assert (direct.operator, direct.guarantee) == ("direct", "exact")
    assert "upcycle (direct): every feed-forward -> 4 experts, top 1; function-preserving" in growth_line(direct)


@pytest.mark.parametrize(
    "growth,message",
    [
        ("upcycle experts 4 top 5", "top 5 of 4 experts"),
        ("upcycle experts 4 top 2 every 4", "no block gets them"),
        ("upcycle experts 4 top 2 init zero", "zero does not upcycle: it can grow depth and grow width"),
        ("upcycle experts 4 top 2 init drop 1.5", "'ratio' of init drop must be at least 0 and at most 1"),
        ("stack x2 init drop", "drop does not grow depth: it can upcycle"),
        ("upcycle experts 4 top 2\ntrain 5 steps\nupcycle experts 8 top 2", "growdsl grows dense models"),
        ("upcycle experts 4 top 2\ntrain 5 steps\nstack x2", "growdsl grows dense models"),
        ("upcycle experts 4 top 2\ntrain 5 steps with tp 2", "tensor-parallel"),
    ],
)
def test_an_upcycling_it_cannot_make_is_an_error_at_its_place(growth, message):
    with pytest.raises(ScheduleError) as e:
        plan_source(f"{FAMILY}train 3L for 10 steps\n{growth}\ntrain 10 steps")
    assert message in e.value.errors[0].message


def _stepped(model):
    """The AdamW state of `model` after one step on the probe batch, by name."""
    opt = torch.optim.AdamW(model.parameters())
    model(probe()).sum().backward()
    opt.step()
    return {n: opt.state[p] for n, p in named_parameters(model).items()}


def test_drop_upcycling_draws_each_experts_own_units_afresh_and_carries_zero_moments_for_them():
    plan, g = grown_plan("upcycle experts 4 top 2 shared 1 init drop 0.5 optimizer carry")
    base, target = models(plan)
    op = operators.get("drop")
    op.grow(base.state_dict(), target.state_dict(), g)
    dense, moe = base.state_dict(), target.state_dict()
    picks = dropped_units(96, 4, 0.5, layer_generator(SEED, 1))
    assert len(picks) == 4 and all(len(p) == 48 for p in picks)
    assert len({tuple(sorted(p.tolist())) for p in picks}) == 4  # each expert its own
    w1, w2 = dense["layers.1.feed_forward.w1.weight"], dense["layers.1.feed_forward.w2.weight"]
    for e, picked in enumerate(picks):
        kept = torch.ones(96, dtype=torch.bool)
        kept[picked] = False
        assert torch.equal(moe["layers.1.moe.experts.w1"][e][kept], w1[kept])
        assert torch.equal(moe["layers.1.moe.experts.w2"][e][:, kept], w2[:, kept])
        assert not torch.isclose(moe["layers.1.moe.experts.w1"][e][picked], w1[picked]).any()
    assert check_preservation(base, target, probe(), "exact").relative > 1e-3  # no longer the dense function

    state = _stepped(base)
    carried = operators.grown_state("carry", state, g)
    for e, picked in enumerate(picks):
        got = carried["layers.1.moe.experts.w1"]["exp_avg"][e]
        assert got[picked].abs().sum() == 0
        kept = torch.ones(96, dtype=torch.bool)
        kept[picked] = False
        assert torch.equal(got[kept], state["layers.1.feed_forward.w1.weight"]["exp_avg"][kept])
        w2 = carried["layers.1.moe.experts.w2"]["exp_avg_sq"][e]  # its columns are the units
        assert w2[:, picked].abs().sum() == 0
        assert torch.equal(w2[:, kept], state["layers.1.feed_forward.w2.weight"]["exp_avg_sq"][:, kept])
    shared = carried["layers.1.moe.shared_experts.w2.weight"]
    assert shared["exp_avg"].abs().sum() == 0 and shared["exp_avg_sq"].abs().sum() == 0  # its weight starts at 0
    assert torch.equal(carried["layers.1.moe.shared_experts.w1.weight"]["exp_avg_sq"],
                       state["layers.1.feed_forward.w1.weight"]["exp_avg_sq"])  # fmt: skip
    assert operators.grown_state("reset", state, g) == {}


def test_copies_carry_every_experts_moments_from_its_feed_forward():
    plan, g = grown_plan("upcycle experts 3 top 2 optimizer carry")
    base, target = models(plan)
    state = _stepped(base)
    carried = operators.grown_state("carry", state, g)
    for w in ("w1", "w2", "w3"):
        for key in ("exp_avg", "exp_avg_sq"):
            dense = state[f"layers.2.feed_forward.{w}.weight"][key]
            assert all(torch.equal(m, dense) for m in carried[f"layers.2.moe.experts.{w}"][key])
    assert torch.equal(
        carried["layers.0.attention.wq.weight"]["exp_avg"], state["layers.0.attention.wq.weight"]["exp_avg"]
    )


def _history(run):
    return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]


UPCYCLED = TINY_RUN + (
    "val every 4 steps\nval tokens 512\ncheckpoint every 3 steps\ntrain 2L for 6 steps\n"
    "upcycle experts 4 top 2 shared 1 balance 0.01 aux_loss 0.01 optimizer carry\ntrain 6 steps\n"
)


def test_a_run_upcycles_exactly_and_resumes_exactly_on_either_side_of_the_growth(data_dir, tmp_path):
    schedule = tmp_path / "upcycle.grow"
    schedule.write_text(UPCYCLED)
    whole = tmp_path / "whole"
    assert main(["run", str(schedule), "--data", str(data_dir), "--run-dir", str(whole)]) == 0
    growth = next(r for r in _history(whole) if r.get("event") == "growth")
    assert "upcycle direct" in growth["text"] and "preserved" in growth["text"]
    steps = [r for r in _history(whole) if "event" not in r]
    losses = [r["loss"] for r in steps]
    assert [("expert_load_max" in r) for r in steps] == [False] * 6 + [True] * 6  # the load, once there are experts
    for until in (3, 9):  # stopped before the growth, and after it
        stopped = tmp_path / f"until-{until}"
        args = ["run", str(schedule), "--data", str(data_dir), "--run-dir", str(stopped)]
        assert main([*args, "--until", str(until)]) == 0
        assert main([*args, "--resume"]) == 0
        assert [r["loss"] for r in _history(stopped) if "event" not in r] == losses, until


def test_freeze_after_an_upcycling_names_parts_of_blocks_and_counts_their_flops_by_hand():
    """`base`: what the dense model had; `new`: the mixtures; `copies`: their routed experts (module docs of
    growdsl.plan.freeze). A frozen mixture still runs forward and passes gradients down (4 FLOPs a parameter
    a token), but pays for no weight gradients: 2 FLOPs a parameter a token less."""
    from growdsl.plan.freeze import Frozen

    def stage(words):
        growth = "upcycle experts 4 top 2 shared 1 every 2"
        plan = plan_source(f"{FAMILY}train 3L for 10 steps\n{growth}\ntrain 10 steps with freeze {words}")
        return plan.stages[1]

    d, ffn = 64, 96
    active_mixture = (2 + 1) * 3 * d * ffn + d * 4  # top 2, the shared one, the router
    full = stage("embeddings").shape.flops_per_token(16)
    embeddings = 101 * 64
    assert stage("new").frozen == Frozen(mixtures=(1,))
    assert stage("new").flops_per_token == full - 2 * active_mixture
    assert stage("new").trainable_params == stage("new").params - ((4 + 1) * 3 * d * ffn + d * 4)
    assert stage("copies").frozen == Frozen(experts=(1,))
    assert stage("copies").flops_per_token == full - 2 * 2 * 3 * d * ffn
    assert stage("copies").trainable_params == stage("copies").params - 4 * 3 * d * ffn
    base = stage("base embeddings")
    assert base.frozen == Frozen(layers=(0, 2), dense=(1,), embeddings=True)
    assert base.trainable_params == base.params - embeddings - 2 * base.shape.layer_params - (
        base.shape.layer_params - 3 * d * ffn
    )  # blocks 0 and 2, and block 1 but its mixture
    # nothing trains below the mixture of block 1: blocks 0 and 1's attention pass no gradient down
    attention = 4 * 4 * 16 * 16
    below = 2 * (base.shape.layer_params + attention) + 2 * (base.shape.layer_params - 3 * d * ffn + attention)
    assert base.flops_per_token == stage("embeddings").flops_per_token - below - 2 * (
        2 * base.shape.layer_params + base.shape.layer_params - 3 * d * ffn
    )
    with pytest.raises(ScheduleError, match="nothing is left to train"):
        stage("base new embeddings head")
    drop = f"{FAMILY}train 3L for 10 steps\nupcycle experts 4 top 2 init drop\ntrain 10 steps with freeze copies"
    assert any("stay as drawn" in w.message for w in plan_source(drop).warnings)
    # only the router and the shared expert train: nothing passes a gradient through the routed experts
    # beside them, nor below; above them, block 2 and the head pass it down
    only = stage("base copies embeddings head")
    rest = 3 * d * ffn + d * 4
    head = 101 * 64 + 64
    forward = sum(2 * only.shape.block_params(i, active=True) + attention for i in range(3)) + 2 * head
    lp = only.shape.layer_params
    assert only.flops_per_token == forward + 4 * rest + 2 * lp + 2 * attention + 2 * head
    assert only.trainable_params == rest


def test_a_run_that_trains_only_the_mixtures_leaves_the_dense_models_weights_as_they_were(data_dir, tmp_path):
    """LLaMA-Pro's setup for upcycling: `freeze base embeddings head` trains the routers and experts alone."""
    from growdsl.eval.checkpoints import load

    schedule = tmp_path / "frozen.grow"
    schedule.write_text(UPCYCLED.replace("train 6 steps\n", "train 6 steps with freeze base embeddings head\n"))
    run = tmp_path / "run"
    args = ["run", str(schedule), "--data", str(data_dir), "--run-dir", str(run)]
    assert main([*args, "--until", "6"]) == 0  # the dense model, at the growth
    dense = {k: v.clone() for k, v in load(run).model.state_dict().items()}
    assert main([*args, "--resume"]) == 0
    upcycled = load(run).model.state_dict()
    kept = [k for k in dense if ".feed_forward." not in k]
    assert kept and all(torch.equal(upcycled[k], dense[k]) for k in kept)
    for w in ("w1", "w2", "w3"):  # every expert trained away from its copy
        experts = upcycled[f"layers.0.moe.experts.{w}"]
        assert all(not torch.equal(e, dense[f"layers.0.feed_forward.{w}.weight"]) for e in experts)


def test_the_dense_model_continued_is_written_on_the_same_flops_and_refused_where_it_is_no_one_schedule(tmp_path):
    from growdsl.app.baseline import write_baseline
    from growdsl.errors import GrowdslError
    from growdsl.plan import baseline

    schedule = tmp_path / "upcycle.grow"
    schedule.write_text(UPCYCLED)
    plan = plan_source(UPCYCLED)
    continued = baseline.continued(plan)
    dense_step = plan.stages[0].flops_per_token * plan.stages[0].training.tokens_per_step
    assert continued.steps == round(plan.stages[1].flops / dense_step) > 6  # a dense step costs less
    written = write_baseline(str(schedule), str(tmp_path / "dense.grow"), dense=True)
    again = plan_source((tmp_path / "dense.grow").read_text())
    assert again.totals.flops == continued.flops and len(again.stages) == 2 and not again.stages[1].growths
    assert again.stages[1].shape == plan.stages[0].shape and "the dense model continued" in written.summary()
    assert abs(continued.flops / plan.totals.flops - 1) < dense_step / plan.totals.flops  # the nearest step
    for text, message in [
        (TINY_RUN + "train 2L for 6 steps\nstack x2\ntrain 6 steps\n", "upcycles nothing"),
        (UPCYCLED + "train 4 steps\n", "not the one growth right before its final stage"),
        (UPCYCLED.replace("train 6 steps\n", "train 6 steps with freeze new\n"), "freezes by origin"),
    ]:
        with pytest.raises(baseline.BaselineError, match=message):
            baseline.continued(plan_source(text))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    schedule.write_text('data "corpus"\n' + UPCYCLED)
    with pytest.raises(GrowdslError, match="relative to its own folder"):
        write_baseline(str(schedule), str(elsewhere / "dense.grow"), dense=True)
    assert not (elsewhere / "dense.grow").exists()


def test_the_dense_control_restarts_its_lr_where_the_upcycling_did_and_continues_a_model_it_starts_from(tmp_path):
    from test_imported import hf_llama

    from growdsl.app.baseline import write_baseline
    from growdsl.plan import baseline
    from growdsl.plan.render import render_plan

    restart = tmp_path / "restart.grow"
    restart.write_text(UPCYCLED.replace(" optimizer carry", " optimizer carry lr restart"))
    text = write_baseline(str(restart), None, dense=True).text
    dense = plan_source(text)
    assert "with lr 0.01 to 0.001" in text and dense.stages[1].lr.start_step == 0  # a warmup and decay of its own
    assert plan_source(UPCYCLED.replace(" optimizer carry", " optimizer carry lr restart")).stages[1].lr.start_step == 0
    hf_llama(tmp_path / "llama")
    started = tmp_path / "started.grow"
    started.write_text('model from "llama"\nseq 32\nbatch 2 seqs\nval off\nupcycle experts 4 top 2\ntrain 20 steps\n')
    plan = plan_source(started.read_text(), str(started))
    assert "dense          the dense model continued instead" in render_plan(plan)
    written = write_baseline(str(started), str(tmp_path / "dense.grow"), dense=True)
    again = plan_source((tmp_path / "dense.grow").read_text(), str(tmp_path / "dense.grow"))
    assert (
        again.start is not None and not again.stages[0].growths and again.totals.flops == baseline.continued(plan).flops
    )
    assert again.stages[0].steps == baseline.continued(plan).steps > 20 and "continued" in written.summary()


def test_a_tournament_compares_ways_to_upcycle_and_refuses_to_mix_them_with_a_stack():
    from growdsl.plan import plan_tournament

    base = f"{FAMILY}val every 5 steps\nval tokens 256\ntrain 3L for 10 steps\n"
    _, tournament = plan_tournament(
        base + "try upcycle experts 4 top 2 | upcycle experts 4 top 2 init drop 0.5 for 5 steps\ntrain 5 steps\n"
    )
    growths = [arm.plan.stages[1].growths[0] for arm in tournament.arms]
    assert [(g.kind, g.operator) for g in growths] == [("experts", "direct"), ("experts", "drop")]
    assert len({arm.plan.stages[1].flops for arm in tournament.arms}) == 1  # the same probe, the same model
    with pytest.raises(ScheduleError, match=r"\(experts 4 top 2 aux_loss 0.01\) model, 'upcycle experts 4 top 2' a"):
        plan_tournament(
            base + "try upcycle experts 4 top 2 | upcycle experts 4 top 2 aux_loss 0.01 for 5 steps\ntrain 5 steps\n"
        )
    with pytest.raises(ScheduleError, match="'stack x2' a 6L"):
        plan_tournament(base + "try stack x2 | upcycle experts 4 top 2 for 5 steps\ntrain 5 steps\n")


def test_the_stacking_papers_limits_and_guideline_say_nothing_of_an_upcycling():
    """Upcycling starts from long-trained dense models (Llama-3-8B: 15T tokens, ~1,900 a parameter): the
    G_stack guideline and the limits measured for stacking are not its."""
    from growdsl.plan.advice import advise

    plan = plan_source(f"{FAMILY}train 3L for 400000 steps\nupcycle experts 4 top 2\ntrain 10 steps")
    assert plan.stages[1].timing is None and advise(plan.stages, None) == []
    stacked = plan_source(f"{FAMILY}train 3L for 400000 steps\nstack x2\ntrain 10 steps")
    assert stacked.stages[1].timing is not None and advise(stacked.stages, None)  # overtrained: said


def test_the_auxiliary_loss_is_mixtrals_and_trains_the_router_of_copies_that_the_lm_loss_cannot():
    """Experts that are copies give the router no gradient from the LM loss (the renormalised scores sum
    to 1 whatever it says); the load-balancing loss does. It is Switch's, as transformers' Mixtral computes
    it over all its mixtures at once (load_balancing_loss_func of every layer's router logits)."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    from growdsl.ops.experts import Upcycling, mixture, routing_loss, upcycled_ffn
    from growdsl.plan.shape import Experts

    torch.manual_seed(0)
    experts = Experts(count=8, top_k=2, aux_loss=0.5)
    layers = torch.nn.ModuleList(mixture(experts, 32, 48) for _ in range(3))
    with torch.no_grad():
        for moe in layers:
            moe.init_weights(0.02, torch.device("cpu"))
            ffn = [torch.randn(48, 32) * 0.1, torch.randn(32, 48) * 0.1, torch.randn(48, 32) * 0.1]
            moe.load_state_dict(upcycled_ffn(*ffn, experts, Upcycling(), torch.Generator()), strict=False)
    inputs = [torch.randn(2, 16, 32) for _ in layers]
    sum(moe(x).pow(2).mean() for moe, x in zip(layers, inputs)).backward()
    lm_only = [moe.router.gate.weight.grad.clone() for moe in layers]
    aux = routing_loss(layers)
    logits = tuple(moe.router.gate(x.view(-1, 32)) for moe, x in zip(layers, inputs))
    torch.testing.assert_close(aux, 0.5 * load_balancing_loss_func(logits, 8, 2), rtol=1e-5, atol=0)
    assert routing_loss(layers) is None  # taken once
    for grad in lm_only:
        torch.testing.assert_close(grad, torch.zeros_like(grad), atol=1e-7, rtol=0)
    layers.zero_grad()
    for moe, x in zip(layers, inputs):
        moe(x)
    routing_loss(layers).backward()
    assert all(moe.router.gate.weight.grad.abs().sum() > 0 for moe in layers)
    layers.eval()
    layers[0](inputs[0])
    assert routing_loss(layers) is None  # validation trains nothing


def test_the_auxiliary_loss_is_planned_and_written_back():
    from growdsl.plan.baseline import experts_setting

    plan = plan_source(UPCYCLED)
    e = plan.stages[1].shape.experts
    assert e.aux_loss == 0.01 and experts_setting(e) == " experts 4 top 2 shared 1 balance 0.01 aux_loss 0.01"
    assert "top 2 + 1 shared, balance 1e-2, aux_loss 1e-2;" in growth_line(plan.stages[1].growths[0])
