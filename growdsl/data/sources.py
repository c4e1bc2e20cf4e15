"""Documents, streamed from the formats pretraining corpora come in, so that preparing a corpus never
holds it in memory:

- `.txt` (and any other text file named explicitly): the file is one document;
- `.jsonl`, `.jsonl.gz`, `.jsonl.zst`: each line an object with a string "text";
- `.parquet`: each row's "text" column, read a batch of rows at a time;
- a Hugging Face dataset saved to disk (`save_to_disk`: `state.json` beside `*.arrow` files, or a
  `dataset_dict.json` over such folders): each row's "text";
- folders of any of these (a prepared data folder inside them is skipped).

A document is named by where it is (`file`, `file:line`, `file#row`): errors name the line."""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from growdsl.errors import GrowdslError
from growdsl.files import not_plain, parse_json, read_json

MAX_DOCUMENT = 256 * 2**20  # characters of one document (a .txt file, a .jsonl line)


class SourceError(GrowdslError, ValueError):
    """Input that cannot be read as documents; the message names the file (and line)."""


@dataclass(frozen=True)
class Source:
    path: Path
    kind: str  # "text", "jsonl", "jsonl.gz", "jsonl.zst", "parquet", "arrow"

    @property
    def size(self) -> int:
        return self.path.stat().st_size


KINDS = {".txt": "text", ".jsonl": "jsonl", ".parquet": "parquet", ".arrow": "arrow"}


BINARY = (b"\x1f\x8b", b"\x28\xb5\x2f\xfd", b"PAR1", b"BZh", b"\xfd7zXZ", b"PK\x03\x04")  # gz zst parquet bz2 xz zip


def find(paths: list[Path]) -> list[Source]:
    """The sources under `paths`, in a fixed order (sorted): folders are searched for the kinds above;
    a file named explicitly is read as text unless it is binary (compressed otherwise, say). Links are
    followed, but every folder and file is taken once however many ways lead to it (a link back up
    the tree would otherwise repeat the corpus, and put copies of held-out text into training)."""
    found: list[Source] = []
    seen: set[tuple[int, int]] = set()
    for path in sorted(paths):
        if path.is_dir():
            found += _folder(path, seen)
        elif _first_time(path, seen):
            kind = _kind(path)
            if kind is None:
                with path.open("rb") as f:
                    head = f.read(4096)
                if head.startswith(BINARY) or b"\x00" in head:
                    raise SourceError(
                        f"{path} is not text, nor a format growdsl reads (.txt, .jsonl, .jsonl.gz, .jsonl.zst, "
                        f".parquet, a saved dataset's folder)"
                    )
            found.append(Source(path, kind or "text"))
    return found


def _first_time(path: Path, seen: set[tuple[int, int]]) -> bool:
    """Whether `path` (a folder, or a plain file: anything else is refused) is met for the first time."""
    if not path.is_dir():
        problem = not_plain(path)
        if problem:
            raise SourceError(problem)
    info = path.stat()
    key = (info.st_dev, info.st_ino)
    if key in seen:
        return False
    seen.add(key)
    return True


def _folder(folder: Path, seen: set[tuple[int, int]]) -> list[Source]:
    if not _first_time(folder, seen):
        return []
    if all((folder / n).is_file() for n in ("meta.json", "tokenizer.json", "val.bin")):
        return []  # a prepared folder (its val.jsonl is not a corpus)
    if (folder / "dataset_dict.json").is_file():
        return _dataset_dict(folder)
    if (folder / "state.json").is_file():
        return _saved_dataset(folder)
    found = []
    for child in sorted(folder.iterdir()):
        if child.is_dir():
            found += _folder(child, seen)
        elif (kind := _kind(child)) and _first_time(child, seen):
            found.append(Source(child, kind))
    return found


def _dataset_dict(folder: Path) -> list[Source]:
    """A saved DatasetDict: its train split (the others are not training text)."""
    try:
        splits = read_json(folder / "dataset_dict.json")["splits"]
    except (ValueError, KeyError, TypeError, OSError):
        raise SourceError(f"{folder / 'dataset_dict.json'} is not a saved dataset's split list") from None
    if "train" not in splits:
        raise SourceError(
            f"{folder} has no train split (it has {', '.join(map(str, splits))}): give the split's folder"
        )
    return _saved_dataset(folder / "train")


def _saved_dataset(folder: Path) -> list[Source]:
    """A saved Dataset: the arrow files its state.json names (not the caches `map` leaves beside them)."""
    try:
        files = [f["filename"] for f in read_json(folder / "state.json")["_data_files"]]
    except (ValueError, KeyError, TypeError, OSError):
        raise SourceError(f"{folder / 'state.json'} is not a saved dataset's state") from None
    if not all(isinstance(f, str) and f == Path(f).name for f in files):
        raise SourceError(f"{folder / 'state.json'} names files outside its folder")
    return [Source(folder / f, "arrow") for f in files]


def _kind(path: Path) -> str | None:
    name = path.name
    for suffix in (".jsonl.gz", ".jsonl.zst"):
        if name.endswith(suffix):
            return suffix[1:]
    return KINDS.get(path.suffix)


def documents(sources: list[Source]) -> Iterator[tuple[str, str]]:
    """(name, text) of every non-empty document, source by source."""
    for source in sources:
        for name, text in _read(source):
            if text.strip():
                yield name, text


def _read(source: Source) -> Iterator[tuple[str, str]]:
    """The documents of one source; a damaged file is a SourceError naming it, never a traceback."""
    try:
        yield from _documents_of(source)
    except SourceError:
        raise
    except (OSError, EOFError, ValueError, UnicodeError, zlib.error) as e:  # truncated or corrupt archives, ...
        raise SourceError(f"{source.path}: cannot be read as {source.kind}: {e}") from None
    except Exception as e:  # zstandard's and pyarrow's own errors
        if type(e).__module__.split(".")[0] not in ("zstandard", "pyarrow"):
            raise
        raise SourceError(f"{source.path}: cannot be read as {source.kind}: {e}") from None


def _documents_of(source: Source) -> Iterator[tuple[str, str]]:
    path = source.path
    if source.kind == "text":
        if path.stat().st_size > MAX_DOCUMENT:
            raise SourceError(
                f"{path} is one document of {path.stat().st_size / 2**20:,.0f} MiB: growdsl reads documents of up to "
                f"{MAX_DOCUMENT // 2**20} MiB; split it (a file per document, or a .jsonl of them)"
            )
        yield str(path), path.read_text(encoding="utf-8", errors="replace")
    elif source.kind.startswith("jsonl"):
        with _open_lines(source) as lines:
            for i, line in enumerate(iter(lambda: lines.readline(MAX_DOCUMENT + 2), ""), 1):
                if len(line.rstrip("\r\n")) > MAX_DOCUMENT:  # a line with no end (a small .gz may inflate so)
                    raise SourceError(f"{path}:{i}: a line of more than {MAX_DOCUMENT // 2**20} MiB: not a document")
                if line.strip():
                    yield f"{path}:{i}", jsonl_text(line, f"{path}:{i}")
    elif source.kind == "parquet":
        yield from _parquet(path)
    else:
        yield from _arrow(path)


def _open_lines(source: Source):
    path = source.path
    if source.kind == "jsonl.gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    if source.kind == "jsonl.zst":
        return io.TextIOWrapper(_Zstd(path), encoding="utf-8", errors="replace")
    return path.open(encoding="utf-8", errors="replace")


class _Zstd(io.RawIOBase):
    """A .zst file's text, frame after frame; a file that ends inside a frame is an error (zstandard's
    stream reader would end quietly, dropping the rest)."""

    def __init__(self, path: Path):
        try:
            import zstandard
        except ImportError:
            raise SourceError(f"{path}: reading .zst needs the zstandard package: pip install zstandard") from None
        self.path, self.file, self.zstd = path, path.open("rb"), zstandard
        self.decoder = zstandard.ZstdDecompressor().decompressobj()
        self.buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, into) -> int:
        while not self.buffer:
            chunk = self.file.read(1 << 20)
            if not chunk:
                if not self.decoder.eof and self.decoder.unused_data == b"":
                    raise SourceError(f"{self.path} ends inside a compressed frame: the file is truncated")
                return 0
            if self.decoder.eof:  # the next frame
                chunk = self.decoder.unused_data + chunk
                self.decoder = self.zstd.ZstdDecompressor().decompressobj()
            self.buffer = self.decoder.decompress(chunk)
        n = min(len(into), len(self.buffer))
        into[:n], self.buffer = self.buffer[:n], self.buffer[n:]
        return n

    def close(self) -> None:
        self.file.close()
        super().close()


def jsonl_text(line: str, where: str) -> str:
    try:
        record = parse_json(line)
    except ValueError as e:
        raise SourceError(f"{where}: not JSON ({e})") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise SourceError(f'{where}: a .jsonl line must be an object with a string "text"')
    text = record["text"]
    if "\\u" in line:  # only an escape can make a lone surrogate, which no text encoding holds
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise SourceError(f"{where}: its text holds {text[e.start]!r}, half of a character: not text") from None
    return text


def _parquet(path: Path) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow's ArrowInvalid
        raise SourceError(f"{path} is not a parquet file: {e}") from None
    yield from _rows(path, table.schema_arrow, table.iter_batches(columns=["text"], batch_size=1024))


def _arrow(path: Path) -> Iterator[tuple[str, str]]:
    import pyarrow as pa

    try:
        reader = pa.ipc.open_stream(pa.memory_map(str(path)))
    except Exception as e:  # pyarrow's ArrowInvalid
        raise SourceError(f"{path} is not a saved dataset's arrow file: {e}") from None
    yield from _rows(path, reader.schema, reader)


def _rows(path: Path, schema, batches) -> Iterator[tuple[str, str]]:
    """Each row's "text" (a string column, checked before the first batch is read), named file#row."""
    import pyarrow as pa

    if "text" not in schema.names:
        raise SourceError(f'{path} has no "text" column (it has {", ".join(schema.names)})')
    kind = schema.field("text").type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise SourceError(f'{path}: its "text" column holds {kind}, not strings')
    row = 0
    for batch in batches:
        for text in batch.column("text").to_pylist():
            row += 1
            yield f"{path}#{row}", text or ""
