"""A mixture of prepared sources: exact proportions at every point, deterministic, the same rows on
any number of processes, and exact after a restore (a resumed run reads what the uninterrupted read)."""

import json
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from ops_helpers import TINY_RUN

from growdsl.cli import main
from growdsl.plan import plan_source
from growdsl.plan.data import run_data
from growdsl.records.data_folder import read_meta, train_files
from growdsl.runtime import checkpoint
from growdsl.runtime.mixture import Mixture
from growdsl.runtime.stream import TokenStream
from growdsl.runtime.trainer import RunError, Trainer


@pytest.fixture
def shards(tmp_path):
    """Three sources whose tokens say which source they are: 1000s, 2000s, 3000s."""
    paths = []
    for s, n in enumerate((5000, 700, 3000), start=1):
        path = tmp_path / f"s{s}.bin"
        (np.arange(n, dtype=np.uint16) % 997 + 1000 * s).tofile(path)
        paths.append(path)
    return paths


def mixture(paths, weights=(0.5, 0.2, 0.3)):
    """A mixture of token files, or of prepared folders."""
    streams = [
        TokenStream(train_files(p, read_meta(p)), "uint16") if p.is_dir() else TokenStream(p, "uint16") for p in paths
    ]
    return Mixture(streams, list(weights))


def one_by_one(weights, drawn, n):
    """The rule as stated, in exact arithmetic: each next sequence from the source whose
    (drawn + 1) / weight is least, each weight as written."""
    out, drawn, weights = [], list(drawn), [Fraction(repr(float(w))) for w in weights]
    for _ in range(n):
        s = min((i for i, w in enumerate(weights) if w > 0), key=lambda i: ((drawn[i] + 1) / weights[i], i))
        drawn[s] += 1
        out.append(s)
    return out


def test_proportions_are_exact_to_one_sequence_at_every_point(shards):
    m = mixture(shards)
    drawn = np.zeros(3)
    for j, s in enumerate(m.assign(1000), start=1):
        drawn[s] += 1
        assert np.all(np.abs(drawn - j * np.array([0.5, 0.2, 0.3])) <= 1), j


@pytest.mark.parametrize(
    "weights", [(0.5, 0.2, 0.3), (1, 1, 1), (3, 0, 1e-3), (0.7, 0.1, 0.2), (0.123457, 0.234571, 0.345679)]
)
def test_batches_are_assigned_as_the_rule_assigns_one_sequence_at_a_time(shards, weights):
    m = mixture(shards, weights)  # the last weights take the path of Python's whole numbers
    expected = one_by_one(weights, [0, 0, 0], 3000)
    assert sum((m.assign(n) for n in (1, 7, 992, 2000)), []) == expected and m.drawn == [
        expected.count(i) for i in range(3)
    ]


def test_weights_are_taken_as_written_however_large_or_small(shards):
    seventy = mixture(shards[:2], (0.7, 0.3)).assign(1000)
    assert mixture(shards[:2], (7, 3)).assign(1000) == seventy  # 7/0.7 and 3/0.3 tie: the first folder
    assert seventy[27:30] == one_by_one((7, 3), [0, 0], 30)[27:30]
    for tiny_or_huge in (5e-324, 1e308):
        assert mixture(shards[:2], (tiny_or_huge, tiny_or_huge)).assign(6) == [0, 1, 0, 1, 0, 1]


def test_rows_come_from_their_source_front_to_back(shards):
    m = mixture(shards)
    x, _ = m.next_batch(10, 8)
    sources = [int(row[0]) // 1000 for row in x]
    assert sorted(sources) == [1] * 5 + [2] * 2 + [3] * 3
    assert [int(row[0]) for row in x if int(row[0]) // 1000 == 1] == [1000 + 8 * k for k in range(5)]
    assert m.position == 10 * 8 and [s.position for s in m.streams] == [40, 16, 24]


def test_any_number_of_processes_reads_the_same_rows(shards):
    one = mixture(shards)
    parts = [mixture(shards) for _ in range(4)]
    for _ in range(7):
        whole = one.next_batch(8, 16)[0]
        assert (
            np.concatenate([p.next_batch(8, 16, r, 4)[0].numpy() for r, p in enumerate(parts)]) == whole.numpy()
        ).all()


def test_a_restored_mixture_reads_what_the_uninterrupted_one_read(shards):
    a = mixture(shards)
    for _ in range(13):
        a.next_batch(6, 32)
    saved = a.state()
    after = [a.next_batch(6, 32)[0] for _ in range(40)]  # wraps the smallest source
    b = mixture(shards)
    b.restore(saved)
    assert all((b.next_batch(6, 32)[0] == x).all() for x in after)
    b.reweight([0, 1, 0])  # a stage of its own mixture: only source 2 from here
    x, _ = b.next_batch(4, 8)
    assert {int(v) // 1000 for v in x.flatten()} == {2}


def test_a_schedule_names_a_mixture_per_stage(errors):
    plan = plan_source(
        'model tiny layers 4\ndata "web" 0.7 + "code" 0.3\ntrain 4L for 10 steps\ntrain 10 steps with data "web"\n'
    )
    first, second = (s.training for s in plan.stages)
    assert (first.data, first.mix) == (None, (("web", 0.7), ("code", 0.3)))
    assert (second.data, second.mix) == ("web", ())
    said = [
        e.message for e in errors('model tiny layers 4\ndata "a" 1 + "b" 0.3 + "a" 1 + "c" 0\ntrain 4L for 9 steps\n')
    ]
    assert said == ['"a" is named twice in one mixture', "a source's weight must be above 0, not 0"]
    said = [e.message for e in errors('model tiny layers 4\ndata "a" + "b" 0.3\ntrain 4L for 9 steps\n')]
    assert said == ['a mixture weighs every source: "a" has no weight']


# ---- a run on a mixture --------------------------------------------------------------------------


def mixed_schedule(folders, steps=(12, 12), every=3) -> str:
    a, b, c = folders
    return TINY_RUN + (
        f'data "{a}" 0.5 + "{b}" 0.2 + "{c}" 0.3\nseed 3\ncheckpoint every {every} steps\nval off\n'
        f"train 1L for {steps[0]} steps\nstack x2\n"
        f'train {steps[1]} steps with data "{b}" 1 + "{c}" 1\n'
    )


def expected_positions(folders, plan) -> list[int]:
    """Each folder's tokens read by the end, as a fresh mixture assigns the sequences of every stage."""
    m = mixture(folders, (1, 1, 1))
    counts = np.zeros(3, dtype=int)
    for stage, weights in zip(plan.stages, run_data(plan, Path).weights):
        m.reweight(list(weights))
        np.add.at(counts, m.assign(stage.steps * stage.training.batch_seqs), 1)
    return list(counts * plan.stages[0].training.seq_len)


@pytest.fixture(scope="module")
def mixed_reference(mixture_dirs, tmp_path_factory):
    """The uninterrupted run on three folders, its loss curves and its last checkpoint's progress."""
    plan = plan_source(mixed_schedule(mixture_dirs))
    ckpts = tmp_path_factory.mktemp("mixed")
    logs = Trainer(plan, run_data(plan, Path), log=lambda _: None, checkpoint_dir=ckpts).run()
    return plan, {log.index: log.losses for log in logs}, checkpoint.read_progress(checkpoint.committed(ckpts)[0])


def test_a_run_reads_each_folder_by_its_stage_weights(mixture_dirs, mixed_reference):
    plan, _, last = mixed_reference
    assert last.positions == expected_positions(mixture_dirs, plan) and sum(last.positions) == last.position
    seqs = np.array(last.positions) // 32
    # stage 0: 48 sequences at 0.5/0.2/0.3 (24, 9.6, 14.4): 25, 9, 14; stage 1: 48 in halves of the last two
    assert list(seqs) == [25, 9 + 24, 14 + 24]


@pytest.mark.parametrize("kill", ["stage 0 step 7/12", "stage 1 step 8/12"])
def test_a_mixture_killed_mid_stage_resumes_on_exactly_the_tokens_it_would_have_read(mixed_reference, tmp_path, kill):
    plan, reference, last = mixed_reference

    def dies(line: str) -> None:
        if kill in line:
            raise KeyboardInterrupt(line)

    with pytest.raises(KeyboardInterrupt):
        Trainer(plan, run_data(plan, Path), log=dies, log_every=1, checkpoint_dir=tmp_path).run()
    logs = Trainer(plan, run_data(plan, Path), log=lambda _: None, checkpoint_dir=tmp_path, resume=True).run()
    # the checkpoint before the kill: 6 steps, 24 sequences, whose counts are no whole period of the weights
    first, step = logs[0].index, int(kill.split()[3].split("/")[0]) // 3 * 3
    assert logs[0].losses == reference[first][step:]
    assert [log.losses for log in logs[1:]] == [reference[i] for i in range(first + 1, len(plan.stages))]
    resumed = checkpoint.read_progress(checkpoint.committed(tmp_path)[0])
    assert (resumed.positions, resumed.drawn) == (last.positions, last.drawn)


def history(run: Path) -> dict[int, tuple[int, float]]:
    """Each training step's (tokens read so far, loss) in a run's history.jsonl (a step redone after a
    resume: its last line)."""
    lines = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    return {h["step"]: (h["tokens"], h["loss"]) for h in lines if "event" not in h}


def test_a_mixture_run_killed_with_sigkill_resumes_on_the_uninterrupted_tokens(mixture_dirs, tmp_path, capsys):
    schedule = tmp_path / "mix.grow"
    schedule.write_text(mixed_schedule(mixture_dirs, steps=(60, 60), every=7))
    assert main(["run", str(schedule), "--run-dir", str(tmp_path / "whole"), "--log-every", "1000"]) == 0
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "growdsl", "run", str(schedule), "--run-dir", str(killed)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(checkpoint.committed(killed / "checkpoints")) < 3 and process.poll() is None:
        assert time.monotonic() < deadline, "the run wrote no third checkpoint in two minutes"
        time.sleep(0.005)
    process.kill()
    assert process.wait() == -signal.SIGKILL, "the run ended before it was killed"
    capsys.readouterr()
    assert main(["run", str(schedule), "--run-dir", str(killed), "--resume", "--log-every", "1000"]) == 0
    assert "resumed from ckpt-" in capsys.readouterr().out
    whole, resumed = history(tmp_path / "whole"), history(killed)
    assert len(whole) == 120 and resumed == whole
    last = [checkpoint.read_progress(checkpoint.committed(r / "checkpoints")[0]) for r in (tmp_path / "whole", killed)]
    assert last[0].positions == last[1].positions and last[0].drawn == last[1].drawn
    record = json.loads((killed / "run.json").read_text())
    assert [s["data"] for s in record["sources"]] == [str(f.resolve()) for f in mixture_dirs]


def test_plan_shows_each_folder_and_its_share_of_every_stage(mixture_dirs, tmp_path, capsys):
    schedule = tmp_path / "mix.grow"
    schedule.write_text(mixed_schedule(mixture_dirs, steps=(10, 2000)))
    assert main(["plan", str(schedule)]) == 0
    out, err = capsys.readouterr()
    a, b, c = (read_meta(f).train_tokens for f in mixture_dirs)
    assert f"data {mixture_dirs[0]}: " in out and f"{a:,} training tokens" in out
    assert "stage 0 reads ~640 tokens (" in out and "50% of its mixture), from token ~0" in out
    assert "stage 1 reads ~128,000 tokens (" in out and "from token ~256" in out  # b: 20% of stage 0's 1,280
    assert "stage 1" not in out.split(f"data {mixture_dirs[1]}")[0]  # the first folder is not read in stage 1
    assert f"warning: the run reads {mixture_dirs[1]} " in err and f"{mixture_dirs[0]} " not in err
    assert main(["plan", str(schedule), "--data", str(mixture_dirs[0])]) == 1
    assert "reads a mixture; --data stands in for one folder" in capsys.readouterr().err


def test_a_mixture_of_two_tokenizers_or_a_stage_without_data_is_refused_before_training(mixture_dirs, tmp_path, capsys):
    from conftest import markov_text

    from growdsl.data.prepare import prepare

    other = tmp_path / "other"
    prepare([markov_text(tmp_path, 4, 2)], other, vocab_size=300, holdout=0.2)
    schedule = tmp_path / "mix.grow"
    schedule.write_text(mixed_schedule([mixture_dirs[0], mixture_dirs[1], other]))
    for command in ("plan", "run"):
        assert main([command, str(schedule), "--run-dir", str(tmp_path / "run")][: 2 if command == "plan" else 4]) == 1
        assert f"{other} and {mixture_dirs[0]} are tokenized by different tokenizers" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    schedule.write_text(TINY_RUN + f'train 1L for 5 steps\ntrain 5 steps with data "{mixture_dirs[0]}"\n')
    assert main(["plan", str(schedule)]) == 1
    assert "stage 0 (line 6) names no data while other stages do" in capsys.readouterr().err


def test_a_resume_on_a_mixture_checks_every_folder_it_trained_on(mixture_dirs, tmp_path, capsys):
    import shutil

    copies = []
    for i, folder in enumerate(mixture_dirs):
        copies.append(tmp_path / f"d{i}")
        shutil.copytree(folder, copies[-1])
    schedule = tmp_path / "mix.grow"
    schedule.write_text(mixed_schedule(["d0", "d1", "d2"], steps=(4, 4)))  # beside the schedule
    run = tmp_path / "run"
    assert main(["run", str(schedule), "--run-dir", str(run)]) == 0
    shutil.rmtree(copies[2])
    shutil.copytree(mixture_dirs[0], copies[2])  # other data under the third folder's name
    assert main(["run", str(schedule), "--run-dir", str(run), "--resume"]) == 2
    assert f"{copies[2]} is not the data {run} trained on (its corpus and its number of" in capsys.readouterr().err


def kill_on(fragment: str):
    def log(line: str) -> None:
        if fragment in line:
            raise KeyboardInterrupt(line)

    return log


def _interrupt():
    raise KeyboardInterrupt


def test_an_older_checkpoint_of_one_folder_refuses_a_mixture_in_the_stage_it_trained(mixture_dirs, tmp_path):
    from test_trust import remanifest

    old = plan_source(TINY_RUN + "seed 3\ncheckpoint every 3 steps\nval off\ntrain 1L for 8 steps\n")
    with pytest.raises(KeyboardInterrupt):
        Trainer(old, mixture_dirs[0], log=kill_on("step 5/8"), log_every=1, checkpoint_dir=tmp_path).run()
    ckpt = checkpoint.committed(tmp_path)[0]  # as a growdsl before mixtures wrote it
    progress = json.loads((ckpt / "progress.json").read_text())
    for key in ("positions", "drawn", "schema", "growdsl"):
        progress.pop(key)
    progress["plan_prefix"][0]["training"].pop("mix")
    (ckpt / "progress.json").write_text(json.dumps(progress))
    remanifest(ckpt)
    a, b = mixture_dirs[:2]
    new = plan_source(
        TINY_RUN + f'seed 3\ncheckpoint every 3 steps\nval off\ndata "{a}" 1 + "{b}" 1\ntrain 1L for 8 steps\n'
    )
    with pytest.raises(RunError, match="the schedule changed in stage 0"):
        Trainer(new, run_data(new, Path), log=lambda _: None, checkpoint_dir=tmp_path, resume=True).start()
    logs = Trainer(old, mixture_dirs[0], log=lambda _: None, checkpoint_dir=tmp_path, resume=True).run()
    assert len(logs[0].losses) == 5  # on its own data it resumes at step 3


def test_a_folder_of_a_stage_still_to_come_may_change_before_it_is_read(mixture_dirs, tmp_path, capsys, monkeypatch):
    a, b, c = mixture_dirs
    schedule = tmp_path / "s.grow"
    text = TINY_RUN + f'seed 3\ncheckpoint every 3 steps\nval off\ndata "{a}"\ntrain 1L for 8 steps\n'
    schedule.write_text(text + f'train 4 steps with data "{b}"\n')
    run = tmp_path / "run"
    steps = iter(range(5))
    with monkeypatch.context() as m:  # interrupted after 5 steps (Ctrl-C)
        m.setattr(Trainer, "_report", lambda self, *step: next(steps, None) is None and _interrupt())
        assert main(["run", str(schedule), "--run-dir", str(run)]) == 130
    schedule.write_text(text + f'train 4 steps with data "{c}"\n')  # b was never read: c takes its place
    assert main(["run", str(schedule), "--run-dir", str(run), "--resume"]) == 0
    assert "resumed from ckpt-000001: stage 0 step 3" in capsys.readouterr().out
    assert [s["data"] for s in json.loads((run / "run.json").read_text())["sources"]] == [str(a), str(c)]


def test_the_baseline_names_a_folder_spelled_twice_once(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    schedule = tmp_path / "g.grow"
    schedule.write_text(
        'model tiny layers 4\ndata "a" 1 + "./a" 1 + "b" 1\ntrain 2L for 10 steps\nstack x2\ntrain 10 steps\n'
    )
    assert main(["baseline", str(schedule), "-o", str(tmp_path / "base.grow")]) == 0
    assert 'data "a" 2 + "b" 1\n' in (tmp_path / "base.grow").read_text()
