"""The trainer: a schedule with the depth operators and two width ones runs end to end on real tokens, the loss falls
and no stage breaks training, growth checks hold, and the data stream never re-reads what the base saw."""

import pytest
import torch
from ops_helpers import TINY_RUN

from growdsl.plan import plan_source
from growdsl.runtime.trainer import RunError, Trainer

SCHEDULE = (
    TINY_RUN
    + """seed 3
train 1L for 40 steps
stack x2
train 40 steps
stack x2 init zero
train 40 steps
stack layers "1234-4" init random ramp 5 steps
train 40 steps
stack x2 init learn 3 steps at lr 1e-2
train 40 steps
widen dim 64 init direct
train 40 steps
widen dim 128 init hyperclone
train 20 steps
"""
)


@pytest.fixture(scope="module")
def run(data_dir):
    plan = plan_source(SCHEDULE)
    lines = []
    return plan, Trainer(plan, data_dir, log=lines.append, log_every=20).run(), lines


def test_every_stage_trains_and_its_loss_falls(run):
    """The loss falls over the run, and no stage breaks training: a stage ends no more than noise above
    where it began (from stage 2 on this tiny model sits on a plateau near 2.45, steps varying by ±0.1)."""
    plan, logs, _ = run
    assert [s.shape.n_layers for s in plan.stages] == [1, 2, 4, 5, 10, 10, 10]
    means = [(sum(log.losses[:5]) / 5, sum(log.losses[-5:]) / 5) for log in logs]
    assert means[0][1] < means[0][0] - 2 and means[-1][1] < means[0][1]
    for index, (first, last) in enumerate(means):
        assert last < first + 0.1, (index, first, last)


def test_growth_checks_hold_their_guarantees(run):
    plan, logs, lines = run
    checks = [c for log in logs for c in log.growth_checks]
    assert len(checks) == 6
    assert checks[1].startswith("preserved") and checks[2].startswith("preserved")  # zero, random at mask 0
    assert checks[5].startswith("preserved")  # hyperclone, noise and all
    assert any("growth map (line 14) trained for 3 steps" in line for line in lines)


def test_the_stream_continues_exactly_where_each_stage_stopped(run):
    plan, logs, _ = run
    tokens = 0
    for stage, log in zip(plan.stages, logs):
        tokens += sum(g.learn.tokens for g in stage.growths if g.learn)
        assert log.data_position_at_start == tokens, stage.index
        tokens += stage.tokens


def test_a_vocab_smaller_than_the_tokenizer_is_refused(data_dir):
    plan = plan_source(SCHEDULE.replace("vocab 400", "vocab 300"))
    with pytest.raises(RunError, match=r"tokenizer has \d+ tokens but the model.s vocab is 300"):
        Trainer(plan, data_dir)


def test_run_command_writes_a_run_directory(data_dir, tmp_path, capsys):
    from growdsl.cli import main

    schedule = tmp_path / "s.grow"
    schedule.write_text(SCHEDULE.split("stack x2 init zero")[0])  # 1 -> 2 layers
    run_dir = tmp_path / "run"
    assert main(["run", str(schedule), "--data", str(data_dir), "--run-dir", str(run_dir)]) == 0
    out = capsys.readouterr().out
    summary = "stage 1: 2 layers, 40 steps in "
    assert f"run directory: {run_dir}" in out and summary in out
    assert "(means of its first and last 5 steps); validation loss" in out.split(summary)[1].splitlines()[0]
    assert (run_dir / "schedule.grow").read_text() == schedule.read_text()
    log = (run_dir / "log.txt").read_text()
    assert "growth (line 8): depth direct" in log and summary in log  # the summary is in the log too
    from growdsl.plan.plan import Plan

    plan = Plan.from_json((run_dir / "plan.json").read_text())
    assert len(plan.stages) == 2
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    assert {
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "train/tokens_per_s",
        "train/memory_gib",
        "loss_vs/tokens",
        "loss_vs/gflops",
    } <= set(events.Tags()["scalars"])
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == list(range(1, 81))
    gflops = [e.step for e in events.Scalars("loss_vs/gflops")]
    assert gflops == sorted(gflops) and gflops[-1] == plan.totals.flops // 10**9  # base compute counted
    tokens = [e.step for e in events.Scalars("loss_vs/tokens")]
    assert tokens[-1] == plan.totals.tokens
    assert "growth/text_summary" in events.Tags()["tensors"]
    # validation: 80 steps -> every 4 (25 points) and at the stage ends, on 16 sequences (the floor)
    assert [e.step for e in events.Scalars("val/loss")] == list(range(4, 81, 4))
    assert {"val_vs/tokens", "val_vs/gflops", "val/val_flops", "val/seconds"} <= set(events.Tags()["scalars"])
    import json

    vals = [r for r in map(json.loads, (run_dir / "history.jsonl").read_text().splitlines()) if r.get("event") == "val"]
    assert {r["val_tokens"] for r in vals} == {16 * 32} and len({r["val_data"] for r in vals}) == 1
    assert vals[-1]["flops"] == plan.totals.flops and vals[-1]["val_flops"] == plan.totals.val_flops  # counted apart
    # data that is not prepared data: invalid input (exit 1), as `plan --data` says it
    assert main(["run", str(schedule), "--data", str(tmp_path), "--run-dir", str(tmp_path / "run2")]) == 1
    assert main(["plan", str(schedule), "--data", str(tmp_path)]) == 1
    assert capsys.readouterr().err.count("not a prepared data folder") == 2
    assert not (tmp_path / "run2").exists()


def test_run_resume_on_a_finished_run_has_nothing_left(data_dir, tmp_path, capsys):
    from growdsl.cli import main

    schedule = tmp_path / "s.grow"
    schedule.write_text(SCHEDULE.split("stack x2 init zero")[0])
    run_dir = tmp_path / "run"
    assert main(["run", str(schedule), "--data", str(data_dir), "--run-dir", str(run_dir)]) == 0
    assert (run_dir / "checkpoints").is_dir()
    capsys.readouterr()
    assert main(["run", str(schedule), "--data", str(data_dir), "--run-dir", str(run_dir), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resumed from ckpt-" in out and "stage 1 done" in out and "the run is already complete" in out


def test_progress_line_redraws_in_place_with_eta_and_ends_with_a_newline():
    import io

    from growdsl.runtime.progress import StageProgress

    out, now = io.StringIO(), [0.0]
    bar = StageProgress(out, width=10, every=1.0, clock=lambda: now[0])
    bar.update(1, 25, 100, 25 * 1024, 5.25, rate=1024.0)  # 1 step a second: 75 s to go
    bar.update(1, 26, 100, 26 * 1024, 5.20, rate=1024.0)  # within the second: not redrawn
    assert out.getvalue() == "\r\x1b[Kstage 1 [##........] 25/100  25.6K tokens  loss 5.2500  1,024 tok/s  ETA 0:01:15"
    bar.clear()
    now[0] = 5.0
    bar.update(1, 100, 100, 100 * 1024, 4.0, rate=1024.0)
    assert out.getvalue().endswith(
        "\r\x1b[K\r\x1b[Kstage 1 [##########] 100/100  102K tokens  loss 4.0000  1,024 tok/s  ETA 0:00:00\n"
    )


def test_a_model_that_cannot_fit_is_refused_before_it_is_built(data_dir, monkeypatch):
    from growdsl.runtime import inputs

    monkeypatch.setattr(inputs, "free_memory_bytes", lambda device: 2**30)  # 1 GiB free
    plan = plan_source("model 1.1B vocab 32000 padded\ntrain 6L for 10 steps\nstack x4\ntrain 10 steps")
    with pytest.raises(RunError) as refused:
        Trainer(plan, data_dir)
    # 0.37B params x 16 bytes; 1024 x 2048 tokens a step in float32 on one process
    assert str(refused.value).startswith("stage 0 (line 2) needs about 2854.1 GiB a process (5.9 GiB of weights")
    assert "set a smaller micro_batch or `ac full`" in str(refused.value)


BOUNDARY = (
    TINY_RUN
    + """seed 3
train 2L for 12 steps
train 12 steps{settings}
"""
)


def test_a_stage_that_only_changes_parallelism_is_laid_out_again(data_dir):
    plain = Trainer(plan_source(BOUNDARY.format(settings="")), data_dir, log=lambda _: None).run()
    lines = []
    trainer = Trainer(plan_source(BOUNDARY.format(settings=" with ac full")), data_dir, log=lines.append)
    logs = trainer.run()
    assert any("parallelism now" in line and "ac full" in line for line in lines)
    assert sum("CheckpointWrapper" in type(m).__name__ for m in trainer.model.modules()) == 2  # one per block
    assert [log.losses for log in logs] == [log.losses for log in plain]  # same weights, same AdamW state


def test_mixed_precision_computes_in_bf16_over_float32_weights(data_dir):
    """The GPU default (bf16 autocast, float32 master weights), run on the CPU."""
    plan = plan_source(BOUNDARY.format(settings=""))
    exact = Trainer(plan, data_dir, log=lambda _: None).run()
    trainer = Trainer(plan, data_dir, log=lambda _: None, mixed_precision=True)
    mixed = trainer.run()
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}
    a = [x for log in exact for x in log.losses]
    b = [x for log in mixed for x in log.losses]
    assert a != b  # bf16 compute did happen
    assert max(abs(x - y) / x for x, y in zip(a, b)) < 0.02
    assert sum(b[-3:]) < sum(b[:3])


def test_validation_loss_is_measured_on_the_fixed_held_out_sequences(data_dir):
    from growdsl.plan.plan import validation_steps
    from growdsl.records.data_folder import read_meta
    from growdsl.runtime.stream import HeldOut

    plan = plan_source(BOUNDARY.format(settings="").replace("seed 3", "seed 3\nval every 5 steps\nval tokens 200"))
    trainer = Trainer(plan, data_dir, log=lambda _: None)
    logs = trainer.run()
    assert [s for s, _ in logs[0].val_losses] == list(validation_steps(0, 12, 5)) == [5, 10, 12]
    assert [s for s, _ in logs[1].val_losses] == list(validation_steps(12, 12, 5)) == [15, 20, 24]
    x, y = HeldOut(data_dir / "val.bin", read_meta(data_dir).dtype).sequences(200, 32)
    assert x.shape == (6, 32)  # 200 tokens: six whole 32-token sequences
    with torch.no_grad():
        direct = torch.nn.functional.cross_entropy(trainer.model(x).flatten(0, 1), y.flatten()).item()
    assert logs[1].val_losses[-1][1] == pytest.approx(direct, rel=1e-6)
    assert logs[1].val_losses[-1][1] < logs[0].val_losses[0][1]  # it learns
    assert trainer.val_flops == 6 * (6 * 32 * plan.stages[0].flops_per_token // 3) == plan.totals.val_flops


def test_a_later_stage_whose_sequences_the_held_out_split_cannot_hold_is_refused_up_front(data_dir):
    from growdsl.records.data_folder import read_meta

    seq = 2 * read_meta(data_dir).val_tokens
    plan = plan_source(BOUNDARY.format(settings=f" with seq {seq}, batch 1 seqs"))
    with pytest.raises(RunError, match=rf"stage 1 \(line 8\) validates on {seq}-token sequences"):
        Trainer(plan, data_dir)


def test_resume_reads_the_data_the_run_started_on_and_refuses_another_tokenizer(data_dir, tmp_path, capsys):
    import json

    from growdsl.cli import main
    from growdsl.data.prepare import prepare

    schedule = tmp_path / "s.grow"
    schedule.write_text(BOUNDARY.format(settings=""))
    run = tmp_path / "run"
    assert main(["run", str(schedule), "--data", str(data_dir), "--run-dir", str(run)]) == 0
    assert json.loads((run / "run.json").read_text())["data"] == str(data_dir.resolve())
    capsys.readouterr()
    assert main(["run", str(schedule), "--run-dir", str(run), "--resume"]) == 0  # no --data: the run's own
    assert "the run is already complete" in capsys.readouterr().out
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "t.txt").write_text("a different corpus, a different tokenizer\n\n" * 400)
    (tmp_path / "other" / "u.txt").write_text("and a second document for the held-out split\n\n" * 400)
    prepare([tmp_path / "other"], tmp_path / "other-data", vocab_size=300)
    assert main(["run", str(schedule), "--data", str(tmp_path / "other-data"), "--run-dir", str(run), "--resume"]) == 2
    assert "its tokenizer, its corpus and its number of training tokens differ" in capsys.readouterr().err


def test_non_finite_training_stops_before_any_checkpoint_holds_it(data_dir, tmp_path, capsys):
    from growdsl.cli import main
    from growdsl.eval import export
    from growdsl.eval.checkpoints import load
    from growdsl.ops.check import non_finite

    schedule = tmp_path / "s.grow"
    schedule.write_text(TINY_RUN + "lr 1e3\ncheckpoint every 1 steps\nval off\ntrain 2L for 8 steps\n")
    run_dir = tmp_path / "run"
    assert main(["run", str(schedule), "--data", str(data_dir), "--run-dir", str(run_dir)]) == 1
    said = capsys.readouterr().out
    assert "not finite" in said or "became nan" in said or "became inf" in said, said
    kept = sorted(p for p in (run_dir / "checkpoints").iterdir() if not p.name.endswith(".partial"))
    assert kept, "the steps before the blow-up are checkpointed"
    for ckpt in kept:
        assert non_finite(load(ckpt).model) is None, ckpt.name  # no checkpoint holds a NaN
    trained = load(kept[-1])
    with torch.no_grad():
        next(trained.model.parameters()).view(-1)[0] = float("nan")
    original, export.load = export.load, lambda path: trained
    try:
        with pytest.raises(export.ExportError, match="non-finite weights"):
            export.export_hf(run_dir, tmp_path / "hf")
    finally:
        export.load = original
    assert not (tmp_path / "hf").exists()


def test_compile_survives_a_depth_growth_and_its_checkpoints_export(data_dir, tmp_path, monkeypatch, capsys):
    """`compile on` wraps every block (torch.compile's `_orig_mod.`): the growth, the checkpoints and
    the export see plain names, and the losses are those of the run without compile."""
    from growdsl.cli import main
    from growdsl.eval.export import export_hf
    from growdsl.runtime import checkpoint, distributed

    monkeypatch.setattr(distributed, "COMPILE_BACKEND", "eager")  # the same wrapping, without inductor's minutes
    text = TINY_RUN + "seed 3\nval off\ngrowth optimizer carry\ntrain 1L for 4 steps\nstack x2\ntrain 4 steps\n"
    plain = Trainer(plan_source(text), data_dir, log=lambda _: None).run()
    schedule = tmp_path / "s.grow"
    schedule.write_text(text.replace("seed 3\n", "seed 3\ncompile on\n"))
    run_dir = tmp_path / "run"
    assert main(["run", str(schedule), "--data", str(data_dir), "--run-dir", str(run_dir), "--log-every", "1"]) == 0
    logged = [
        float(line.split("loss ")[1].split()[0]) for line in capsys.readouterr().out.splitlines() if " step " in line
    ]
    assert logged == pytest.approx([x for log in plain for x in log.losses], abs=1e-4)  # the log's 4 decimals
    newest = run_dir / "checkpoints" / "ckpt-000003"
    assert not any("_orig_mod" in name for name in checkpoint.read_progress(newest).optimizer_names)
    assert (export_hf(newest, tmp_path / "hf") / "model.safetensors").is_file()


def test_one_process_trains_a_sharded_schedule_unsharded_and_says_so(data_dir):
    """`tp`, `dp_*` name how many processes a stage wants: one process trains the same schedule
    unsharded (with activation checkpointing too), the same numbers, and says so once."""
    plain = Trainer(plan_source(BOUNDARY.format(settings="")), data_dir, log=lambda _: None).run()
    lines = []
    sharded = plan_source(BOUNDARY.format(settings=" with tp 2, dp_shard 4, ac full"))
    logs = Trainer(sharded, data_dir, log=lines.append).run()
    assert [log.losses for log in logs] == [log.losses for log in plain]
    notes = [line for line in lines if line.startswith("note: one process trains the schedule unsharded")]
    assert notes == [
        "note: one process trains the schedule unsharded (tp 2, dp_replicate 1, dp_shard 4 take "
        "effect under torchrun with that many processes)"
    ]


class _Recorded:
    """Metrics that keep what the trainer reports."""

    def __init__(self):
        self.steps = []

    def step(self, step, tokens, flops, **scalars):
        self.steps.append(scalars)

    def validation(self, *args, **kwargs):
        pass

    def growth(self, *args, **kwargs):
        pass


def test_mfu_on_a_gpu_is_the_models_flops_over_every_devices_peak(data_dir, monkeypatch):
    """The GPU branch of MFU on the CPU: with a device peak (torchtitan's table on a GPU; 1e9 FLOP/s
    here) every step reports tokens/s x FLOPs per token / (peak x processes)."""
    from growdsl.runtime import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "peak_flops", lambda device: 1e9)
    plan = plan_source(BOUNDARY.format(settings=""))
    recorded = _Recorded()
    Trainer(plan, data_dir, log=lambda _: None, metrics=recorded).run()
    per_token = [plan.stages[0].flops_per_token] * 12 + [plan.stages[1].flops_per_token] * 12
    assert len(recorded.steps) == 24
    for scalars, flops in zip(recorded.steps, per_token):
        assert scalars["mfu"] == pytest.approx(scalars["tokens_per_s"] * flops / 1e9)
        assert scalars["memory_gib"] > 0


def test_processes_on_gpus_join_over_nccl_with_the_runs_timeout(monkeypatch):
    """The GPU branch of the process group on the CPU: each process drives the GPU of its local rank
    and joins over NCCL with `--timeout`."""
    from datetime import timedelta

    import torch.distributed as dist

    from growdsl.runtime import distributed

    joined, devices = {}, []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", devices.append)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, timeout: joined.update(b=backend, t=timeout))
    monkeypatch.setattr(dist, "get_rank", lambda: 5)
    monkeypatch.setattr(dist, "get_world_size", lambda: 8)
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_RANK", "1")
    world = distributed.from_environment(timedelta(minutes=7))
    assert joined == {"b": "nccl", "t": timedelta(minutes=7)} and devices == [1]
    assert (world.rank, world.size, world.device) == (5, 8, torch.device("cuda", 1))
