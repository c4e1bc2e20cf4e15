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
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


class SourceError(ValueError):
    """Input that cannot be read as documents; the message names the file (and line)."""


@dataclass(frozen=True)
class Source:
    path: Path
    kind: str  # "text", "jsonl", "jsonl.gz", "jsonl.zst", "parquet", "arrow"

    @property
    def size(self) -> int:
        return self.path.stat().st_size


KINDS = {".txt": "text", ".jsonl": "jsonl", ".parquet": "parquet"}


def find(paths: list[Path]) -> list[Source]:
    """The sources under `paths`, in a fixed order (sorted): folders are searched for the kinds above."""
    found: list[Source] = []
    for path in sorted(paths):
        if path.is_dir():
            found += _folder(path)
        else:
            found.append(Source(path, _kind(path) or "text"))  # a file named explicitly is read as text
    return found


def _folder(folder: Path) -> list[Source]:
    if (folder / "meta.json").exists():  # a prepared folder (its val.jsonl is not a corpus)
        return []
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        return [Source(p, "arrow") for p in sorted(folder.rglob("*.arrow"))]
    found = []
    for child in sorted(folder.iterdir()):
        if child.is_dir():
            found += _folder(child)
        elif _kind(child):
            found.append(Source(child, _kind(child)))
    return found


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
    path = source.path
    if source.kind == "text":
        yield str(path), path.read_text(encoding="utf-8", errors="replace")
    elif source.kind.startswith("jsonl"):
        with _open_lines(source) as lines:
            for i, line in enumerate(lines, 1):
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
        try:
            import zstandard
        except ImportError:
            raise SourceError(f"{path}: reading .zst needs the zstandard package: pip install zstandard") from None
        raw = zstandard.ZstdDecompressor().stream_reader(path.open("rb"))
        return io.TextIOWrapper(raw, encoding="utf-8", errors="replace")
    return path.open(encoding="utf-8", errors="replace")


def jsonl_text(line: str, where: str) -> str:
    try:
        record = json.loads(line)
    except ValueError as e:
        raise SourceError(f"{where}: not JSON ({e})") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise SourceError(f'{where}: a .jsonl line must be an object with a string "text"')
    return record["text"]


def _parquet(path: Path) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow's ArrowInvalid
        raise SourceError(f"{path} is not a parquet file: {e}") from None
    if "text" not in table.schema_arrow.names:
        raise SourceError(f'{path} has no "text" column (it has {", ".join(table.schema_arrow.names)})')
    row = 0
    for batch in table.iter_batches(columns=["text"], batch_size=1024):
        for text in batch.column(0).to_pylist():
            row += 1
            yield f"{path}#{row}", text or ""


def _arrow(path: Path) -> Iterator[tuple[str, str]]:
    import pyarrow as pa

    try:
        reader = pa.ipc.open_stream(pa.memory_map(str(path)))
    except Exception as e:  # pyarrow's ArrowInvalid
        raise SourceError(f"{path} is not a saved dataset's arrow file: {e}") from None
    if "text" not in reader.schema.names:
        raise SourceError(f'{path} has no "text" column (it has {", ".join(reader.schema.names)})')
    row = 0
    for batch in reader:
        for text in batch.column("text").to_pylist():
            row += 1
            yield f"{path}#{row}", text or ""
