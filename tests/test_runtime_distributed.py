"""Two CPU processes (gloo) with FSDP2 applied by torchtitan's parallelize_llama train the same
schedule on a mixture of data folders, grow in the middle, and match the one-process run (in
float64, to 1e-9: in float32, Adam amplifies the different summation order to ~1% over 15 steps,
which would hide a real bug)."""

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from ops_helpers import TINY_RUN

from growdsl.plan import plan_source
from growdsl.plan.data import run_data
from growdsl.runtime.distributed import World
from growdsl.runtime.trainer import Trainer

SCHEDULE = (
    TINY_RUN
    + """seed 7
growth optimizer carry
train 1L for 15 steps
stack x2 init zero
train 15 steps
"""
)


def mixed(folders) -> str:
    """SCHEDULE on three folders, each stage its own mixture."""
    a, b, c = folders
    return SCHEDULE.replace("train 1L", f'data "{a}" 0.5 + "{b}" 0.2 + "{c}" 0.3\ntrain 1L').replace(
        "train 15 steps\n", f'train 15 steps with data "{a}" 1 + "{c}" 3\n'
    )


def _worker(rank: int, init: str, schedule: str, out: str, checkpoints: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        world = World(rank, 2)
        lines = []
        plan = plan_source(schedule)
        logs = Trainer(
            plan,
            run_data(plan, Path),
            log=lines.append,
            world=world,
            checkpoint_dir=Path(checkpoints),
            dtype=torch.float64,
        ).run()
        if rank == 0:
            with open(out, "w") as f:
                json.dump(
                    {
                        "losses": [log.losses for log in logs],
                        "checks": [log.growth_checks for log in logs],
                        "lines": lines,
                        "positions": [log.data_position_at_start for log in logs],
                    },
                    f,
                )
    finally:
        dist.destroy_process_group()


def test_two_processes_with_fsdp_grow_and_match_one(mixture_dirs, tmp_path):
    out = tmp_path / "two.json"
    schedule = mixed(mixture_dirs)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), schedule, str(out), str(tmp_path / "ckpt")), nprocs=2)
    two = json.loads(out.read_text())
    plan = plan_source(schedule)
    one = Trainer(plan, run_data(plan, Path), log=lambda _: None, dtype=torch.float64).run()
    for a, b in zip(two["losses"], (log.losses for log in one)):  # float64: only summation order differs
        assert torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-9, atol=0), (a[-3:], b[-3:])
    assert two["positions"] == [log.data_position_at_start for log in one]
    assert two["checks"][1][0].startswith("preserved")  # depth zero, on sharded weights
    assert (tmp_path / "ckpt" / "ckpt-000003" / "progress.json").exists()  # sharded checkpoints, committed once
    assert not list((tmp_path / "ckpt").glob("*.partial"))
    # the checkpoint taken right after the growth by two processes, resumed by one: DCP reshards it
    import shutil

    shutil.rmtree(tmp_path / "ckpt" / "ckpt-000003")
    lines = []
    resumed = Trainer(
        plan,
        run_data(plan, Path),
        log=lines.append,
        dtype=torch.float64,
        checkpoint_dir=tmp_path / "ckpt",
        resume=True,
    ).run()
    assert "resumed from ckpt-000002: stage 1 step 0" in lines[0]
    assert torch.allclose(torch.tensor(resumed[0].losses), torch.tensor(one[1].losses), rtol=1e-9, atol=0)


def test_growdsl_run_under_torchrun(data_dir, tmp_path):
    import subprocess
    import sys

    schedule = tmp_path / "s.grow"
    schedule.write_text(SCHEDULE.replace("train 15 steps\n", "train 15 steps with freeze base embeddings head\n"))
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "growdsl",
            "run",
            str(schedule),
            "--data",
            str(data_dir),
            "--run-dir",
            str(run_dir),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("run directory:") == 1 and "training on cpu, 2 processes" in done.stdout  # rank 0 speaks
    assert "growth (line 9): depth zero" in (run_dir / "log.txt").read_text()
    assert "stage 1: 2 layers, 15 steps" in done.stdout
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "ckpt-000003"
    # FSDP2 with frozen parameters: only the new block trained, and only it has optimizer state
    from growdsl.runtime import checkpoint

    names = checkpoint.read_progress(run_dir / "checkpoints" / "ckpt-000003").optimizer_names
    assert names and all(name.startswith("layers.1.") for name in names)


def _seen(rank: int, init: str, cases: dict, out: str) -> None:
    from growdsl.runtime.rundir import seen_alike

    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    try:
        said = {
            case: seen_alike(World(rank, 2), Path(dirs[rank]), folders[rank]) for case, (dirs, folders) in cases.items()
        }
        Path(f"{out}.{rank}").write_text(json.dumps(said))
    finally:
        dist.destroy_process_group()


def test_a_node_that_sees_another_run_directory_or_other_data_is_refused_before_anything_is_written(
    data_dir, mixture_dirs, tmp_path
):
    """On a cluster the run directory and the data must be the same on every node: a node whose path
    leads elsewhere (here: rank 1 given other folders) stops every rank with the same line."""
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir(), elsewhere.mkdir()
    cases = {
        "alike": ([run, run], [[data_dir], [data_dir]]),
        "run directory": ([run, elsewhere], [[data_dir], [data_dir]]),
        "data": ([run, run], [[data_dir], [mixture_dirs[1]]]),
        "missing data": ([run, run], [[data_dir], [tmp_path / "none"]]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        mp.spawn(_seen, args=(os.path.join(tmp, "init"), cases, out), nprocs=2)
        said, theirs = (json.loads(Path(f"{out}.{rank}").read_text()) for rank in (0, 1))
    assert said == theirs  # every rank says the same
    assert not list(run.iterdir()) and not list(elsewhere.iterdir())  # the probe is gone
    assert said["alike"] is None
    assert said["run directory"].startswith(f"rank 1: {elsewhere} is not the folder rank 0 writes")
    # rank 1's own path in the line: on a cluster, the one path every node was given
    assert said["data"] == (
        f"rank 1: the data {mixture_dirs[1]} differs from rank 0's (its corpus, its number of training tokens) on "
        f"this node: put it on a shared file system, or copy it alike"
    )
    assert said["missing data"].startswith(f"rank 1: the data {tmp_path / 'none'} is missing on this node")


def _refused(rank: int, init: str, folders, out: str) -> None:
    from growdsl.runtime.trainer import RunError

    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    try:
        try:
            Trainer(plan_source(SCHEDULE), folders[rank], log=lambda _: None, world=World(rank, 2))
            said = "accepted"
        except RunError as e:
            said = str(e)
        Path(f"{out}.{rank}").write_text(said)
    finally:
        dist.destroy_process_group()


def test_a_problem_one_rank_finds_before_training_stops_every_rank_with_its_line(data_dir, tmp_path):
    """Rank 1 alone cannot read the data: both ranks stop, before any collective of the model's, with
    rank 1's line (no rank waits in a collective the other never reaches)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "out")
        mp.spawn(_refused, args=(os.path.join(tmp, "init"), [data_dir, tmp_path / "gone"], out), nprocs=2)
        said = [Path(f"{out}.{rank}").read_text() for rank in (0, 1)]
    assert said[0] == said[1] and said[0].startswith(f"rank 1: {tmp_path / 'gone'}")


@pytest.mark.cluster
def test_a_tournament_under_torchrun(data_dir, tmp_path):
    """Two processes: rank 0 copies the base into each arm while the other waits; both train every run."""
    import subprocess
    import sys

    schedule = tmp_path / "t.grow"
    schedule.write_text(
        TINY_RUN + "val every 4 steps\nval tokens 512\ntrain 1L for 8 steps\n"
        "try stack x2 | stack x2 init zero for 4 steps\ntrain 10 steps\n"
    )
    folder = tmp_path / "tour"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "growdsl"]
    done = subprocess.run(
        [*command, "tournament", str(schedule), "--data", str(data_dir), "--dir", str(folder)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("rank  candidate") == 1 and "training on cpu, 2 processes" in done.stdout
    results = json.loads((folder / "tournament.json").read_text())["results"]
    assert len(results) == 2 and {r["step"] for r in results} == {12} and len({r["flops"] for r in results}) == 1
    base = (folder / "base" / "history.jsonl").read_text()
    assert all(
        (folder / arm / "history.jsonl").read_text().startswith(base) for arm in ("1-stack-x2", "2-stack-x2-init-zero")
    )


def test_two_processes_with_fsdp_upcycle_and_match_one(data_dir, tmp_path):
    """An upcycling on FSDP2 shards (Drop-Upcycling's draws the same on every rank, each keeping its shard;
    the moments carried into every expert; the routing bias moved by the counts of both ranks) trains the
    one process's losses in float64; the checkpoint two processes took right after it resumes in one."""
    schedule = (
        TINY_RUN
        + f'data "{data_dir}"\nseed 3\nval off\ntrain 2L for 5 steps\n'
        + "upcycle experts 4 top 2 shared 1 balance 0.05 init drop 0.5 optimizer carry\ntrain 6 steps\n"
    )
    out = tmp_path / "two.json"
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), schedule, str(out), str(tmp_path / "ckpt")), nprocs=2)
    two = json.loads(out.read_text())
    plan = plan_source(schedule)
    one = Trainer(plan, run_data(plan, Path), log=lambda _: None, dtype=torch.float64).run()
    for a, b in zip(two["losses"], (log.losses for log in one)):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-9, atol=0), (a[-3:], b[-3:])
    assert "guarantee none" in two["checks"][1][0]  # drop: the function changes, as declared
    import shutil

    shutil.rmtree(tmp_path / "ckpt" / "ckpt-000003")  # the last: resume from the one right after the growth
    lines = []
    resumed = Trainer(
        plan, run_data(plan, Path), log=lines.append, dtype=torch.float64, checkpoint_dir=tmp_path / "ckpt", resume=True
    ).run()
    assert "resumed from ckpt-000002: stage 1 step 0" in lines[0]
    assert torch.allclose(torch.tensor(resumed[0].losses), torch.tensor(one[1].losses), rtol=1e-9, atol=0)


@pytest.mark.cluster
@pytest.mark.parametrize("model", ["mixtral", "balanced"])
def test_a_model_with_experts_trains_under_torchrun_with_fsdp2(data_dir, tmp_path, model):
    """A model with experts (a Mixtral it starts from; one of its own, load-balanced on the counts of every
    rank), sharded by torchtitan's parallelize_llama over two gloo processes: it trains, and its loss curve
    is the one process's to float32 summation order."""
    import subprocess
    import sys

    from test_imported import hf_mixtral

    schedule = tmp_path / "m.grow"
    if model == "mixtral":
        folder = hf_mixtral(tmp_path / "mixtral")
        schedule.write_text(f'model from "{folder}"\nseq 32\nbatch 4 seqs\nwarmup 1 step\nval off\ntrain 6 steps\n')
    else:
        moe = TINY_RUN.replace("padded", "padded experts 4 top 2 balance 0.05")
        schedule.write_text(moe + "val off\ntrain 2L for 6 steps\n")
    losses = {}
    for processes in (1, 2):
        run_dir = tmp_path / f"run{processes}"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        done = subprocess.run(
            [*command, "-m", "growdsl", "run", str(schedule), "--data", str(data_dir), "--run-dir", str(run_dir)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        losses[processes] = [json.loads(line)["loss"] for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert len(losses[2]) == 6
    assert max(abs(a - b) for a, b in zip(losses[1], losses[2])) < 2e-3 * losses[1][0]
