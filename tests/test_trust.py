"""The run directory can be trusted with someone else's checkpoint and with bad luck: loading runs no
code, damage is named and passed over, one growdsl owns a run directory at a time, a refused command
writes nothing, and paths read from a run are checked before use."""

import hashlib
import io
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from ops_helpers import TINY_RUN

from growdsl.cli import main
from growdsl.data import prepare as data
from growdsl.records.data_folder import DataError, read_meta
from growdsl.runtime import checkpoint, rundir

SCHEDULE = (
    TINY_RUN
    + """seed 3
checkpoint every 4 steps
train 1L for 8 steps
stack x2
train 4 steps
"""
)


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
    """A finished run (checkpoints 1..4: step 4, stage 0 end, after the growth, stage 1 end) and its schedule."""
    root = tmp_path_factory.mktemp("trust")
    schedule = root / "s.grow"
    schedule.write_text(SCHEDULE)
    assert main(["run", str(schedule), "--data", str(data_dir), "--run-dir", str(root / "run")]) == 0
    return root / "run", schedule


@pytest.fixture
def run(finished, tmp_path):
    """A copy of the finished run to damage."""
    copy = tmp_path / "run"
    shutil.copytree(finished[0], copy)
    return copy


def newest(run_dir):
    return checkpoint.latest(run_dir / "checkpoints")


def snapshot(folder):
    """Every entry under `folder`: a file's digest, a link's target, a folder: equal snapshots, nothing written."""

    def what(p):
        if p.is_symlink():
            return "-> " + os.readlink(p)
        return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"

    return {str(p.relative_to(folder)): what(p) for p in sorted(folder.rglob("*"))}


def remanifest(ckpt):
    """Rewrite a checkpoint's manifest to match its files, as an attacker would."""
    files = sorted(p.name for p in ckpt.iterdir() if p.is_file() and p.name != checkpoint.MANIFEST)
    entries = {n: {"bytes": (ckpt / n).stat().st_size, "sha256": checkpoint._sha256(ckpt / n)} for n in files}
    (ckpt / checkpoint.MANIFEST).write_text(json.dumps({"files": entries}))


def small_corpus(root, documents=4, words=3000):
    """A folder of short documents over 50 words, for prepare."""
    root.mkdir()
    for i in range(documents):
        (root / f"d{i}.txt").write_text(" ".join(f"w{(i * 7 + j) % 50}" for j in range(words)))
    return root


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ---- 1. no code from a checkpoint --------------------------------------------------------------


@pytest.mark.parametrize("command", ["export", "eval", "resume"])
def test_a_crafted_metadata_pickle_never_runs(run, finished, data_dir, tmp_path, command, capsys):
    marker = tmp_path / "MARKER"
    ckpt = newest(run)
    (ckpt / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    remanifest(ckpt)  # the manifest agrees: only the unpickler stands in the way
    argv = {
        "export": ["export", str(run), "--hf", str(tmp_path / "hf")],
        "eval": ["eval", str(run), "--tasks", "heldout"],
        "resume": ["run", str(finished[1]), "--data", str(data_dir), "--run-dir", str(run), "--resume"],
    }[command]
    assert main(argv) != 0
    assert not marker.exists()
    err = capsys.readouterr().err
    assert "posix.system" in err and "refused, nothing of it was run" in err
    assert not (tmp_path / "hf").exists()


def test_only_tensor_metadata_is_built():
    """DCP loads a non-tensor entry with torch.load(weights_only=False): metadata declaring one is refused."""
    unpickler = checkpoint._MetadataUnpickler(io.BytesIO(b""))
    for module, name in [
        ("torch.distributed.checkpoint.metadata", "BytesStorageMetadata"),
        ("builtins", "eval"),
        ("torch", "load"),
        ("pathlib", "Path.write_text"),
    ]:
        with pytest.raises(checkpoint.CheckpointError, match="never holds"):
            unpickler.find_class(module, name)
    assert unpickler.find_class("torch", "bfloat16") is torch.bfloat16


# ---- 3. integrity ------------------------------------------------------------------------------


def test_every_checkpoint_has_a_manifest_that_checks_out(finished):
    run_dir, _ = finished
    for ckpt in checkpoint.committed(run_dir / "checkpoints"):
        progress = checkpoint.check(ckpt)
        assert progress.schema == checkpoint.SCHEMA and progress.growdsl
        listed = json.loads((ckpt / checkpoint.MANIFEST).read_text())["files"]
        assert {".metadata", "progress.json", "__0_0.distcp"} <= set(listed)


def _flip(path, at=100):
    data = bytearray(path.read_bytes())
    data[at : at + 64] = bytes(b ^ 0xFF for b in data[at : at + 64])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, said",
    [
        (lambda c: _flip(c / "__0_0.distcp"), "does not match its checksum"),
        (lambda c: (c / "__0_0.distcp").write_bytes((c / "__0_0.distcp").read_bytes()[:1000]), "bytes, not the"),
        (lambda c: (c / ".metadata").write_bytes(b""), "bytes, not the"),
        (lambda c: (c / "progress.json").unlink(), "progress.json is missing"),
        (lambda c: (c / checkpoint.MANIFEST).unlink(), "manifest.json is missing"),
        (lambda c: (c / checkpoint.MANIFEST).write_text("{"), "not a checkpoint manifest"),
    ],
)
def test_damage_is_named_by_file(run, damage, said):
    ckpt = newest(run)
    damage(ckpt)
    with pytest.raises(checkpoint.CheckpointError, match=said):
        checkpoint.check(ckpt)
    path, _ = checkpoint.newest_good(run / "checkpoints")
    assert path.name < ckpt.name


def test_without_a_manifest_empty_metadata_and_truncated_progress_are_errors(run):
    ckpt = newest(run)
    (ckpt / ".metadata").write_bytes(b"")
    with pytest.raises(checkpoint.CheckpointError, match="is not checkpoint metadata"):
        checkpoint.read(ckpt, {})
    (ckpt / "progress.json").write_text('{"seq": 4, "stage"')
    with pytest.raises(checkpoint.CheckpointError, match="progress.json is not valid JSON"):
        checkpoint.read_progress(ckpt)


def test_export_and_eval_name_the_damaged_file_and_the_good_one(run, tmp_path, capsys):
    ckpt = newest(run)
    _flip(ckpt / "__0_0.distcp")
    assert main(["export", str(run), "--hf", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert f"{ckpt / '__0_0.distcp'} does not match its checksum" in err
    assert "the newest checkpoint that checks out is" in err and "ckpt-000003" in err
    assert not (tmp_path / "hf").exists()
    assert main(["eval", str(run), "--tasks", "heldout"]) == 2
    assert "does not match its checksum" in capsys.readouterr().err


def test_resume_passes_over_a_damaged_checkpoint_and_says_so(run, finished, data_dir, capsys):
    # Take the run back to the growth's checkpoint, damaged: it resumes from stage 0's end.
    checkpoints = checkpoint.committed(run / "checkpoints")
    shutil.rmtree(checkpoints[0])  # stage 1's end: the run is not finished
    _flip(checkpoints[1] / "__0_0.distcp")
    argv = ["run", str(finished[1]), "--data", str(data_dir), "--run-dir", str(run), "--resume"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"checkpoint {checkpoints[1].name} is damaged and skipped" in out
    assert f"resumed from {checkpoints[2].name}: stage 0 done" in out


# ---- 4. the run directory has one owner ---------------------------------------------------------


def test_a_second_growdsl_is_locked_out(finished, data_dir, capsys):
    run_dir, schedule = finished
    held = rundir.claim(run_dir, resume=True)
    try:
        before = snapshot(run_dir)
        argv = ["run", str(schedule), "--data", str(data_dir), "--run-dir", str(run_dir), "--resume"]
        assert main(argv) == 2
        assert "another growdsl is running in" in capsys.readouterr().err
        assert snapshot(run_dir) == before
    finally:
        held.release()


def test_a_finished_run_is_not_retrained_without_resume(finished, data_dir, capsys):
    run_dir, schedule = finished
    before = snapshot(run_dir)
    assert main(["run", str(schedule), "--data", str(data_dir), "--run-dir", str(run_dir)]) == 2
    assert "holds a run already: add --resume" in capsys.readouterr().err
    assert snapshot(run_dir) == before


def test_a_refused_resume_writes_nothing(run, finished, data_dir, tmp_path, capsys):
    changed = tmp_path / "changed.grow"
    changed.write_text(SCHEDULE.replace("lr 1e-2 to 1e-3", "lr 2e-2 to 1e-3"))
    before = snapshot(run)
    assert main(["run", str(changed), "--data", str(data_dir), "--run-dir", str(run), "--resume"]) == 1
    assert "the schedule changed in stage" in capsys.readouterr().err
    assert snapshot(run) == before  # schedule.grow, plan.json, log.txt, history.jsonl untouched


def test_resume_on_other_data_is_refused(run, finished, data_dir, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(data_dir, other)
    tokenizer = json.loads((other / "tokenizer.json").read_text())
    tokenizer["model"]["vocab"] = {k[::-1]: v for k, v in tokenizer["model"]["vocab"].items()}
    (other / "tokenizer.json").write_text(json.dumps(tokenizer))
    before = snapshot(run)
    assert main(["run", str(finished[1]), "--data", str(other), "--run-dir", str(run), "--resume"]) == 2
    assert "its tokenizer differ" in capsys.readouterr().err
    assert snapshot(run) == before


def test_resume_into_a_missing_folder_leaves_nothing(finished, tmp_path, capsys):
    missing = tmp_path / "missing" / "run"
    assert main(["run", str(finished[1]), "--run-dir", str(missing), "--resume"]) == 2
    assert "nothing to resume in" in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()


def test_a_refused_new_run_removes_the_folder_it_made(finished, tmp_path, capsys):
    big = tmp_path / "big.grow"
    big.write_text(SCHEDULE.replace("vocab 400", "vocab 300"))  # the data's tokenizer has 394 tokens
    data_dir = json.loads((finished[0] / "run.json").read_text())["data"]
    assert main(["run", str(big), "--data", data_dir, "--run-dir", str(tmp_path / "new" / "run")]) == 1
    assert "set vocab 394 in the model statement" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_run_dir_equal_to_the_data_is_refused(tmp_path):
    run = rundir.claim(tmp_path / "both", resume=False)
    try:
        with pytest.raises(rundir.RunDirError, match="are the same folder or one holds the other"):
            run.check_data([tmp_path / "both"])
    finally:
        run.release()
    assert not (tmp_path / "both").exists()


def test_a_newer_checkpoint_schema_is_refused_and_an_older_record_still_resumes(run, finished, data_dir, capsys):
    checkpoints = checkpoint.committed(run / "checkpoints")
    shutil.rmtree(checkpoints[0])
    ckpt = checkpoints[1]
    progress = json.loads((ckpt / "progress.json").read_text())
    (ckpt / "progress.json").write_text(json.dumps({**progress, "schema": checkpoint.SCHEMA + 1}))
    remanifest(ckpt)
    with pytest.raises(checkpoint.CheckpointError, match="upgrade growdsl"):
        checkpoint.read_progress(ckpt)
    before = snapshot(run)  # a newer checkpoint stops the resume: it is not damage to pass over
    argv = ["run", str(finished[1]), "--data", str(data_dir), "--run-dir", str(run), "--resume"]
    assert main(argv) == 1
    assert "upgrade growdsl" in capsys.readouterr().err
    assert snapshot(run) == before
    # An older growdsl: no version, no schema, one data position, and plan records without fields added
    # since (their defaults).
    older = {k: v for k, v in progress.items() if k not in ("growdsl", "schema", "positions", "drawn")}
    for record in older["plan_prefix"]:
        record["training"].pop("val_tokens")
        record["training"].pop("mix")
    (ckpt / "progress.json").write_text(json.dumps(older))
    remanifest(ckpt)
    assert main(argv) == 0
    assert f"resumed from {ckpt.name}" in capsys.readouterr().out


def test_a_torn_history_line_is_cut_before_a_resume_appends(run, finished, data_dir):
    checkpoints = checkpoint.committed(run / "checkpoints")
    shutil.rmtree(checkpoints[0])
    history = run / "history.jsonl"
    history.write_text(history.read_text() + '{"step": 99, "tok')  # killed mid-line
    argv = ["run", str(finished[1]), "--data", str(data_dir), "--run-dir", str(run), "--resume"]
    assert main(argv) == 0
    for line in history.read_text().splitlines():
        json.loads(line)


# ---- 5. paths read from a run ------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value",
    [
        ("stage", "/../../../ESCAPED"),
        ("step", -1),
        ("phase", "../x"),
        ("ramps", [{"name": 1}]),
        ("seq", True),
        ("positions", [1, 2]),
        ("drawn", [-1]),
    ],
)
def test_progress_fields_are_checked_before_use(run, tmp_path, field, value, capsys):
    ckpt = newest(run)
    progress = json.loads((ckpt / "progress.json").read_text())
    (ckpt / "progress.json").write_text(json.dumps({**progress, field: value}))
    remanifest(ckpt)
    with pytest.raises(checkpoint.CheckpointError, match=field):
        checkpoint.read_progress(ckpt)
    before = snapshot(tmp_path)
    assert main(["eval", str(ckpt), "--tasks", "heldout"]) == 2
    assert "progress.json" in capsys.readouterr().err
    assert snapshot(tmp_path) == before


def test_a_crafted_run_record_is_refused(run, tmp_path, capsys):
    (run / "run.json").write_text(json.dumps({"data": "relative/../../etc"}))
    assert main(["eval", str(run), "--tasks", "heldout"]) == 2
    assert "is not a run record" in capsys.readouterr().err


# ---- 6. one-line errors ------------------------------------------------------------------------


def test_eval_and_export_out_of_a_run_say_so(run, tmp_path, capsys):
    alone = tmp_path / "alone"
    shutil.copytree(newest(run), alone)
    assert main(["export", str(alone), "--hf", str(tmp_path / "hf")]) == 2
    assert "is not inside a run directory" in capsys.readouterr().err
    (run / "plan.json").unlink()
    assert main(["eval", str(run), "--tasks", "heldout"]) == 2
    assert "is not inside a run directory" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["/dev/null/x", "FILE", "FILE/x"])
def test_unwritable_targets_are_refused_before_any_work(finished, data_dir, tmp_path, target, capsys):
    file = tmp_path / "a-file"
    file.write_text("x")
    out = target.replace("FILE", str(file))
    run_dir, schedule = finished
    commands = [
        ["data", "prepare", str(schedule), str(schedule), "--out", out],
        ["run", str(schedule), "--data", str(data_dir), "--run-dir", out],
        ["export", str(run_dir), "--hf", out],
        ["compare", str(run_dir), str(run_dir), "--out", out],
    ]
    for argv in commands:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and ("file" in err or "not a folder" in err), err
    assert file.read_text() == "x"


@pytest.mark.parametrize(
    "line, said",
    [
        ("[1, 2]", "an object with a string"),
        ('{"text": 5}', "an object with a string"),
        ("{", "not JSON"),
        ('{"text": "half \\ud800 a character"}', "its text holds '\\ud800', half of a character"),
        ("[" * 100_000, "nested too deeply"),
    ],
    ids=["list", "number", "cut", "lone surrogate", "deep"],
)
def test_bad_jsonl_lines_are_named(tmp_path, line, said, capsys):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"text": "a b c"}\n' + line + "\n")
    assert main(["data", "prepare", str(corpus), "--out", str(tmp_path / "out")]) == 1
    assert f"{corpus}:2: " in (err := capsys.readouterr().err) and said in err
    assert not (tmp_path / "out").exists()


def test_damaged_or_inflating_archives_are_named(tmp_path, monkeypatch, capsys):
    """A .jsonl.gz whose deflate stream is damaged (zlib's own error), and one whose line never ends
    (a small file may inflate to gigabytes: read up to a bound, not into memory whole)."""
    import gzip

    from growdsl.data import sources

    lines = "".join(f'{{"text": "document {i} {"w " * (i % 40)}"}}\n' for i in range(3000)).encode()
    damaged = bytearray(gzip.compress(lines))
    damaged[30:60] = bytes(b ^ 0xFF for b in damaged[30:60])
    (tmp_path / "damaged.jsonl.gz").write_bytes(bytes(damaged))
    assert main(["data", "prepare", str(tmp_path / "damaged.jsonl.gz"), "--out", str(tmp_path / "out")]) == 1
    assert "damaged.jsonl.gz: cannot be read as jsonl.gz: Error -3 while decompressing" in capsys.readouterr().err
    monkeypatch.setattr(sources, "MAX_DOCUMENT", 2**20)
    (tmp_path / "endless.jsonl.gz").write_bytes(gzip.compress(b'{"text": "' + b"a" * 2**21))
    assert main(["data", "prepare", str(tmp_path / "endless.jsonl.gz"), "--out", str(tmp_path / "out")]) == 1
    assert "endless.jsonl.gz:1: a line of more than 1 MiB: not a document" in capsys.readouterr().err
    (tmp_path / "big.txt").write_text("a " * 2**20)
    assert main(["data", "prepare", str(tmp_path / "big.txt"), "--out", str(tmp_path / "out")]) == 1
    assert "big.txt is one document of 2 MiB: growdsl reads documents of up to 1 MiB" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_compare_refuses_other_tokenizers_and_survives_a_nan_line(finished, tmp_path, capsys):
    run_dir, _ = finished
    other = tmp_path / "other"
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    (other / "tokenizer.json").write_text("{}")
    assert main(["compare", str(run_dir), str(other), "--out", str(tmp_path / "o")]) == 2
    assert "different tokenizers" in capsys.readouterr().err
    shutil.copy(run_dir / "tokenizer.json", other / "tokenizer.json")
    lines = (other / "history.jsonl").read_text().splitlines()
    last = max(json.loads(line)["step"] for line in lines)
    nan = json.dumps({"step": last + 1, "tokens": 1, "flops": 1, "loss": float("nan")})
    (other / "history.jsonl").write_text("\n".join(lines + [nan]) + "\n")
    assert main(["compare", str(run_dir), str(other), "--out", str(tmp_path / "o")]) == 0
    assert f"other's loss was not finite from step {last + 1} on" in capsys.readouterr().out


# ---- 7. bounds ---------------------------------------------------------------------------------


def test_validate_refuses_devices_pipes_and_huge_files(tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert main(["validate", "/dev/zero"]) == 2
    assert main(["validate", str(fifo)]) == 2
    assert capsys.readouterr().err.count("is not a regular file") == 2
    big = tmp_path / "big.grow"
    big.write_text("# x\n" * 20_000)
    assert main(["validate", str(big)]) == 1
    assert "larger than 64 KiB" in capsys.readouterr().err


def test_thousands_of_errors_are_capped(tmp_path, capsys):
    many = tmp_path / "many.grow"
    many.write_text("model llama dim 32 heads 2 ffn 64 vocab 400\n" + "train 1L for -1 steps\n" * 2000)
    assert main(["validate", str(many)]) == 1
    err = capsys.readouterr().err
    assert err.count(": error: ") <= 51


# ---- 8. a prepared folder is whole or not one ---------------------------------------------------


def test_a_prepare_killed_midway_leaves_the_old_folder_whole(tmp_path, monkeypatch):
    corpus = small_corpus(tmp_path / "corpus")
    out = tmp_path / "prepared"
    data.prepare([corpus], out, vocab_size=300, holdout=0.25)
    before = snapshot(out)
    real = data._atomic_write

    def killed_after_the_tokens(path, payload):
        real(path, payload)
        if path.name == "tokenizer.json":
            raise KeyboardInterrupt

    monkeypatch.setattr(data, "_atomic_write", killed_after_the_tokens)
    with pytest.raises(KeyboardInterrupt):
        data.prepare([corpus], out, vocab_size=280, holdout=0.25)
    assert snapshot(out) == before
    assert read_meta(out).vocab_size <= 300
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_prepare_killed_between_its_two_renames_gets_the_old_folder_back(finished, tmp_path, capsys):
    """Killed (SIGKILL: no cleanup) after the old folder went aside and before the new one came in:
    the data is missing, and said why; the next prepare first puts the old folder back whole."""
    import subprocess
    import sys

    corpus = small_corpus(tmp_path / "corpus")
    out = tmp_path / "prepared"
    data.prepare([corpus], out, vocab_size=300, holdout=0.25)
    before = snapshot(out)
    killed_between = (
        "import os, sys; from pathlib import Path; from growdsl.data import prepare as data; real = Path.replace\n"
        "def replace(self, target):\n"
        "    real(self, target)\n"
        "    if '.old-' in Path(target).name: os.kill(os.getpid(), 9)\n"
        "Path.replace = replace\n"
        "data.prepare([Path(sys.argv[1])], Path(sys.argv[2]), vocab_size=280, holdout=0.25)\n"
    )
    done = subprocess.run([sys.executable, "-c", killed_between, str(corpus), str(out)], timeout=300)
    assert done.returncode == -9 and not out.exists()
    assert main(["plan", str(finished[1]), "--data", str(out)]) == 1
    assert "a prepare was stopped while it replaced it" in capsys.readouterr().err
    busy = out.with_name(f".{out.name}.old-1")  # another prepare's, still running (process 1 is alive)
    busy.mkdir()
    with pytest.raises(DataError, match="lies inside --out"):  # refused after the old folder is back
        data.prepare([out / "meta.json"], out, vocab_size=280)
    assert snapshot(out) == before and busy.is_dir()


def test_a_folder_whose_tokens_disagree_with_meta_is_not_a_prepared_folder(data_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    shard = copy / read_meta(copy).shards[0].file
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match="not the .* tokens meta.json counts"):
        read_meta(copy)


def test_prepare_never_replaces_a_folder_that_is_not_prepared(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="holds notes.txt, which is not part of a prepared data folder"):
        data.prepare([tmp_path / "x.txt"], out)
    assert (out / "notes.txt").read_text() == "mine"


# ---- found by a hostile review ------------------------------------------------------------------


def test_metadata_cannot_change_a_class_or_point_outside_the_checkpoint(run, tmp_path):
    ckpt = newest(run)
    genuine = (ckpt / ".metadata").read_bytes()
    # setattr(PosixPath, "_str", ...) through BUILD on the class itself, then the genuine metadata
    (ckpt / ".metadata").write_bytes(b"cpathlib\nPosixPath\nN}X\x04\x00\x00\x00_strX\x01\x00\x00\x00xs\x86b0" + genuine)
    with pytest.raises(checkpoint.CheckpointError, match="sets the state of PosixPath"):
        checkpoint.SafeReader(ckpt).read_metadata()
    (ckpt / ".metadata").write_bytes(genuine)
    shutil.move(ckpt / "__0_0.distcp", ckpt.parent / "ww.distcp")  # beside the checkpoint, outside it
    (ckpt / ".metadata").write_bytes(genuine.replace(b"__0_0.distcp", b"../ww.distcp"))  # the same length
    with pytest.raises(checkpoint.CheckpointError, match="not a file of this checkpoint"):
        checkpoint.SafeReader(ckpt).read_metadata()


def test_a_checkpoint_whose_record_and_tensors_disagree_is_one_line(run, tmp_path, capsys):
    ckpt = newest(run)
    progress = json.loads((ckpt / "progress.json").read_text())
    progress["plan_prefix"][-1]["shape"]["ffn_dim"] = 96
    (ckpt / "progress.json").write_text(json.dumps(progress))
    remanifest(ckpt)
    assert main(["export", str(run), "--hf", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "its tensors are not that model's" in err


def test_a_failing_dcp_load_is_a_checkpoint_error(run):
    from growdsl.ops.model import build_model
    from growdsl.plan.plan import stage_from_record

    ckpt = newest(run)
    stage = stage_from_record(checkpoint.read_progress(ckpt).plan_prefix[-1])
    wrong = build_model(stage.shape.__class__(**{**stage.shape.__dict__, "ffn_dim": 96}), 32)
    with pytest.raises(checkpoint.CheckpointError, match="does not load: Size mismatch between saved"):
        checkpoint.read(ckpt, {"model": wrong.state_dict()})


@pytest.mark.parametrize("name", ["history.jsonl", "log.txt", "run.json.tmp", "schedule.grow"])
def test_a_link_in_a_run_directory_is_refused(run, finished, data_dir, tmp_path, name, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("not growdsl's")
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(victim)
    argv = ["run", str(finished[1]), "--data", str(data_dir), "--run-dir", str(run), "--resume"]
    assert main(argv) == 2
    assert f"{run / name} is a symbolic link" in capsys.readouterr().err
    assert main(["export", str(run), "--hf", str(tmp_path / "hf")]) == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert victim.read_text() == "not growdsl's" and not (tmp_path / "hf").exists()


@pytest.mark.parametrize("name", ["history.jsonl", "log.txt", "eval/stage1-end-limit1.json", "plan.json"])
def test_a_hard_link_in_a_run_directory_is_never_written_through(run, finished, data_dir, tmp_path, name, capsys):
    """A file of the run that has another name outside it: where growdsl appends (the log and the
    history) the command is refused; every other file is replaced whole, which cuts the link (a
    snapshot made with cp -al still resumes, evaluates and exports)."""
    victim = tmp_path / "victim.txt"
    victim.write_text(json.dumps({"results": {}}))
    before = victim.read_text()
    (run / name).parent.mkdir(exist_ok=True)
    if (run / name).exists():
        victim.write_text((run / name).read_text())
        before = victim.read_text()
        (run / name).unlink()
    os.link(victim, run / name)
    appended = name in ("history.jsonl", "log.txt")
    argv = ["run", str(finished[1]), "--data", str(data_dir), "--run-dir", str(run), "--resume"]
    assert main(argv) == (2 if appended else 0)
    assert main(["eval", str(run), "--tasks", "heldout", "--limit", "1"]) == (2 if appended else 0)
    assert main(["export", str(run), "--hf", str(tmp_path / "hf")]) == 0
    err = capsys.readouterr().err
    assert (f"{run / name} has another name (a hard link)" in err) == appended
    assert victim.read_text() == before


@pytest.mark.parametrize("name", ["schedule.grow", "history.jsonl", "plan.json"])
def test_a_fifo_in_a_run_directory_is_refused_at_once(run, finished, data_dir, tmp_path, name, capsys):
    (run / name).unlink()
    os.mkfifo(run / name)
    argv = ["run", str(finished[1]), "--data", str(data_dir), "--run-dir", str(run), "--resume"]
    assert main(argv) == 2
    assert main(["export", str(run), "--hf", str(tmp_path / "hf")]) == 2
    assert main(["eval", str(run), "--tasks", "heldout", "--limit", "1"]) == 2
    assert main(["compare", str(run), str(run), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.count(f"{run / name} is a FIFO") == 4


def test_fifos_as_data_or_tokenizer_are_named_not_waited_on(finished, data_dir, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    (data / "meta.json").unlink()
    os.mkfifo(data / "meta.json")
    assert main(["plan", str(finished[1]), "--data", str(data)]) == 1
    assert f"{data / 'meta.json'} is a FIFO" in capsys.readouterr().err
    corpus = small_corpus(tmp_path / "corpus")
    os.mkfifo(tmp_path / "tokenizer.json")
    out = tmp_path / "prepared"
    argv = ["data", "prepare", str(corpus), "--out", str(out), "--tokenizer", str(tmp_path / "tokenizer.json")]
    assert main(argv) == 1
    assert f"{tmp_path / 'tokenizer.json'} is a FIFO" in capsys.readouterr().err and not out.exists()
    os.mkfifo(corpus / "pipe.txt")
    assert main(["data", "prepare", str(corpus), "--out", str(out), "--vocab", "300"]) == 1
    assert f"{corpus / 'pipe.txt'} is a FIFO" in capsys.readouterr().err and not out.exists()


def test_a_link_loop_in_a_corpus_counts_each_document_once(tmp_path):
    from growdsl.data.sources import find

    corpus = small_corpus(tmp_path / "corpus")
    documents = find([corpus])
    (corpus / "again").symlink_to(".")  # a loop
    (corpus / "same.txt").symlink_to(corpus / documents[0].path.name)  # one file, two names
    assert find([corpus]) == documents
    assert find([corpus, corpus / "again"]) == documents


def test_a_refused_run_removes_only_what_it_made(finished, tmp_path):
    parent = tmp_path / "runs"
    b = rundir.claim(parent / "b", resume=False)  # made runs/ and runs/b
    (parent / "a").mkdir()  # another run, made meanwhile
    (parent / "a" / "run.json").write_text("{}")
    b.release()  # refused
    assert (parent / "a" / "run.json").exists() and not (parent / "b").exists()
    c = rundir.claim(tmp_path / "fresh" / "c", resume=False)
    c.release()
    assert not (tmp_path / "fresh").exists()


def test_prepare_refuses_a_folder_holding_more_than_its_data_or_its_own_sources(tmp_path):
    corpus = small_corpus(tmp_path / "corpus", documents=3, words=2000)
    out = tmp_path / "prepared"
    data.prepare([corpus], out, vocab_size=300, holdout=0.25)
    (out / "my-notes.txt").write_text("mine")
    with pytest.raises(DataError, match="holds my-notes.txt"):
        data.prepare([corpus, out / "my-notes.txt"], out, vocab_size=300)
    (out / "my-notes.txt").unlink()
    with pytest.raises(DataError, match="lies inside --out"):
        data.prepare([out / "val.jsonl"], out, vocab_size=300)
    assert read_meta(out).documents == 3


def test_the_corpus_identity_does_not_depend_on_how_its_path_is_spelled(tmp_path, monkeypatch):
    corpus = small_corpus(tmp_path / "corpus", documents=3, words=2000)
    data.prepare([corpus], tmp_path / "a", vocab_size=300)
    monkeypatch.chdir(tmp_path)
    data.prepare([Path("corpus")], tmp_path / "b", vocab_size=300)
    assert read_meta(tmp_path / "a").sources_sha256 == read_meta(tmp_path / "b").sources_sha256


def test_an_eval_after_a_torn_line_starts_its_own(run, tmp_path):
    from growdsl.runtime.metrics import Metrics

    history = run / "history.jsonl"
    history.write_text(history.read_text() + '{"step": 99, "tok')
    metrics = Metrics(run)  # not the owner: it appends, on a line of its own
    metrics.evaluation(1, 1, 1, {"heldout": {"ppl": 2.0}})
    metrics.close()
    assert json.loads(history.read_text().splitlines()[-1])["event"] == "eval"


def test_a_step_redone_finite_after_a_nan_is_not_divergence(finished, tmp_path):
    from growdsl.eval.compare import read_run

    copy = tmp_path / "r"
    copy.mkdir()
    lines = (finished[0] / "history.jsonl").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if "event" not in json.loads(line))  # a training step's line
    nan = json.dumps({**json.loads(lines[at]), "loss": float("nan")})
    (copy / "history.jsonl").write_text("\n".join(lines[:at] + [nan] + lines[at:]) + "\n")  # redone after
    assert read_run(copy).diverged is None


def test_a_full_disk_stops_the_run_in_one_line_and_it_resumes_exactly(finished, data_dir, tmp_path):
    """The disk fills up (a file-size limit stands in: writes past it fail, as on a full disk) when the
    grown model's first checkpoint is written: one line, exit 1, the committed checkpoints whole; once
    there is room, --resume ends with the uninterrupted run's losses."""
    import subprocess
    import sys

    run = tmp_path / "run"
    limit = 520_000  # a 1-layer checkpoint's tensors (514 KB) fit, the grown model's do not
    full_disk = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
        "from growdsl.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    argv = ["run", str(finished[1]), "--data", str(data_dir), "--run-dir", str(run)]
    done = subprocess.run([sys.executable, "-c", full_disk, *argv], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1] == (
        f"growdsl run: cannot write into {run}: File too large; committed checkpoints are whole: free space "
        f"(or fix the folder) and resume with --resume"
    )
    committed = ["ckpt-000001", "ckpt-000002", "ckpt-000003"]  # the last: the grown model with no AdamW state yet
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == [*committed, "ckpt-000004.partial"]
    assert main([*argv, "--resume"]) == 0

    def losses(folder):
        lines = (folder / "history.jsonl").read_text().splitlines()
        return {r["step"]: r["loss"] for r in map(json.loads, lines) if "event" not in r}

    assert losses(run) == losses(finished[0])


def test_a_run_stopped_while_it_began_leaves_a_folder_a_new_run_takes(
    finished, data_dir, tmp_path, monkeypatch, capsys
):
    """Killed, or out of room, while writing its records: no run.json, so nothing to resume (said so)
    and no run lost; the same command again starts the run."""
    run = tmp_path / "run"
    argv = ["run", str(finished[1]), "--data", str(data_dir), "--run-dir", str(run)]
    writes = []
    original = rundir._write

    def killed_at_the_third(path, data):
        writes.append(path.name)
        if len(writes) == 3:
            raise OSError(28, "No space left on device")
        original(path, data)

    monkeypatch.setattr(rundir, "_write", killed_at_the_third)
    assert main(argv) == 1
    assert f"cannot write the run's records into {run}: No space left on device" in capsys.readouterr().err
    assert not run.exists()  # the folder the run made goes with what it wrote
    run.mkdir()
    (run / ".accepting").touch()  # what a killed accept left
    (run / "schedule.grow").write_text("half")
    (run / "plan.json.tmp").write_text("{")
    monkeypatch.setattr(rundir, "_write", original)
    assert main([*argv, "--resume"]) == 2
    assert "holds no run (run.json missing) (a run stopped while it began" in capsys.readouterr().err
    assert main(argv) == 0
    assert (run / "schedule.grow").read_text() == finished[1].read_text() and not (run / "plan.json.tmp").exists()
    assert not (run / ".accepting").exists()
    mine = tmp_path / "mine"  # a folder of the user's own with the schedule in it: never taken
    mine.mkdir()
    (mine / "schedule.grow").write_text(finished[1].read_text())
    assert main([*argv[:-1], str(mine)]) == 2
    assert f"{mine} is not empty" in capsys.readouterr().err


def test_ctrl_c_inside_a_checkpoint_write_exits_130_and_the_run_resumes(finished, data_dir, tmp_path, monkeypatch):
    """DCP wraps what stops its write (Ctrl-C too) in its own exception: still an interrupt, exit 130."""
    from torch.distributed.checkpoint.filesystem import FileSystemWriter

    run = tmp_path / "run"
    argv = ["run", str(finished[1]), "--data", str(data_dir), "--run-dir", str(run)]
    original = FileSystemWriter.write_data
    calls = []

    def interrupted_at_the_second(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FileSystemWriter, "write_data", interrupted_at_the_second)
    assert main(argv) == 130
    monkeypatch.setattr(FileSystemWriter, "write_data", original)
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["ckpt-000001", "ckpt-000002.partial"]
    assert main([*argv, "--resume"]) == 0


def _crafted(metadata, name: str, how: str):
    """Change the model's `name` entry of a genuine metadata object the way `how` says."""
    import dataclasses

    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata

    entry = metadata.state_dict_metadata[name]
    changed = {
        "size not a shape": dict(size=[4, "x"]),
        "negative size": dict(size=torch.Size([-4, 32])),
        "no properties": dict(properties=None),
        "dtype a number": dict(properties=dataclasses.replace(entry.properties, dtype=7)),
        "a piece outside": dict(chunks=[ChunkStorageMetadata(torch.Size([10**6, 0]), entry.size)]),
    }[how]
    metadata.state_dict_metadata[name] = dataclasses.replace(entry, **changed)
    return metadata


@pytest.mark.parametrize(
    "how", ["size not a shape", "negative size", "no properties", "dtype a number", "a piece outside"]
)
def test_structurally_crafted_metadata_is_one_line_for_every_command(run, finished, data_dir, tmp_path, how, capsys):
    """Metadata of allowed types that no checkpoint can hold (it passed the manifest, rewritten): one
    line from eval, export and resume, never a traceback from the checks behind them."""
    ckpt = newest(run)
    metadata = checkpoint.SafeReader(ckpt).read_metadata()
    name = "model.layers.0.attention.wq.weight"
    (ckpt / ".metadata").write_bytes(pickle.dumps(_crafted(metadata, name, how)))
    remanifest(ckpt)
    assert main(["export", str(run), "--hf", str(tmp_path / "hf")]) == 2
    assert main(["eval", str(run), "--tasks", "heldout", "--limit", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "as no tensor can be" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "field, value, said",
    [
        ("position", 2**63, "position: input should be less than 9223372036854775808"),
        ("global_step", 10**400, "global_step: input should be less than 9223372036854775808"),
        ("flops", -1, "flops: input should be greater than or equal to 0"),
        ("ramps", [{"name": "layers.1", "steps": 4, "old": None, "step": 10}], "at step 10 of 4"),
    ],
)
def test_progress_numbers_past_what_a_run_can_reach_are_refused(run, field, value, said, tmp_path, capsys):
    ckpt = newest(run)
    progress = json.loads((ckpt / "progress.json").read_text())
    progress[field] = value
    (ckpt / "progress.json").write_text(json.dumps(progress))
    remanifest(ckpt)
    assert main(["export", str(run), "--hf", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and said in err


def test_deeply_nested_records_are_one_line(run, finished, data_dir, capsys):
    (run / "run.json").write_text("[" * 100_000 + "]" * 100_000)
    assert main(["run", str(finished[1]), "--data", str(data_dir), "--run-dir", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nested too deeply" in err


def test_a_run_folder_deleted_mid_run_is_one_line(finished, data_dir, tmp_path, monkeypatch, capsys):
    """The folder goes while the run trains (TensorBoard's writer thread meets it first): one line."""
    from growdsl.runtime.metrics import Metrics

    run = tmp_path / "run"
    original = Metrics.step

    def gone_at_step_3(self, step, *args, **kwargs):
        if step == 3:
            shutil.rmtree(run)
        return original(self, step, *args, **kwargs)

    monkeypatch.setattr(Metrics, "step", gone_at_step_3)
    assert main(["run", str(finished[1]), "--data", str(data_dir), "--run-dir", str(run)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception in thread" not in err, err
    assert err.splitlines()[-1].startswith("growdsl run: cannot write ") and "No such file or directory" in err


def test_flop_counts_past_2_to_the_63_are_read(run, tmp_path):
    """A 1.1B schedule already counts 2.3e19 FLOPs: every record holds such numbers, and reads them."""
    ckpt = newest(run)
    progress = json.loads((ckpt / "progress.json").read_text())
    progress["flops"] = 22_811_131_295_481_987_072
    (ckpt / "progress.json").write_text(json.dumps(progress))
    remanifest(ckpt)
    assert checkpoint.check(ckpt).flops == 22_811_131_295_481_987_072
    from growdsl.eval.compare import read_run

    with (run / "history.jsonl").open("a") as f:
        f.write(json.dumps({"step": 10**6, "tokens": 1, "flops": 2**70, "loss": 1.0}) + "\n")
    assert read_run(run).flops[-1] == 2.0**70


def test_only_a_write_into_the_run_is_a_failed_write(tmp_path):
    import errno

    run = tmp_path / "run"
    full = OSError(errno.ENOSPC, "No space left on device")
    assert checkpoint.failed_write(full, run) == f"cannot write into {run}: No space left on device"
    named = OSError(errno.EFBIG, "File too large", str(run / "checkpoints" / "x"))
    assert checkpoint.failed_write(named, run) == f"cannot write {run / 'checkpoints' / 'x'}: File too large"
    assert checkpoint.failed_write(BrokenPipeError(errno.EPIPE, "Broken pipe"), run) is None  # `| head`
    assert checkpoint.failed_write(ConnectionResetError(errno.ECONNRESET, "reset"), run) is None  # a lost peer
    assert checkpoint.failed_write(OSError(errno.EIO, "I/O error", str(tmp_path / "data" / "train.bin")), run) is None


def test_the_old_prepared_folder_kept_aside_is_never_deleted(tmp_path):
    """Made again by hand after a killed swap, `out` stays as it is, and so does the old folder."""
    corpus = small_corpus(tmp_path / "corpus")
    out = tmp_path / "prepared"
    data.prepare([corpus], out, vocab_size=300, holdout=0.25)
    aside = out.with_name(f".{out.name}.old-999999999")  # a process that is gone
    out.rename(aside)
    out.mkdir()
    data.prepare([corpus], out, vocab_size=280, holdout=0.25)
    assert (aside / "meta.json").is_file() and read_meta(out).vocab_size <= 280


def test_a_file_put_in_the_run_folder_while_the_run_starts_is_kept(finished, data_dir, tmp_path, monkeypatch, capsys):
    """Minutes may pass between the claim and the accept (a model loads, benchmarks are fetched)."""
    from growdsl.runtime.trainer import Trainer

    run = tmp_path / "run"
    run.mkdir()
    original = Trainer.start

    def start_while_a_user_writes(self):
        (run / "notes.txt").write_text("mine")
        original(self)

    monkeypatch.setattr(Trainer, "start", start_while_a_user_writes)
    assert main(["run", str(finished[1]), "--data", str(data_dir), "--run-dir", str(run)]) == 1
    assert f"{run} is no longer empty" in capsys.readouterr().err
    assert [p.name for p in run.iterdir()] == ["notes.txt"] and (run / "notes.txt").read_text() == "mine"
