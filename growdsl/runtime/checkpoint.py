"""Checkpoints: the model (ramp masks included), the AdamW state, the RNG, and where the run stands
(stage, step, data position, ramps, growth log, the plan), written with torch.distributed.checkpoint
so they reshard across world sizes.

A checkpoint is written into `NAME.partial/` and renamed to `NAME/` only when complete: a write
killed halfway leaves a `.partial` folder that is never picked; a damaged one that a resumed run
passes over is kept aside as `.damaged-N` when its name comes round again. Its last file, `manifest.json`,
holds the size and SHA-256 of every other file; reading a checkpoint checks them first, so a
truncated or flipped file is named instead of loaded.

Reading runs no code from the checkpoint: DCP's `.metadata` is a pickle, read here with an
unpickler that builds only DCP's own tensor-metadata types (`SafeReader`); the tensors themselves
are read by DCP with torch.load(weights_only=True); `progress.json` is JSON, every field checked."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import warnings
from collections.abc import Callable
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException

from growdsl import __version__
from growdsl.files import read_json
from growdsl.ops.layout import named_parameters, state_dict
from growdsl.ops.optimizer import MOMENTS, State
from growdsl.records.progress import (
    MANIFEST,
    PREFIX,
    PROGRESS,
    SCHEMA,
    CheckpointError,
    NewerCheckpoint,
    Progress,
    committed,
    read_progress,
)

__all__ = ["CheckpointError", "NewerCheckpoint", "Progress", "check", "committed", "load", "newest_good", "save"]


def save(directory: Path, model: nn.Module, state: State, progress: Progress, world) -> Path:
    """Every rank writes its shards (DCP); the first rank writes progress and the manifest and commits
    the checkpoint by renaming it."""
    final = directory / f"{PREFIX}{progress.seq:06d}"
    partial = final.with_name(final.name + ".partial")
    if world.main:
        shutil.rmtree(partial, ignore_errors=True)
    world.barrier()
    progress.optimizer_names = sorted(state)
    progress.growdsl, progress.schema = __version__, SCHEMA
    dcp.save({"model": state_dict(model), "optimizer": state, "rng": torch.get_rng_state()}, checkpoint_id=str(partial))
    if world.main:
        (partial / PROGRESS).write_text(json.dumps(asdict(progress), indent=1))
        files = sorted(p.name for p in partial.iterdir() if p.is_file())
        manifest = {
            "files": {
                name: {"bytes": (partial / name).stat().st_size, "sha256": _sha256(partial / name)} for name in files
            }
        }
        _write_synced(partial / MANIFEST, json.dumps(manifest, indent=1).encode())
        if final.exists():  # a damaged checkpoint the run resumed before: kept aside, never overwritten
            n = 1
            while final.with_name(f"{final.name}.damaged-{n}").exists():
                n += 1
            final.rename(final.with_name(f"{final.name}.damaged-{n}"))
        os.replace(partial, final)  # the commit point
    world.barrier()
    return final


def latest(directory: Path) -> Path | None:
    """The newest committed checkpoint (checked or not)."""
    found = committed(directory)
    return found[0] if found else None


def newest_good(directory: Path, say: Callable[[str], None] = lambda line: None) -> tuple[Path, Progress] | None:
    """The newest checkpoint that passes `check`, saying of every newer one why it was passed over."""
    for path in committed(directory):
        try:
            return path, check(path)
        except NewerCheckpoint:
            raise
        except CheckpointError as e:
            say(f"checkpoint {path.name} is damaged and skipped: {e}")
    return None


def check(path: Path) -> Progress:
    """Verify a checkpoint's files against its manifest and read its progress; CheckpointError names
    the first file that is missing, of another size or another checksum."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise CheckpointError(f"{manifest} is missing: the checkpoint cannot be verified")
    try:
        listed = read_json(manifest)["files"]
        entries = [(name, int(v["bytes"]), str(v["sha256"])) for name, v in listed.items()]
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, OverflowError, RecursionError):
        raise CheckpointError(f"{manifest} is not a checkpoint manifest") from None
    names = {name for name, _, _ in entries}
    if not {"progress.json", ".metadata"} <= names:
        raise CheckpointError(f"{manifest} does not list progress.json and .metadata")
    for name, size, digest in entries:
        file = path / name
        if name != Path(name).name or name in ("", ".", "..") or not file.is_file():
            raise CheckpointError(f"{file} is missing" if name == Path(name).name else f"{manifest} names {name!r}")
        if file.stat().st_size != size:
            raise CheckpointError(f"{file} has {file.stat().st_size:,} bytes, not the {size:,} it was written with")
        if _sha256(file) != digest:
            raise CheckpointError(f"{file} does not match its checksum: it changed after it was written")
    return read_progress(path)


def load(path: Path, model: nn.Module, progress: Progress) -> State:
    """Load weights into `model` (built in the checkpoint's shape, ramps attached) and return the
    optimizer state by parameter name."""
    params = named_parameters(model)
    missing = [name for name in progress.optimizer_names if name not in params]
    if missing:
        raise CheckpointError(f"{path / 'progress.json'} names optimizer state for {missing[0]}, not in the model")
    state = {
        name: {"step": torch.zeros(()), **{m: torch.zeros_like(params[name]) for m in MOMENTS}}
        for name in progress.optimizer_names
    }
    holder = {"model": state_dict(model), "optimizer": state, "rng": torch.get_rng_state()}
    read(path, holder)
    assert isinstance(holder["rng"], torch.Tensor)  # read() loads into the tensor given
    torch.set_rng_state(holder["rng"])
    return state


def read(path: Path, holder: dict) -> None:
    """dcp.load into `holder` through SafeReader; a checkpoint that does not fit is a CheckpointError."""
    try:
        SafeReader(path).read_metadata()  # refused here, its own message, before DCP wraps it
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*single process.*")
            dcp.load(holder, storage_reader=SafeReader(path))
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as e:  # DCP's CheckpointException is a BaseException
        failures = getattr(e, "failures", None)
        cause = next(iter(failures.values())) if isinstance(failures, dict) and failures else e
        cause = cause[0] if isinstance(cause, tuple) else cause  # DCP keeps (exception, traceback) per rank
        first = str(cause).strip().splitlines()
        raise CheckpointError(f"{path} does not load: {first[-1] if first else type(cause).__name__}") from None


class SafeReader(dcp.FileSystemReader):
    """DCP's file reader whose `.metadata` unpickler builds only the types a checkpoint of tensors
    holds, and sets only their own fields (anything else, a function to call, a class to build or
    change, is refused before it runs); every entry must name a file of this checkpoint."""

    def read_metadata(self, *args, **kwargs):
        path = Path(self.path) / ".metadata"
        try:
            with open(path, "rb") as f:
                metadata = _MetadataUnpickler(f).load()
        except CheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
            raise CheckpointError(f"{path} is not checkpoint metadata ({e or type(e).__name__})") from None
        _check_metadata(metadata, path)
        from torch.distributed.checkpoint.metadata import StorageMeta

        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def _check_metadata(metadata, path: Path) -> None:
    """Every entry a tensor, stored in a file of this checkpoint at a place that can be."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata

    if type(metadata) is not Metadata or not isinstance(metadata.state_dict_metadata, dict):
        raise CheckpointError(f"{path} is not checkpoint metadata")
    if not all(type(m) is TensorStorageMetadata for m in metadata.state_dict_metadata.values()):
        raise CheckpointError(f"{path} declares an entry that is not a tensor: refused (growdsl writes only tensors)")
    for name, m in metadata.state_dict_metadata.items():
        if not (isinstance(name, str) and _is_tensor_entry(m)):
            raise CheckpointError(f"{path} declares {str(name)[:80]!r} as no tensor can be (its shape, type or pieces)")
    storage = metadata.storage_data if isinstance(metadata.storage_data, dict) else None
    for info in (storage or {None: None}).values():
        where = getattr(info, "relative_path", None)
        ok = (
            type(info) is _StorageInfo
            and isinstance(where, str)
            and where == Path(where).name
            and where not in ("", ".", "..")
            and (path.parent / where).is_file()
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (info.offset, info.length))
            and not info.transform_descriptors
        )
        if not ok:
            raise CheckpointError(f"{path} places a tensor at {where!r}, not a file of this checkpoint: refused")


def _is_size(size, dims: int | None = None) -> bool:
    return (
        type(size) is torch.Size
        and (dims is None or len(size) == dims)
        and all(type(n) is int and 0 <= n < 2**62 for n in size)
    )


def _is_tensor_entry(m) -> bool:
    """A tensor's shape (whole numbers), dtype, and pieces that lie within it."""
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, TensorProperties

    if not (
        _is_size(m.size) and type(m.properties) is TensorProperties and isinstance(m.properties.dtype, torch.dtype)
    ):
        return False
    if not isinstance(m.chunks, list):
        return False
    dims = len(m.size)
    for chunk in m.chunks:
        if type(chunk) is not ChunkStorageMetadata or not (
            _is_size(chunk.offsets, dims) and _is_size(chunk.sizes, dims)
        ):
            return False
        if any(o + n > whole for o, n, whole in zip(chunk.offsets, chunk.sizes, m.size)):
            return False
    return True


def _allowed(module: str, name: str) -> bool:
    return name in _ALLOWED.get(module, ()) or (
        module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
    )


_ALLOWED = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorProperties",
        "TensorStorageMetadata",
        "ChunkStorageMetadata",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},  # a layout by its name
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}


class _MetadataUnpickler(pickle._Unpickler):  # the Python unpickler: its BUILD can be checked
    def find_class(self, module: str, name: str):
        if _allowed(module, name):
            return super().find_class(module, name)
        raise CheckpointError(
            f".metadata asks to build {module}.{name}, which checkpoint metadata never holds: refused, nothing "
            f"of it was run (a checkpoint from an untrusted source, or damaged)"
        )

    def load_build(self):
        """BUILD sets an object's state: only on an instance of a DCP metadata class, and (unless the
        class reads its own state) only its own fields."""
        state, inst = self.stack[-1], self.stack[-2]
        kind = type(inst)
        fields_of = {f.name for f in fields(kind)} if is_dataclass(kind) and not isinstance(inst, type) else None
        own = "__setstate__" in vars(kind) and kind.__module__.startswith("torch.distributed.checkpoint")
        plain = isinstance(state, dict) and fields_of is not None and set(state) <= fields_of
        if fields_of is None or not _allowed(kind.__module__, kind.__name__) or not (own or plain):
            raise CheckpointError(
                f".metadata sets the state of {getattr(inst, '__name__', kind.__name__)} in a way checkpoint "
                f"metadata never does: refused (a checkpoint from an untrusted source, or damaged)"
            )
        super().load_build()

    dispatch = {**pickle._Unpickler.dispatch, pickle.BUILD[0]: load_build}  # type: ignore[dict-item]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def underlying(error: BaseException) -> BaseException:
    """The error under DCP's wrapper (a CheckpointException holds each failed rank's), or `error`."""
    from torch.distributed.checkpoint.api import CheckpointException

    if isinstance(error, CheckpointException):
        for failure in error.failures.values():
            return underlying(failure[0] if isinstance(failure, tuple) else failure)
    return error


WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.ENOENT, errno.EIO}


def failed_write(error: BaseException, folder: Path) -> str | None:
    """A file the run could not write into `folder` (the disk full, the folder gone or made read-only),
    in one line; None for any other error (a broken pipe, a lost connection, a file read elsewhere).
    torch's own writer reports a failed write without its cause."""
    error = underlying(error)
    if isinstance(error, OSError) and not isinstance(error, (BrokenPipeError, ConnectionError)):
        where = os.fsdecode(error.filename) if error.filename else None  # TensorBoard's are bytes
        inside = where is None or Path(os.path.abspath(where)).is_relative_to(os.path.abspath(folder))
        if error.errno in WRITE_ERRORS and inside:
            return f"cannot write {where or f'into {folder}'}: {error.strerror or error}"
        return None
    text = str(error)
    if isinstance(error, RuntimeError) and ("PytorchStreamWriter" in text or "inline_container" in text):
        return f"cannot write a checkpoint file ({text.splitlines()[0][:160]}): is the disk full?"
    return None
