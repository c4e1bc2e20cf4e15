"""The compiled plan: shapes, layer maps, params, tokens, steps, FLOPs, LR schedules, JSON."""

import math
from dataclasses import replace
from fractions import Fraction

import pytest
from conftest import SCHEDULES

from growdsl.lang.errors import ScheduleError
from growdsl.plan import guideline, plan_file, plan_source
from growdsl.plan.layermap import gstack, parse_pattern
from growdsl.plan.plan import Plan
from growdsl.plan.presets import PRESETS

ONE_LINER = 'train 6L for 10B; stack x4 layers "123456*4"; train 300B'
TPS = 1024 * 2048  # Table 1 batch


def test_one_liner_plans_the_default_1_1b_family_6_to_24_layers():
    plan = plan_source(ONE_LINER)
    base, target = plan.stages
    assert base.shape == replace(PRESETS["1.1B"].shape, n_layers=6)
    assert target.shape == PRESETS["1.1B"].shape
    # hand count: embeddings 2 x 32000 x 2048, per layer 44,044,288, final norm 2048
    assert base.params == 2 * 65_536_000 + 6 * 44_044_288 + 2048 == 395_339_776
    assert target.params == 2 * 65_536_000 + 24 * 44_044_288 + 2048 == 1_188_136_960
    assert (base.steps, base.tokens) == (4769, 4769 * TPS)  # ceil(10e9 / 2,097,152)
    assert (target.steps, target.tokens) == (143_052, 143_052 * TPS)
    # 6 (N - input embedding) + 12 L heads head_dim T
    assert base.flops_per_token == 6 * (395_339_776 - 65_536_000) + 12 * 6 * 32 * 64 * 2048
    assert base.flops == base.flops_per_token * base.tokens
    assert target.cumulative_flops == base.flops + target.flops
    assert base.lr.max_lr == 3e-4 and base.lr.min_lr == 3e-5 and base.lr.warmup_steps == 3000


def test_one_liner_growth_is_gstack_with_exact_map_and_rc():
    (growth,) = plan_source(ONE_LINER).stages[1].growths
    assert growth.kind == "depth" and growth.method == "stack" and growth.operator == "direct"
    assert growth.sources == gstack(6, 4)
    assert [o.init for o in growth.layer_map] == ["copy"] * 24
    assert growth.connection_rate == Fraction(20, 23) and growth.factor == 4
    assert growth.guarantee == "none"
    assert (growth.optimizer, growth.lr) == ("reset", "restart")


def test_totals_give_the_scratch_baseline_on_the_same_flops():
    plan = plan_source(ONE_LINER)
    base, target = plan.stages
    t = plan.totals
    assert t.tokens == sum(s.tokens for s in plan.stages)
    per_step = target.flops_per_token * TPS
    # FLOPs per token by hand: 6L 2,280,812,544, 24L 7,943,565,312 (see the test above), so the 6L's
    # 4,769 steps cost as much as 1,369.3 steps of the 24L: the baseline is 143,052 + 1,369 steps
    assert (base.flops_per_token, target.flops_per_token) == (2_280_812_544, 7_943_565_312)
    assert (base.flops + target.flops) / per_step == pytest.approx(143_052 + 1369.3, abs=0.05)
    assert t.baseline.steps == 143_052 + 1369
    assert t.baseline.flops == t.baseline.steps * per_step and t.baseline.tokens == t.baseline.steps * TPS
    assert abs(t.baseline.flops - t.flops) <= per_step / 2


def test_a_schedule_without_growth_has_no_baseline():
    assert plan_source("train 6L for 10B").totals.baseline is None


@pytest.mark.parametrize("path", SCHEDULES, ids=lambda p: p.name)
def test_every_example_plans_and_round_trips_through_json(path):
    plan = plan_file(path)
    assert Plan.from_json(plan.to_json()) == plan
    assert plan.stages[-1].cumulative_flops == plan.totals.flops


def test_json_carries_rc_as_a_fraction():
    import json

    data = json.loads(plan_source(ONE_LINER).to_json())
    growth = data["stages"][1]["growths"][0]
    assert growth["connection_rate"] == "20/23" and growth["factor"] == "4"
    assert growth["layer_map"][6] == {"source": 0, "init": "copy", "root": 0}


def test_partial_stacking_schedules_resolve_the_paper_patterns():
    for pattern in ["12-3456*5-56", "123*7-456", "1234-56*10"]:
        name = "partial_" + pattern.replace("-", "_").replace("*", "x") + ".grow"
        (path,) = [p for p in SCHEDULES if p.name == name]
        (growth,) = plan_file(path).stages[1].growths
        assert growth.method == "pattern" and growth.pattern == pattern
        assert growth.sources == parse_pattern(pattern, 6)


def test_auto_resolves_d_with_the_guideline():
    (path,) = [p for p in SCHEDULES if p.name == "gstack_7b.grow"]
    base, target = plan_file(path).stages
    assert base.auto and target.shape == PRESETS["7B"].shape
    d = guideline.predict_d(target.params, target.tokens).d
    assert base.steps == math.ceil(d / TPS)
    assert round(d / 1e9, 2) == 20.06
    assert target.timing.predicted_d == d and target.timing.used_d == base.tokens


def test_gradual_stacking_keeps_lineage_to_the_base_layers():
    plan = plan_source("train 6L for 10B; stack x2; train 10B; stack x2; train 100B")
    assert [s.shape.n_layers for s in plan.stages] == [6, 12, 24]
    assert plan.stages[2].growths[0].sources == gstack(12, 2)
    assert [o.root for o in plan.stages[2].layers] == [i % 6 for i in range(24)]
    assert [o.root for o in plan.stages[0].layers] == list(range(6))
    assert {o.init for o in plan.stages[0].layers} == {"fresh"}


def test_depth_zero_and_random_keep_first_copies_and_initialise_duplicates():
    zero = plan_source("train 6L for 10B; stack x4 init zero; train 10B").stages[1].growths[0]
    assert [o.init for o in zero.layer_map] == ["copy"] * 6 + ["zero"] * 18
    assert zero.guarantee == "exact"
    rnd = plan_source("train 6L for 10B; stack x4 init random ramp 1000 steps; train 10B").stages[1].growths[0]
    assert [o.init for o in rnd.layer_map] == ["copy"] * 6 + ["random"] * 18
    assert [o.root for o in rnd.layer_map][5:8] == [5, None, None]
    assert rnd.ramp_steps == 1000 and rnd.guarantee == "exact"
    llama_pro = plan_source('train 6L for 10B; stack layers "12-2-34-4-56-6" init zero; train 1B').stages[1].growths[0]
    assert [o.init for o in llama_pro.layer_map] == [
        "copy",
        "copy",
        "zero",
        "copy",
        "copy",
        "zero",
        "copy",
        "copy",
        "zero",
    ]
    named = plan_source("train 6L for 10B; stack after every 2 init zero; train 1B").stages[1].growths[0]
    assert named.layer_map == llama_pro.layer_map and named.placement == "after every 2"
    assert named.guarantee == "exact"


def test_placements_compile_to_their_maps_and_say_what_is_wrong():
    midas = plan_source("train 8L for 1B; stack middle 4; train 1B").stages[1].growths[0]
    assert midas.pattern == "123456-345678" and midas.target_layers == 12 and midas.placement == "middle 4"
    top = plan_source("train 6L for 1B; stack top 2 x3; train 1B").stages[1].growths[0]
    assert top.sources == [0, 1, 2, 3, 4, 5, 4, 5, 4, 5] and top.placement == "top 2 x3"
    assert plan_source("train 6L for 1B; stack top 6; train 1B").stages[1].growths[0].method == "stack"
    for text, message, col in [
        ("train 6L for 1B; stack bottom 7; train 1B", "the base has 6 layers", 31),
        ('train 6L for 1B; stack middle 2 layers "1234"; train 1B', "a placement", 40),
        ("train 6L for 1B; stack after every 1.5; train 1B", "whole number", 36),
    ]:
        with pytest.raises(ScheduleError) as e:
            plan_source(text)
        assert message in e.value.errors[0].message and e.value.errors[0].span.col == col


def test_random_ramp_in_tokens_becomes_steps_of_the_next_stage():
    g = (
        plan_source("train 6L for 10B; stack x4 init random ramp 2B; train 10B with batch 512 seqs")
        .stages[1]
        .growths[0]
    )
    assert g.ramp_steps == math.ceil(2e9 / (512 * 2048))


def test_depth_learn_has_a_ligo_phase_counted_in_flops():
    plan = plan_source("train 6L for 10B; stack x4 init learn 100 steps at lr 7e-5; train 10B")
    stage = plan.stages[1]
    learn = stage.growths[0].learn
    assert (learn.steps, learn.lr, learn.warmup_steps, learn.tokens) == (100, 7e-5, 50, 100 * TPS)
    assert learn.flops == learn.tokens * stage.flops_per_token
    assert stage.flops == stage.tokens * stage.flops_per_token + learn.flops
    assert plan.totals.tokens == plan.stages[0].tokens + stage.tokens + learn.tokens


def test_width_growth_keeps_heads_whole_and_the_gqa_group():
    plan = plan_source("train 24L dim 1024 for 10B\nwiden dim 2048\ntrain 10B")
    base, target = plan.stages
    assert (base.shape.dim, base.shape.n_heads, base.shape.n_kv_heads, base.shape.ffn_dim) == (1024, 16, 2, 2816)
    assert target.shape == PRESETS["1.1B"].shape
    g = target.growths[0]
    assert g.kind == "width" and g.operator == "direct" and g.guarantee == "approximate"
    assert g.source == base.shape and g.target == target.shape
    assert [o.root for o in target.layers] == list(range(24))


def test_lr_restart_and_continue():
    restart = plan_source(ONE_LINER).stages
    assert restart[1].lr.start_step == 0 and restart[1].lr.total_steps == restart[1].steps
    cont = plan_source("train 6L for 10B; stack x4 lr continue; train 300B").stages
    assert cont[0].lr == replace(cont[1].lr, start_step=0)
    assert cont[1].lr.start_step == cont[0].steps
    assert cont[1].lr.total_steps == cont[0].steps + cont[1].steps
    lr = cont[1].lr
    assert lr.lr_at(lr.total_steps - lr.start_step - 1) == pytest.approx(3e-5, rel=1e-6)


def test_lr_schedule_shape():
    lr = plan_source("warmup 10 steps\nlr 1e-3 to 1e-4\ntrain 6L for 110 steps").stages[0].lr
    assert lr.lr_at(0) == pytest.approx(1e-4) and lr.lr_at(9) == pytest.approx(1e-3)
    assert lr.lr_at(60) == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 0.5)))
    assert lr.lr_at(110) == pytest.approx(1e-4)


def test_validation_defaults_to_25_points_on_1_percent_of_the_tokens_and_can_be_set():
    t = plan_source("model tiny\ntrain 2L for 200 steps\nstack x2\ntrain 250 steps")
    steps = sum(s.steps for s in t.stages)
    tokens = sum(s.tokens for s in t.stages)
    every, size = math.ceil(steps / 25), tokens // 100 // 128 * 128  # whole 128-token sequences
    assert [(s.training.val_every_steps, s.training.val_tokens) for s in t.stages] == [(every, size)] * 2
    plan = plan_source("val every 100 steps\nval tokens 64K\ntrain 6L for 1B\nstack x4\ntrain 1B with val off")
    a, b = (s.training for s in plan.stages)
    assert (a.val_every_steps, a.val_tokens, b.val_every_steps) == (100, 64_000, None)
    # the cost: the 6L's 477 steps give points 100..400 and its end; forward FLOPs = a third of training's
    first = plan.stages[0]
    assert plan.totals.val_flops == 5 * (31 * 2048 * first.flops_per_token // 3)  # 64K: 31 whole sequences
    big = plan_source("train 6L for 100B").stages[0].training
    assert big.val_tokens == 2**20 and big.val_every_steps == math.ceil(47_684 / 25)  # the 1M-token cap


def test_per_stage_overrides_take_effect_only_for_their_stage():
    plan = plan_source("train 6L for 1B with seq 1024, batch 2048 seqs, tp 2, ac full\nstack x4\ntrain 1B")
    a, b = plan.stages
    assert (a.training.seq_len, a.training.batch_seqs, a.training.parallel.tp) == (1024, 2048, 2)
    assert a.training.parallel.activation_checkpoint == "full"
    assert (b.training.seq_len, b.training.batch_seqs, b.training.parallel.tp) == (2048, 1024, 1)


def test_mixed_precision_is_a_setting_of_each_stage():
    plan = plan_source("train 6L for 1B\nmixed bf16\nstack x4\ntrain 1B with mixed off\ntrain 1B")
    assert [s.training.parallel.mixed for s in plan.stages] == ["auto", "off", "bf16"]


def test_settings_hold_from_where_they_stand():
    plan = plan_source("train 6L for 1B\nseq 4096\nbatch 4096K tokens\nstack x4\ntrain 1B")
    assert plan.stages[0].training.seq_len == 2048
    assert (plan.stages[1].training.seq_len, plan.stages[1].training.batch_seqs) == (4096, 1000)


def test_checkpoint_and_eval_cadence_in_steps():
    t = (
        plan_source(
            'checkpoint every 1B\neval every 500 steps\neval at growth\neval tasks "piqa, arc_easy"\ntrain 6L for 10B'
        )
        .stages[0]
        .training
    )
    assert t.checkpoint_every_steps == math.ceil(1e9 / TPS) and t.eval_every_steps == 500
    assert t.eval_at_growth and not t.eval_at_end and t.eval_tasks == ("piqa", "arc_easy")


@pytest.mark.parametrize(
    "source, fragment",
    [
        ('train 6L for 10B; stack layers "12-3456*5-56"; train 100B', None),
        ("train 6L for 1B; stack x4; train 1B", "warmup (3000 steps) is as long as the schedule"),
        ('model 1.1B layers 9\ntrain 6L for 1B; stack layers "12-2-34-4-56-6"; train 1B', "outside the paper's 2-4"),
        ('train 6L for 10B; stack layers "1234*6"; train 1B', "drops base layers 5, 6"),
        ("train 6L for 1B; stack x4; train 1B\nseed 3", "has no effect"),
        ("model 7B\ntrain 8L for 1B; stack x2; train 1B", "not the declared"),
        ("train 6L for 1B; stack x4 init random; train 1B", "ramp (5000 steps) is longer than the stage"),
    ],
)
def test_warnings(source, fragment):
    warnings = plan_source(source).warnings
    if fragment is None:
        assert warnings == ()
    else:
        assert any(fragment in w.message for w in warnings), warnings


def test_the_guideline_reproduces_llama2_7b_on_2t():
    p = guideline.predict_d(7e9, 2e12)
    assert p.compute == pytest.approx(8.4e22)
    assert f"{p.d / 1e9:.2f}" == "11.11"


def test_loading_json_validates_it():
    import json

    from pydantic import ValidationError

    data = json.loads(plan_source(ONE_LINER).to_json())
    for corrupt in (
        lambda d: d["stages"][1]["growths"][0].update(connection_rate="twenty"),
        lambda d: d["stages"][0]["shape"].update(dim="wide"),
        lambda d: d["stages"][0].update(surprise=1),
        lambda d: d["stages"][1]["growths"][0].update(kind="sideways"),
    ):
        broken = json.loads(json.dumps(data))
        corrupt(broken)
        with pytest.raises(ValidationError):
            Plan.from_json(json.dumps(broken))


def test_to_json_writes_what_pydantic_would():
    import json

    from growdsl.plan.plan import _adapter

    plan = plan_file([p for p in SCHEDULES if p.name == "depth_learn_1.1b.grow"][0])
    assert json.loads(plan.to_json()) == json.loads(_adapter().dump_json(plan))


def test_validation_points_are_counted_not_listed():
    """`val every 1 steps` over a trillion steps (a list of them ended in a MemoryError)."""
    from growdsl.plan.plan import validation_steps

    plan = plan_source("model tiny\nval every 1 steps\ntrain 2L for 1T steps\n")
    stage = plan.stages[0]
    t = stage.training
    per_point = (t.val_tokens // t.seq_len) * t.seq_len * stage.flops_per_token // 3  # forward only
    assert stage.steps == 10**12 and plan.totals.val_flops == 10**12 * per_point

    points = validation_steps(7, 10**12, 3)
    assert len(points) == (10**12 + 7) // 3 - 7 // 3 + 1  # every multiple of 3 after step 7, and the end
    assert 9 in points and 10**12 + 7 in points and 10 not in points and 7 not in points


def test_a_schedule_of_more_layers_than_a_plan_holds_is_one_error(errors):
    """Thousands of stages of a 4,096-layer model fit in 64 KiB; each stage records its layers, so the
    plan stops at 100,000 layers summed over stages and growths (2,275 such stages took 75 s and 1.5 GB)."""
    from growdsl.plan.compiler import MAX_PLANNED_LAYERS

    stages = "".join(f"widen dim {64 * (i + 2)}\ntrain 1 steps\n" for i in range(40))
    found = errors("model llama dim 64 heads 1 ffn 64 vocab 400\ntrain 4096L for 1 steps\n" + stages)
    assert len(found) == 1 and "more than 100,000 layers" in found[0].message
    # every line from line 2 (train 4096L) on adds 4,096 layers: the 25th passes 100,000
    assert found[0].span.line == 1 + -(-MAX_PLANNED_LAYERS // 4096) == 26


def test_wsd_holds_the_max_lr_then_decays_over_the_stated_share():
    # 110 steps: warmup 10 (0.1e-3 .. 1e-3), stable to step 87, decay the last 22 (20% of 110)
    lr = plan_source("warmup 10 steps\nlr 1e-3 to 1e-4\nlr_schedule wsd\ntrain 6L for 110 steps").stages[0].lr
    assert (lr.kind, lr.decay_steps, lr.decay_start, lr.decay_share) == ("wsd", 22, 88, 0.2)
    assert lr.lr_at(0) == pytest.approx(1e-4) and lr.lr_at(9) == pytest.approx(1e-3)
    assert lr.lr_at(10) == lr.lr_at(87) == 1e-3
    assert lr.lr_at(88) == pytest.approx(1e-3 - 9e-4 / 22)  # the decay's first step
    assert lr.lr_at(98) == pytest.approx(1e-3 - 9e-4 * 11 / 22)  # linear, half way
    assert lr.lr_at(109) == pytest.approx(1e-4)  # the last step trains at the min LR
    head = "warmup 10 steps\nlr 1e-3 to 1e-4\n"
    sqrt = plan_source(head + "lr_schedule wsd decay 20 steps sqrt\ntrain 6L for 100 steps").stages[0].lr
    assert sqrt.decay_start == 80 and sqrt.lr_at(84) == pytest.approx(1e-4 + 9e-4 * (1 - math.sqrt(0.25)))
    cosine = plan_source(head + "lr_schedule wsd decay 10% cosine\ntrain 6L for 100 steps").stages[0].lr
    assert cosine.lr_at(94) == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 0.5)))
    tokens = plan_source("batch 8 seqs\nseq 128\nlr_schedule wsd decay 10K\ntrain 6L for 100 steps").stages[0].lr
    assert tokens.decay_steps == 10  # 10,000 tokens at 1,024 a step, rounded up
    one = plan_source(head + "lr_schedule wsd decay 1 steps\ntrain 6L for 100 steps").stages[0].lr
    assert one.lr_at(98) == 1e-3 and one.lr_at(99) == pytest.approx(1e-4)  # a one-step decay reaches the min too


def test_wsd_continued_across_a_growth_decays_only_at_the_end():
    # Bu 2025's late growth: the base trains 80% of the steps at the stable LR, the grown model decays
    plan = plan_source("lr 1e-3 to 1e-4\nwarmup 10 steps\nlr_schedule wsd decay 20%\n"
                       "train 1L for 80 steps\nstack x4 lr continue\ntrain 20 steps")  # fmt: skip
    base, grown = (s.lr for s in plan.stages)
    assert base.decay_start == grown.decay_start == 80 and grown.start_step == 80
    assert base.lr_at(79) == 1e-3 and grown.lr_at(0) == pytest.approx(1e-3 - 9e-4 / 20)  # the decay's first step
    assert grown.lr_at(9) == pytest.approx(1e-3 - 9e-4 * 10 / 20)
    assert not plan.warnings or all("decay" not in w.message for w in plan.warnings)
    late = plan_source(
        "warmup 10 steps\nlr_schedule wsd decay 50%\ntrain 1L for 80 steps\nstack x4 lr continue\ntrain 20 steps"
    )
    assert any("inside the decay" in w.message for w in late.warnings)


def test_wsd_mistakes_are_reported_where_they_are_written():
    for text, message in [
        ("lr_schedule wsd decay 0.2\ntrain 6L for 100 steps", "has no unit"),
        ("lr_schedule wsd decay 120%\ntrain 6L for 100 steps", "not a share"),
        ("lr_schedule wsd decay 0 steps\ntrain 6L for 100 steps", "at least one step"),
    ]:
        with pytest.raises(ScheduleError) as e:
            plan_source(text)
        assert message in e.value.errors[0].message and e.value.errors[0].span.line == 1
    crowded = plan_source("warmup 60 steps\nlr_schedule wsd decay 50 steps\ntrain 6L for 100 steps")
    assert any("no stable phase" in w.message for w in crowded.warnings)


def test_wsd_baseline_keeps_the_decay_share_or_its_steps():
    from growdsl.plan.baseline import schedule

    for setting, written in [("decay 20% sqrt", "decay 20% sqrt"), ("decay 30 steps", "decay 30 steps linear")]:
        grows = "train 1L for 80 steps\nstack x4 lr continue\ntrain 40 steps"
        plan = plan_source(f"warmup 10 steps\nlr_schedule wsd {setting}\n{grows}")
        text = schedule(plan, None, "late.grow", None)
        assert f"lr_schedule wsd {written}" in text
        assert plan_source(text).stages[0].lr.decay_shape == plan.stages[-1].lr.decay_shape
