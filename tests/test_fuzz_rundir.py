"""A run directory someone else made: damage a finished run at random (links out of it, FIFOs, hard
links, deeply nested or huge-numbered JSON, truncated or flipped bytes, missing files) and require
every command that reads it to end in a line and an exit code: never a traceback, never a hang,
never a write outside the run. Seeded; GROWDSL_FUZZ_CASES=N runs more cases than the suite's."""

import os
import random
import shutil
import signal

import pytest
from ops_helpers import TINY_RUN

from growdsl.cli import main

SCHEDULE = TINY_RUN + "seed 3\ncheckpoint every 4 steps\ntrain 1L for 8 steps\nstack x2\ntrain 4 steps\n"
CASES = int(os.environ.get("GROWDSL_FUZZ_CASES", "10"))
JSON_FILES = ("run.json", "plan.json", "tokenizer_config.json", "history.jsonl", "progress.json", "manifest.json")


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzzrun")
    (root / "s.grow").write_text(SCHEDULE)
    argv = ["run", str(root / "s.grow"), "--data", str(data_dir), "--run-dir", str(root / "run")]
    assert main(argv) == 0
    return root / "run", root / "s.grow"


def _files(run):
    return sorted(p for p in run.rglob("*") if p.is_file() and not p.is_symlink())


def _damage(rng: random.Random, run, victim) -> str:
    """One random change to the run; what it was, for the failure message."""
    files = _files(run)
    target = rng.choice([f for f in files if f.name in JSON_FILES] if rng.random() < 0.5 else files)
    kind = rng.choice(["link", "fifo", "hard link", "nested", "huge", "truncate", "flip", "remove", "nan"])
    if kind == "link":
        target.unlink()
        target.symlink_to(victim)
    elif kind == "fifo":
        target.unlink()
        os.mkfifo(target)
    elif kind == "hard link":
        target.unlink()
        os.link(victim, target)
    elif kind == "nested":
        target.write_text("[" * 50_000 + "]" * 50_000)
    elif kind in ("huge", "nan"):
        text = target.read_text(errors="replace")
        number = rng.choice(["1" + "0" * 400, "18446744073709551617", "-1", "1e999"]) if kind == "huge" else "NaN"
        target.write_text(_replace_a_number(rng, text, number))
    elif kind == "truncate":
        data = target.read_bytes()
        target.write_bytes(data[: rng.randrange(len(data) + 1)])
    elif kind == "flip":
        data = bytearray(target.read_bytes())
        for _ in range(rng.randint(1, 8)):
            if data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        target.write_bytes(bytes(data))
    else:
        target.unlink()
    return f"{kind} {target.relative_to(run)}"


def _replace_a_number(rng, text: str, number: str) -> str:
    import re

    places = [m.span() for m in re.finditer(r"(?<![\w.])\d+(?![\w.])", text)]
    if not places:
        return text + number
    start, end = rng.choice(places)
    return text[:start] + number + text[end:]


class Hang(Exception):
    pass


def _alarm(signum, frame):
    raise Hang


@pytest.mark.parametrize("case", range(CASES))
def test_damaged_run_directories_end_every_command_in_a_line(finished, data_dir, tmp_path, case, capsys):
    rng = random.Random(case)
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    victim = tmp_path / "victim.txt"
    victim.write_text("not growdsl's")
    said = [_damage(rng, run, victim) for _ in range(rng.randint(1, 3))]
    commands = [
        ["export", str(run), "--hf", str(tmp_path / "hf")],
        ["eval", str(run), "--tasks", "heldout", "--limit", "2"],
        ["compare", str(run), str(finished[0]), "--out", str(tmp_path / "cmp")],
        ["run", str(finished[1]), "--data", str(data_dir), "--run-dir", str(run), "--resume"],
    ]
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        for argv in commands:
            signal.alarm(120)
            try:
                code = main(argv)
            except Hang:
                pytest.fail(f"{said}: growdsl {argv[0]} hangs")
            finally:
                signal.alarm(0)
            err = capsys.readouterr().err
            assert code in (0, 1, 2), (said, argv[0], code)
            assert "Traceback" not in err, (said, argv[0], err[-1500:])
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert victim.read_text() == "not growdsl's", said
