"""Every layout a schedule can ask for, on CPU processes (gloo), against one process: tensor
parallel (tp 2), FSDP x TP (dp_shard 2 x tp 2) and HSDP (dp_replicate 2 x dp_shard 2) train a
schedule that grows in depth and then in width with carried AdamW state (its vocab splitting
unevenly), and their losses, gradient norms and validation losses equal one process's (float64, to
1e-9: only the order of sums differs). No checkpoint folder is given, so nothing re-lays the model
out between a growth and its training. A checkpoint written under one layout resumes under another
(DCP reshards)."""

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ops_helpers import TINY_RUN

from growdsl.plan import plan_source
from growdsl.plan.data import run_data
from growdsl.runtime import distributed
from growdsl.runtime.distributed import World, close
from growdsl.runtime.loss import cross_entropy, loss_parallel
from growdsl.runtime.trainer import Trainer

# vocab 401: the head's rows do not split evenly over tp 2, nor over dp_shard 2 x tp 2 (strided shards)
SCHEDULE = (
    TINY_RUN.replace("vocab 400", "vocab 401")
    + """seed 7
val every 3 steps
growth optimizer carry
{layout}
train 1L for 6 steps
stack x2
train 6 steps
widen dim 64
train 6 steps
"""
)


def _train(schedule: str, data, world=World(), checkpoints=None, resume=False, dtype="float64") -> dict:
    plan = plan_source(schedule)
    trainer = Trainer(
        plan,
        run_data(plan, Path, Path(data)),
        log=lambda _: None,
        world=world,
        checkpoint_dir=Path(checkpoints) if checkpoints else None,
        resume=resume,
        dtype=getattr(torch, dtype),
    )
    logs = trainer.run()
    weights = sorted({str(p.dtype) for p in trainer.model.parameters()})
    x = trainer.probe
    with loss_parallel(trainer.layouts[-1]):
        loss = cross_entropy(trainer.model, x, x.roll(-1, 1), trainer.mixed)  # whole sequences: tp splits them in two
    return {
        "mixed": trainer.mixed,
        "loss_dtype": str(loss.dtype),
        "weights": weights,
        "losses": [log.losses for log in logs],
        "grad_norms": [log.grad_norms for log in logs],
        "val": [[v for _, v in log.val_losses] for log in logs],
        "checks": [log.growth_checks for log in logs],
    }


def _worker(rank: int, size: int, init: str, schedule: str, data: str, out: str, checkpoints, resume, dtype) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=size)
    torch.set_num_threads(1)
    try:
        world = World(rank, size)
        plan = plan_source(schedule)
        distributed.parallel_dims(distributed.layout(plan.stages[0].training.parallel, world), world)
        groups = len(dist.distributed_c10d._world.pg_map)  # the process groups of the run's one layout
        result = _train(schedule, data, world, checkpoints, resume, dtype)
        result["new_groups"] = len(dist.distributed_c10d._world.pg_map) - groups  # by its growths: none
        if rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        close()


def spawn(size: int, schedule: str, data, checkpoints=None, resume=False, dtype="float64") -> dict:
    """What rank 0 of `size` processes trained."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out.json")
        where = checkpoints and str(checkpoints)
        args = (size, os.path.join(tmp, "init"), schedule, str(data), out, where, resume, dtype)
        mp.spawn(_worker, args=args, nprocs=size)
        return json.loads(Path(out).read_text())


def assert_same(many: dict, one: dict, keys=("losses", "grad_norms", "val")) -> None:
    for key in keys:
        assert len(many[key]) == len(one[key])
        for a, b in zip(many[key], one[key]):
            assert len(a) == len(b) and len(a)
            assert torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-9, atol=0), (key, a[-3:], b[-3:])


@pytest.fixture(scope="module")
def one_process(data_dir) -> dict:
    return _train(SCHEDULE.format(layout=""), str(data_dir))


@pytest.mark.parametrize(
    "size, layout",
    [
        (2, "tp 2"),
        pytest.param(4, "dp_shard 2\ntp 2", marks=pytest.mark.cluster),
        pytest.param(4, "dp_replicate 2\ndp_shard 2", marks=pytest.mark.cluster),
    ],
    ids=["tp", "fsdp-tp", "hsdp"],
)
def test_layout_grows_in_depth_and_width_and_matches_one_process(size, layout, data_dir, one_process):
    many = spawn(size, SCHEDULE.format(layout=layout), data_dir)
    assert_same(many, one_process)
    assert many["new_groups"] == 0
    assert many["checks"][1][0].startswith("changed") and many["checks"][2][0].startswith("preserved")


@pytest.mark.cluster
def test_a_checkpoint_resumes_under_another_layout(data_dir, one_process, tmp_path):
    tp = SCHEDULE.format(layout="tp 2")
    # tp 2 -> one process: from the checkpoint right after the width growth
    spawn(2, tp, data_dir, tmp_path / "tp")
    shutil.rmtree(tmp_path / "tp" / "ckpt-000005")
    resumed = _train(tp, str(data_dir), checkpoints=str(tmp_path / "tp"), resume=True)
    assert_same(resumed, {k: one_process[k][2:] for k in ("losses", "grad_norms")}, keys=("losses", "grad_norms"))
    # one process -> tp 2: from the end of stage 0, before both growths
    _train(tp, str(data_dir), checkpoints=str(tmp_path / "one"))
    for name in ("ckpt-000002", "ckpt-000003", "ckpt-000004", "ckpt-000005"):
        shutil.rmtree(tmp_path / "one" / name)
    resumed = spawn(2, tp, data_dir, tmp_path / "one", resume=True)
    assert_same(resumed, {k: one_process[k][1:] for k in ("losses", "grad_norms")}, keys=("losses", "grad_norms"))


def test_fresh_blocks_fade_in_under_fsdp_as_on_one_process(data_dir):
    """Growths whose new units start at random behind a 0 -> 1 mask (a buffer the grown model gets
    while it has no storage yet, set once it has): under FSDP they train as on one process."""
    ramps = SCHEDULE.replace("stack x2", "stack x2 init random ramp 4 steps")
    ramps = ramps.replace("widen dim 64", "widen dim 64 init random ramp 4 steps")
    many = spawn(2, ramps.format(layout="dp_shard 2"), data_dir)
    assert_same(many, _train(ramps.format(layout=""), str(data_dir)))
    assert many["checks"][1][0].startswith("preserved") and many["checks"][2][0].startswith("preserved")


def test_mixed_bf16_under_fsdp_keeps_float32_weights_and_a_float32_loss(data_dir):
    """The GPU path on CPU processes: FSDP2's bf16 policy (`mixed bf16`) computes in bf16 over float32
    weights, and the loss is taken on logits cast back to float32."""
    mixed = spawn(2, SCHEDULE.format(layout="mixed bf16\ndp_shard 2"), data_dir, dtype="float32")
    exact = _train(SCHEDULE.format(layout="mixed off"), data_dir, dtype="float32")
    assert mixed["mixed"] and not exact["mixed"]
    assert mixed["weights"] == ["torch.float32"] and mixed["loss_dtype"] == "torch.float32"
    a, b = (torch.tensor([x for stage in run["losses"] for x in stage]) for run in (mixed, exact))
    assert not torch.equal(a, b)  # bf16 compute did happen
    assert ((a - b).abs() / b).max() < 0.01


def test_growdsl_run_with_tp_under_torchrun_evaluates_and_validates(data_dir, tmp_path):
    """The command a user types: `tp 2` on two processes, validation and in-run evaluation (lm-eval
    scores on the process of local rank 0; both processes run the model's forwards together)."""
    import subprocess
    import sys

    schedule = tmp_path / "s.grow"
    text = SCHEDULE.format(layout="tp 2").replace("val every 3 steps", "val every 3 steps\neval at end")
    schedule.write_text(text.replace("eval at end", 'eval at end\neval tasks "heldout"'))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "growdsl", "run", str(schedule), "--data", str(data_dir), "--run-dir", str(tmp_path / "run")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training on cpu, 2 processes" in done.stdout and "eval stage 2 step 6: heldout bits_per_byte" in done.stdout
    assert (tmp_path / "run" / "eval" / "stage2-step6.json").is_file()
