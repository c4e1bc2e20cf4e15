"""Reading files someone else may have made (a run directory, a model or data folder): plain files
only, of a bounded size, and JSON that is plain data. Each problem is one `FileProblem` naming the
file, never a hang or a traceback: a FIFO would block a reader forever, deeply nested JSON ends in
a RecursionError, `NaN` and `1e400` are numbers nobody meant."""

from __future__ import annotations

import json
import math
import os
import stat
from collections.abc import Collection
from pathlib import Path

from growdsl.errors import GrowdslError

MiB = 2**20


class FileProblem(GrowdslError, ValueError):
    """A file that cannot be read as asked; the message names it and says why."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a plain file"


def not_plain(path: Path) -> str | None:
    """Why `path` (its target, for a link) is not a plain file that can be read, or None."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        return f"{path} cannot be read: {e.strerror}"
    return None if stat.S_ISREG(mode) else f"{path} is {_kind(mode)}, not a file"


def read_bytes(path: Path, limit: int = 64 * MiB) -> bytes:
    """A plain file's bytes (at most `limit` of them). Opened without blocking, so a FIFO is named
    rather than waited on forever. A file that cannot be opened raises OSError, as open() does."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileProblem(f"{path} is {_kind(info.st_mode)}, not a file")
        if info.st_size > limit:
            raise FileProblem(f"{path} is {info.st_size / MiB:,.1f} MiB: more than the {limit / MiB:,.0f} MiB expected")
        try:
            return f.read(limit + 1)[:limit]
        except OSError as e:
            raise FileProblem(f"{path} cannot be read: {e.strerror}") from None


def read_text(path: Path, limit: int = 64 * MiB) -> str:
    try:
        return read_bytes(path, limit).decode()
    except UnicodeDecodeError as e:
        raise FileProblem(f"{path} is not UTF-8 text (byte {e.start})") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large a number")
    return value


def parse_json(text: str | bytes, non_finite: bool = False):
    """JSON as plain data: no nesting deeper than Python can follow, and no NaN, Infinity or
    overflowing float unless `non_finite` (a diverged run's history records its NaN loss). Whole
    numbers stay Python's, however large (FLOP counts pass 2^63): their readers bound what they use.
    Raises ValueError (json.JSONDecodeError for the syntax)."""
    try:
        if non_finite:
            return json.loads(text)
        return json.loads(text, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def read_json(path: Path, limit: int = 64 * MiB):
    """A plain file's JSON (see `parse_json`); FileProblem names the file."""
    text = read_text(path, limit)
    try:
        return parse_json(text)
    except ValueError as e:
        raise FileProblem(f"{path} is not valid JSON: {str(e).splitlines()[0][:200]}") from None


def write_replacing(path: Path, data: bytes) -> None:
    """Write `path` whole through a temporary file renamed over it: a reader never sees half of it,
    and a hard link that pointed the name at a file elsewhere is cut rather than written through."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def not_plain_under(folder: Path, appended: Collection[str] = ()) -> str | None:
    """The first thing under `folder` (never followed) that growdsl must not read or write through,
    in one line, or None: a symbolic link (it could lead anywhere), a FIFO, socket or device (a
    reader would wait forever), and among the files growdsl `appended` to (paths relative to the
    folder), one with another name (a hard link: appending would change that other file as well;
    every other file growdsl writes is replaced whole, which cuts a link)."""
    for root, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            path = Path(root) / name
            try:
                info = os.lstat(path)
            except FileNotFoundError:  # gone since it was listed: a run still writing renames and prunes
                continue
            except OSError as e:
                return f"{path} cannot be read: {e.strerror}"
            if stat.S_ISLNK(info.st_mode):
                return f"{path} is a symbolic link (it could lead anywhere)"
            if not (stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode)):
                return f"{path} is {_kind(info.st_mode)}"
            if info.st_nlink > 1 and stat.S_ISREG(info.st_mode) and str(path.relative_to(folder)) in appended:
                return (
                    f"{path} has another name (a hard link): writing it would change that file too; "
                    f"copy the folder (cp -r) rather than linking it"
                )
    return None


def unwritable_folder(path: Path) -> str | None:
    """Why `path` cannot become a folder to write into, or None. Checked before a command does any
    work: a refusal after an hour of loading or tokenizing is what this saves."""
    if path.exists():
        if not path.is_dir():
            return f"{path} is a file, not a folder"
        return None if os.access(path, os.W_OK | os.X_OK) else f"{path} is not writable"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{path} cannot be made: {parent} is a file, not a folder"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"{path} cannot be made: {parent} is not writable"
    return None
