"""A model with a mixture of experts, from the schedule's model statement: planned, trained with
torchtitan's bias-based load balancing (the load logged), resumed exactly, its baseline written."""

import json

import pytest
from ops_helpers import TINY_RUN

from growdsl.cli import main
from growdsl.lang.errors import ScheduleError
from growdsl.plan import plan_source
from growdsl.plan.baseline import experts_setting
from growdsl.plan.units import human

MOE = TINY_RUN.replace("padded", "padded experts 4 top 2 shared 1 balance 0.01")


def test_the_model_statement_names_a_mixture_and_the_plan_counts_it():
    plan = plan_source(MOE + "train 2L for 10 steps\n")
    shape = plan.stages[0].shape
    assert (shape.experts.count, shape.experts.top_k, shape.experts.shared, shape.experts.balance) == (4, 2, 1, 0.01)
    dense = plan_source(TINY_RUN + "train 2L for 10 steps\n").stages[0].shape
    ffn = 3 * 32 * 64
    assert shape.params - dense.params == 2 * ((4 + 1 - 1) * ffn + 32 * 4)  # two blocks: 4 experts + shared, router
    assert shape.active_params - dense.params == 2 * ((2 + 1 - 1) * ffn + 32 * 4)
    assert plan.stages[0].flops_per_token == shape.flops_per_token(32)
    from growdsl.plan.render import render_plan

    assert (
        f"experts        {human(shape.active_params)} of the {human(shape.params)} parameters a token"
        in render_plan(plan)
    )
    for text, message in [
        ("model tiny experts 4 top 5\ntrain 2L for 10 steps", "top 5 of 4 experts"),
        ("model tiny experts 4 top 2 every 3\ntrain 2L for 10 steps", "no block holds them"),
        ("model tiny experts 4 top 2\ntrain 2L for 10 steps with tp 2", "tensor-parallel"),
        ("model tiny experts 4 top 2\ntrain 2L for 10 steps\nstack x2\ntrain 10 steps", "grows dense models"),
    ]:
        with pytest.raises(ScheduleError) as e:
            plan_source(text)
        assert message in e.value.errors[0].message


def test_a_mixture_trains_balances_and_resumes_exactly(data_dir, tmp_path):
    schedule = tmp_path / "moe.grow"
    schedule.write_text(MOE + "val every 4 steps\nval tokens 512\ncheckpoint every 4 steps\ntrain 2L for 8 steps\n")
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert main(["run", str(schedule), "--data", str(data_dir), "--run-dir", str(whole)]) == 0
    assert main(["run", str(schedule), "--data", str(data_dir), "--run-dir", str(stopped), "--until", "5"]) == 0
    assert main(["run", str(schedule), "--data", str(data_dir), "--run-dir", str(stopped), "--resume"]) == 0

    def history(run):
        return [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]

    steps = [r for r in history(whole) if "event" not in r]
    assert [r["loss"] for r in steps] == [r["loss"] for r in history(stopped) if "event" not in r]  # the bias too
    assert all(r["expert_load_max"] >= 1 for r in steps)  # the busiest expert against the mean, logged
    from growdsl.eval.checkpoints import load

    bias = load(whole).model.layers["0"].moe.expert_bias
    assert bias.abs().sum() > 0 and abs(bias.sum().item()) < 1e-6  # it moved, its moves summing to zero


def test_a_mixture_written_as_the_model_statement_says_it_plans_back_to_itself():
    """What a baseline writes of a model with experts (growdsl.plan.baseline) reads back as the same model."""
    moe = plan_source(MOE + "train 2L for 10 steps\n").stages[0].shape
    text = experts_setting(moe.experts)
    assert text == " experts 4 top 2 shared 1 balance 0.01" and experts_setting(None) == ""
    again = plan_source(f"model llama dim 32 heads 2 ffn 64 vocab 400 padded{text}\ntrain 2L for 10 steps")
    assert again.stages[0].shape == moe
