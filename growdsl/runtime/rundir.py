"""The run directory, owned by one growdsl at a time.

A run directory holds a run's record (schedule.grow, plan.json, run.json, tokenizer.json), its log,
metrics and checkpoints. `claim` takes it for this process (an exclusive lock on the folder itself,
released when the process ends, however it ends) after checking that it can be used at all. Nothing
is written into it until the run is accepted (`accept`: the schedule compiled, the data is the run's,
the checkpoint resumes), so a refused command leaves the folder as it found it, or none at all.

Its layout and run.json: growdsl.records.run_record."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from growdsl import __version__
from growdsl.errors import UsageError
from growdsl.files import FileProblem, not_plain_under, unwritable_folder
from growdsl.records import run_record
from growdsl.records.data_folder import TOKENIZER, tokenizer_digest
from growdsl.records.record import RecordError
from growdsl.records.run_record import (
    APPENDED,
    PLAN,
    RECORD,
    SCHEDULE,
    TOKENIZER_FILES,
    DataIdentity,
    RunRecord,
    Source,
)

ACCEPTING = ".accepting"  # in a new run's folder while its records are written


class RunDirError(UsageError):
    """The run directory cannot be used as asked; the message says why and what to do."""


class RunDir:
    """A claimed run directory (see `claim`)."""

    def __init__(self, path: Path, resume: bool, made: list[Path], lock: int):
        self.path, self.resume, self.made, self._lock = path, resume, made, lock  # made: folders this claim made
        self.accepted = False

    def recorded(self) -> RunRecord | None:
        """run.json of a run being resumed, its fields checked; None for a new run."""
        return read_record(self.path) if self.resume else None

    def check_data(self, folders: Sequence[Path]) -> None:
        """No data folder may be the run directory, or hold it, or lie in it."""
        run = self.path.resolve()
        for folder in folders:
            data = folder.resolve()
            if data == run or data in run.parents or run in data.parents:
                raise RunDirError(
                    f"--run-dir {self.path} and the data {folder} are the same folder or one holds the other: "
                    f"give the run a folder of its own"
                )

    def check_trained_on(self, folders: Sequence[Path], read: set[int]) -> None:
        """A resumed run's folders that its checkpoint has read (by number, in the order the run
        recorded them) must be the data it read: the same tokenizer, corpus and tokens, wherever
        each is now. A folder not read yet may have changed with the stages still to come."""
        record = self.recorded()
        for i, (folder, source) in enumerate(zip(folders, record.folders if record else [])):
            if i not in read:
                continue
            if source.identity is not None:
                differs = source.identity.differences(DataIdentity.of(folder))
            else:  # a run recorded before identities: its copy of the tokenizer
                mine = self.path / TOKENIZER
                differs = (
                    ["its tokenizer"]
                    if mine.is_file() and tokenizer_digest(self.path) != tokenizer_digest(folder)
                    else []
                )
            if differs:
                said = " and ".join([", ".join(differs[:-1]), differs[-1]] if len(differs) > 1 else differs)
                raise RunDirError(
                    f"{folder} is not the data {self.path} trained on ({said} differ): resume on the "
                    f"run's own data (its run.json names the folder it was prepared in: {source.data})"
                )

    def accept(self, plan_json: str, source: str, folders: Sequence[Path], processes: int) -> None:
        """The run goes ahead: write its record (the first data folder, whose tokenizer the run keeps,
        as `data`; every folder under `sources`). A new run marks the folder (ACCEPTING) until run.json,
        written last, is there: a folder an accept stopped midway holds no run, and the next new run
        takes it (see `_unfinished`). A failed write takes back what it wrote and raises RunDirError."""
        sources = [Source(str(f.resolve()), DataIdentity.of(f)) for f in folders]
        record = RunRecord(sources[0].data, sources[0].identity, sources, processes, __version__)
        files = {SCHEDULE: source.encode(), PLAN: plan_json.encode()}
        for name in TOKENIZER_FILES:  # what eval and export need of the tokenizer, wherever the data goes
            if (folders[0] / name).is_file():
                files[name] = (folders[0] / name).read_bytes()
        files[RECORD] = json.dumps(asdict(record), indent=1).encode()
        marker = self.path / ACCEPTING
        written = []
        try:
            if not self.resume:
                left = _unfinished(self.path)  # checked again: minutes may have passed since the claim
                if left is None and any(self.path.iterdir()):
                    raise RunDirError(f"{self.path} is no longer empty: nothing in it is replaced; use another")
                marker.touch()
                for stale in left or []:  # what an accept stopped midway left
                    stale.unlink()
            for name, data in files.items():
                _write(self.path / name, data)
                written.append(self.path / name)
            marker.unlink(missing_ok=True)
        except OSError as e:
            if not self.resume:  # a resumed run's records stay as they were or whole
                for path in [*written, marker]:
                    path.unlink(missing_ok=True)
            raise RunDirError(f"cannot write the run's records into {self.path}: {e.strerror}") from None
        self.accepted = True

    def release(self) -> None:
        """Let the folder go; the folders this claim made are removed if no run was accepted into
        them (the run directory, then each parent it made while that is empty)."""
        if self.made and not self.accepted:
            shutil.rmtree(self.made[0], ignore_errors=True)
            for parent in self.made[1:]:
                try:
                    parent.rmdir()  # only while empty: another run may have been made beside
                except OSError:
                    break
        os.close(self._lock)


def claim(path: Path, resume: bool) -> RunDir:
    """Take `path` for a new run (a folder that does not exist yet, or an empty one) or a resumed one
    (a folder with a run's record and no symbolic links), locked against any other growdsl until this
    process ends."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise RunDirError(f"{path} is {'a link' if path.is_symlink() else 'a file'}: --run-dir must name a folder")
    _usable(path, resume)
    if resume:  # refused before a model is loaded, rather than at the first write
        for folder in (path, path / "checkpoints"):
            why = unwritable_folder(folder)
            if why:
                raise RunDirError(f"cannot resume: {why}")
    made = [] if resume else _make(path)
    try:
        lock = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        raise RunDirError(f"cannot open {path}: {e.strerror}") from None
    run = RunDir(path, resume, made, lock)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            run.made = []  # the other growdsl's now
            raise RunDirError(f"another growdsl is running in {path}: wait for it to end, or stop it") from None
        except OSError as e:  # a file system without locks
            raise RunDirError(f"cannot lock {path}: {e.strerror}") from None
        if not made:
            _usable(path, resume)  # again, now that it is ours: nothing can change it from here on
        check_plain(path)
    except RunDirError:
        run.release()
        raise
    return run


def _usable(path: Path, resume: bool) -> None:
    if resume:
        if not (path / RECORD).is_file():
            stopped = _unfinished(path) is not None
            unfinished = " (a run stopped while it began: run it again without --resume)" if stopped else ""
            raise RunDirError(f"nothing to resume in {path}: it holds no run ({RECORD} missing){unfinished}")
    elif path.is_dir() and any(path.iterdir()) and _unfinished(path) is None:
        if (path / RECORD).exists() or (path / "checkpoints").exists():
            raise RunDirError(f"{path} holds a run already: add --resume to go on with it, or give another --run-dir")
        raise RunDirError(f"{path} is not empty: give a new or empty folder as --run-dir")


def _unfinished(path: Path) -> list[Path] | None:
    """The files an `accept` stopped midway left in `path` besides its mark (records, temporary
    files), when that is all the folder holds; None for any other folder."""
    if not (path / ACCEPTING).is_file() or (path / RECORD).exists():
        return None
    records = {SCHEDULE, PLAN, RECORD, *TOKENIZER_FILES}
    left = [p for p in path.iterdir() if p.name != ACCEPTING]
    ours = all(p.is_file() and not p.is_symlink() and p.name.removesuffix(".tmp") in records for p in left)
    return left if ours else None


def check_plain(run_dir: Path, appends: bool = True) -> None:
    """Refuse a run directory holding anything but plain files and folders (a link, a FIFO, or a file
    it `appends` to that has another name): growdsl reads and writes in it (`run --resume`, `eval`,
    `export`) and must neither wait forever nor reach outside it."""
    problem = not_plain_under(run_dir, APPENDED if appends else ())
    if problem:
        raise RunDirError(f"{problem}: growdsl reads and writes only plain files and folders in a run directory")


def read_record(run_dir: Path) -> RunRecord:
    """A run's run.json, its fields checked (growdsl.records.run_record); RunDirError."""
    try:
        return run_record.read_record(run_dir)
    except FileProblem as e:
        raise RunDirError(str(e)) from None
    except RecordError as e:
        raise RunDirError(f"{e.file} is not a run record (data, identity, sources, processes): {e.detail}") from None
    except OSError as e:
        raise RunDirError(f"{run_dir / RECORD} is unreadable: {e.strerror}") from None


def _make(path: Path) -> list[Path]:
    """Make the folder and its missing parents; the folders made, the run directory first."""
    why = unwritable_folder(path)
    if why:
        raise RunDirError(why)
    missing = []
    folder = path
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot make {path}: {e.strerror}") from None
    return missing


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def seen_alike(world, run_dir: Path, folders: Sequence[Path]) -> str | None:
    """Whether every rank sees the run directory rank 0 claimed and the data rank 0 reads, checked
    before anything is written: on a cluster both must be on a file system every node shares (or the
    data copied alike to each node). A node whose path leads elsewhere would write its checkpoint
    shards into a folder nobody reads. The problem in one line on every rank, or None.

    Rank 0 puts a file of random content into the run directory for the others to read, and takes it
    away again, so a refused run leaves the folder as it was."""
    if world.size == 1:
        return None
    import secrets

    token = world.share(secrets.token_hex(16) if world.main else None)
    probe = run_dir / f".growdsl-probe-{token[:8]}"
    problem = None
    if world.main:
        try:
            probe.write_text(token)
        except OSError as e:
            problem = f"cannot write {run_dir}: {e.strerror}"
    world.barrier()
    try:
        seen = probe.read_text() == token
    except OSError:
        seen = False
    if problem is None and not seen:
        problem = (
            f"{run_dir} is not the folder rank 0 writes on this node: put the run directory on a file system "
            f"every node mounts at the same path"
        )
    ours = [_identity(f) for f in folders]
    theirs = world.share(ours)  # every rank takes part in every collective, whatever it found
    for folder, mine, main in zip(folders, ours, theirs):
        if problem is None and mine != main:
            if mine is None or main is None:
                what = "is missing" if mine is None else "is readable here but not on rank 0"
            else:
                what = f"differs from rank 0's ({', '.join(main.differences(mine))})"
            problem = f"the data {folder} {what} on this node: put it on a shared file system, or copy it alike"
    world.barrier()
    if world.main:
        probe.unlink(missing_ok=True)
    return world.first_failure(problem)


def _identity(folder: Path) -> DataIdentity | None:
    """A prepared folder's identity, or None where it cannot be read."""
    from growdsl.records.data_folder import DataError

    try:
        return DataIdentity.of(folder)
    except (OSError, DataError):
        return None
