"""`growdsl baseline`: the final model from scratch on the same FLOPs, with the final stage's settings;
refused, with the reason, where no single scratch run mirrors the schedule."""

import json
from dataclasses import replace

import pytest
from conftest import SCHEDULES
from ops_helpers import TINY_RUN

from growdsl.cli import main
from growdsl.plan import plan_file, plan_source
from growdsl.plan.baseline import BaselineError, check, planned, schedule

GROWN = [p for p in SCHEDULES if plan_file(p).totals.baseline is not None and p.name != "overrides_1.1b.grow"]


@pytest.mark.parametrize("path", GROWN, ids=lambda p: p.name)
def test_the_baseline_trains_the_final_model_on_the_same_flops_within_one_step(path):
    grown = plan_file(path)
    text = schedule(grown, grown.stages[-1].training.data, str(path), None)
    base = plan_source(text, "base.grow")
    (stage,) = base.stages
    final = grown.stages[-1]
    assert stage.shape == final.shape and not stage.growths
    per_step = stage.flops_per_token * stage.training.tokens_per_step
    assert abs(base.totals.flops - grown.totals.flops) <= per_step / 2  # the nearest whole step
    assert base.totals.flops == grown.totals.baseline.flops and stage.steps == grown.totals.baseline.steps
    same = {
        "seq_len",
        "batch_seqs",
        "micro_batch",
        "seed",
        "data",
        "optimizer",
        "parallel",
        "val_every_steps",
        "val_tokens",
        "eval_every_steps",
        "eval_at_end",
        "eval_tasks",
        "checkpoint_every_steps",
    }
    assert {k: getattr(stage.training, k) for k in same} == {k: getattr(final.training, k) for k in same}
    lr, want = stage.lr, final.lr
    assert (lr.kind, lr.max_lr, lr.min_lr, lr.warmup_steps) == (want.kind, want.max_lr, want.min_lr, want.warmup_steps)
    assert (lr.start_step, lr.total_steps) == (0, stage.steps)  # its own schedule over the whole run


def test_a_schedule_without_growth_is_refused(tmp_path, capsys):
    path = tmp_path / "scratch.grow"
    path.write_text("model tiny\ntrain 4L for 100 steps\n")
    assert main(["baseline", str(path), "-o", str(tmp_path / "b.grow")]) == 1
    assert "nothing grows in it: it already trains its final model from scratch" in capsys.readouterr().err
    assert not (tmp_path / "b.grow").exists()  # a refused command writes nothing


def test_stages_after_the_growth_that_disagree_are_refused_with_their_lines():
    plan = plan_source(
        "model tiny\ntrain 2L for 10 steps\nstack x2\ntrain 10 steps\ntrain 10 steps with batch 16 seqs\n"
    )
    with pytest.raises(BaselineError, match=r"different batch \(lines 4 and 5\)"):
        schedule(plan, None, "g.grow", None)


def test_an_existing_file_is_not_overwritten_without_force(tmp_path, capsys):
    grown, out = tmp_path / "g.grow", tmp_path / "b.grow"
    grown.write_text("model tiny\ntrain 2L for 10 steps\nstack x2\ntrain 10 steps\n")
    out.write_text("mine")
    assert main(["baseline", str(grown), "-o", str(out)]) == 2
    assert "exists; give --force" in capsys.readouterr().err and out.read_text() == "mine"
    assert main(["baseline", str(grown), "-o", str(out), "--force"]) == 0
    assert "train 4L for" in out.read_text()


def test_the_data_path_still_names_the_same_folder_from_where_the_baseline_is_written(tmp_path):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "schedules").mkdir()
    grown = tmp_path / "schedules" / "g.grow"
    grown.write_text('model tiny\ndata "../corpus"\ntrain 2L for 10 steps\nstack x2\ntrain 10 steps\n')
    out = tmp_path / "elsewhere" / "deeper" / "b.grow"
    assert main(["baseline", str(grown), "-o", str(out)]) == 0
    data = plan_file(out).stages[0].training.data
    assert (out.parent / data).resolve() == (tmp_path / "corpus").resolve()


def test_the_baseline_runs_and_spends_what_the_grown_run_spends(data_dir, tmp_path, capsys):
    grown = tmp_path / "g.grow"
    grown.write_text(TINY_RUN + f'data "{data_dir}"\ntrain 1L for 30 steps\nstack x2\ntrain 30 steps\n')
    out = tmp_path / "b.grow"
    assert main(["baseline", str(grown), "-o", str(out)]) == 0
    assert main(["run", str(out), "--run-dir", str(tmp_path / "run")]) == 0
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    spent = max(r["flops"] for r in history if "event" not in r)
    plan = plan_file(grown)
    per_step = plan.stages[-1].flops_per_token * plan.stages[-1].training.tokens_per_step
    assert abs(spent - plan.totals.flops) <= per_step / 2
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("folder", ["study", "study/gpu"])
def test_every_arm_of_the_study_spends_the_scratch_runs_flops(folder):
    from conftest import ROOT

    arms = sorted((ROOT / "schedules" / folder).glob("*.grow"))
    assert {p.stem for p in arms} >= {"scratch", "gstack", "zero", "random", "learn", "interpolation", "width"}
    scratch = plan_file(ROOT / "schedules" / folder / "scratch.grow")
    (stage,) = scratch.stages
    step = stage.flops_per_token * stage.training.tokens_per_step
    for path in arms:
        plan = plan_file(path)
        assert abs(plan.totals.flops - scratch.totals.flops) <= step, path.name
        assert plan.stages[-1].lr.max_lr == stage.lr.max_lr
        if path.stem != "small_wsd":  # late growth's control: its small model never grows, by design
            assert replace(plan.stages[-1].shape, experts=None) == stage.shape, path.name  # upcycled: its dense model
    gstack = plan_file(ROOT / "schedules" / folder / "gstack.grow")  # scratch is gstack's baseline, as written
    assert scratch.totals.flops == gstack.totals.baseline.flops
    if folder == "study":  # the dense control of the upcycling arms is upcycle.grow's, as written
        from growdsl.plan.baseline import continued

        upcycle = plan_file(ROOT / "schedules" / folder / "upcycle.grow")
        assert plan_file(ROOT / "schedules" / folder / "dense.grow").totals.flops == continued(upcycle).flops


def test_run_with_baseline_trains_both_and_prints_the_speedup_at_the_final_loss(data_dir, tmp_path, capsys):
    grown = tmp_path / "g.grow"
    grown.write_text(TINY_RUN + "val every 5 steps\ntrain 1L for 20 steps\nstack x2\ntrain 20 steps\n")
    run = tmp_path / "run"
    assert main(["run", str(grown), "--data", str(data_dir), "--run-dir", str(run), "--baseline"]) == 0
    out = capsys.readouterr().out
    steps = plan_file(grown).totals.baseline.steps
    assert steps == 33  # 20 + 20 steps of the 1L at 151,104 FLOPs a token / 225,216 of the 2L: 33.4
    assert (run / "baseline.grow").read_text().rstrip().endswith(f"train 2L for {steps} steps")
    assert (run / "baseline" / "history.jsonl").exists() and (run / "compare" / "loss_vs_flops.png").exists()
    assert "loss: validation loss (512 held-out tokens)" in out
    last = out.rstrip().splitlines()[-1]
    assert last.startswith("run reached baseline's final validation loss") or last.startswith("run did not reach")


def test_run_with_baseline_refuses_a_schedule_without_growth_before_training(data_dir, tmp_path, capsys):
    path = tmp_path / "s.grow"
    path.write_text(TINY_RUN + "train 1L for 20 steps\n")
    assert main(["run", str(path), "--data", str(data_dir), "--run-dir", str(tmp_path / "run"), "--baseline"]) == 1
    assert "nothing grows in it" in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", ["folder", "the schedule itself", "under a file"])
def test_an_output_that_cannot_be_the_baseline_is_refused_and_nothing_is_written(tmp_path, capsys, case):
    grown = tmp_path / "g.grow"
    source = "model tiny\ntrain 2L for 10 steps\nstack x2\ntrain 10 steps\n"
    grown.write_text(source)
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("mine")
    out = {"folder": tmp_path / "dir", "the schedule itself": grown, "under a file": tmp_path / "file" / "b.grow"}[case]
    assert main(["baseline", str(grown), "-o", str(out), "--force"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("growdsl baseline: ") and "Traceback" not in err
    assert grown.read_text() == source and (tmp_path / "file").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file", "g.grow"] and not any(
        (tmp_path / "dir").iterdir()
    )


def test_the_baseline_reads_the_data_the_run_reads_and_refuses_stages_naming_other_data():
    plan = plan_source('model tiny\ndata "a"\ntrain 2L for 10 steps\nstack x2\ntrain 10 steps with data "b"\n')
    with pytest.raises(BaselineError, match=r"its stages read different data \(lines 3 and 5\)"):
        schedule(plan, [("a", None)], "g.grow", None)
    mixed = plan_source('model tiny\ndata "a" 0.7 + "b" 0.3\ntrain 2L for 10 steps\nstack x2\ntrain 10 steps\n')
    text, written = planned(mixed, [("../a", 0.7), ("../b", 0.3)], "g.grow", "out/base.grow")
    assert 'data "../a" 0.7 + "../b" 0.3\n' in text
    assert written.stages[0].training.mix == (("../a", 0.7), ("../b", 0.3))
    mixed = plan_source(
        'model tiny\ndata "a" 0.7 + "b" 0.3\ntrain 2L for 10 steps\nstack x2\ntrain 10 steps with data "a"\n'
    )
    with pytest.raises(BaselineError, match=r"its stages read different data \(lines 3 and 5\)"):
        check(mixed)


def test_run_with_baseline_refuses_a_data_path_a_schedule_cannot_name_before_training(data_dir, tmp_path, capsys):
    import shutil

    odd = tmp_path / 'say "hi"'
    shutil.copytree(data_dir, odd)
    grown = tmp_path / "g.grow"
    grown.write_text(TINY_RUN + "train 1L for 10 steps\nstack x2\ntrain 10 steps\n")
    run = tmp_path / "run"
    assert main(["run", str(grown), "--data", str(odd), "--run-dir", str(run), "--baseline"]) == 1
    assert "holds a quote or a line break" in capsys.readouterr().err and not run.exists()
