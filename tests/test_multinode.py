"""Two torchrun launchers on 127.0.0.1 with c10d rendezvous (two "nodes" of one process each, the
way `srun torchrun` starts them on a cluster) train a growing schedule as one process does; a node
killed mid-run (its launcher and its worker, SIGKILL) ends the other node at once with one line, not a
hang, and the two nodes resumed go on exactly as the uninterrupted run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ops_helpers import TINY_RUN

from growdsl.cli import main
from growdsl.runtime import checkpoint

pytestmark = pytest.mark.cluster

SCHEDULE = (
    TINY_RUN
    + """seed 7
val off
checkpoint every 5 steps
growth optimizer carry
train 1L for 10 steps
stack x2
train 40 steps
"""
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_nodes(schedule: Path, data: Path, run_dir: Path, *extra: str) -> list[subprocess.Popen]:
    """Two launchers, one worker each, meeting at a c10d rendezvous on 127.0.0.1 (each in its own
    session, as on two machines)."""
    port = free_port()
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1"]
    command += ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "growdsl-test"]
    command += ["-m", "growdsl", "run", str(schedule), "--data", str(data), "--run-dir", str(run_dir), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
        )
        for _ in range(2)
    ]


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return found


def history(run: Path) -> dict[int, tuple[int, float]]:
    lines = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    return {h["step"]: (h["tokens"], h["loss"]) for h in lines if "event" not in h}


def test_two_nodes_match_one_process_and_resume_exactly_after_a_node_is_killed(data_dir, tmp_path, capsys):
    schedule = tmp_path / "s.grow"
    schedule.write_text(SCHEDULE)
    assert main(["run", str(schedule), "--data", str(data_dir), "--run-dir", str(tmp_path / "one")]) == 0
    nodes = launch_nodes(schedule, data_dir, tmp_path / "two")
    outputs = [node.communicate(timeout=240) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    assert sum(out.count("run directory:") for out, _ in outputs) == 1  # rank 0 speaks, on whichever node
    one, two = history(tmp_path / "one"), history(tmp_path / "two")
    assert len(two) == 50 and two.keys() == one.keys()
    assert all(two[s][0] == one[s][0] and abs(two[s][1] - one[s][1]) < 1e-3 for s in one)  # float32

    killed = tmp_path / "killed"
    nodes = launch_nodes(schedule, data_dir, killed)
    deadline = time.monotonic() + 120
    while len(checkpoint.committed(killed / "checkpoints")) < 4:  # stage 1, 5 steps in
        assert time.monotonic() < deadline and nodes[1].poll() is None, "no fourth checkpoint"
        time.sleep(0.01)
    for pid in children(nodes[1].pid) + [nodes[1].pid]:  # the node dies: its launcher and its worker
        os.kill(pid, signal.SIGKILL)
    begin = time.monotonic()
    _, err = nodes[0].communicate(timeout=120)  # the other node ends by itself, no hang
    assert nodes[0].returncode != 0 and time.monotonic() - begin < 60
    lines = [line for line in err.splitlines() if line.startswith("growdsl run: rank ")]
    assert lines and "another process stopped or cannot be reached" in lines[0], err[-3000:]
    nodes[1].communicate()

    nodes = launch_nodes(schedule, data_dir, killed, "--resume")
    outputs = [node.communicate(timeout=240) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    assert any("resumed from ckpt-" in out for out, _ in outputs)
    assert history(killed) == two  # the same layout: exactly the uninterrupted run
