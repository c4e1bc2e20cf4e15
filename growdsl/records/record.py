"""Reading a JSON record into its typed form: strict types (a count is an int, never a bool, a
float or a string), fields a newer growdsl added are left out, and the first thing wrong is said
in one line that names the file and the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, TypeVar

from pydantic import Field, TypeAdapter, ValidationError

# A count that indexes arrays and counters (positions, steps): int64. FLOPs are Python integers
# (a 7B run passes 2^63) and take `Whole`, up to far past any training run (the largest: ~1e26).
Count = Annotated[int, Field(ge=0, lt=2**63)]
Whole = Annotated[int, Field(ge=0, le=10**30)]
STRICT = {"strict": True, "extra": "ignore"}  # each record's __pydantic_config__

T = TypeVar("T")


class RecordError(ValueError):
    """A record that is not what its file must hold: `detail` names the field and what is wrong."""

    def __init__(self, file: Path, detail: str):
        super().__init__(f"{file}: {detail}")
        self.file, self.detail = file, detail


_ADAPTERS: dict[type, TypeAdapter] = {}  # built once per record type: building one takes milliseconds


def _adapter(kind: type) -> TypeAdapter:
    if kind not in _ADAPTERS:
        _ADAPTERS[kind] = TypeAdapter(kind)
    return _ADAPTERS[kind]


def parse(kind: type[T], raw: object, file: Path) -> T:
    """`raw` (JSON as growdsl.files.read_json reads it) as a `kind`, or RecordError."""
    try:
        # through JSON text: strict mode reads a JSON object as a record, and nothing else
        return _adapter(kind).validate_json(json.dumps(raw))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the record"
        value = f" ({str(first['input'])[:40]})" if first["type"] != "missing" else ""
        said = first["msg"].removeprefix("Value error, ").lower()
        raise RecordError(file, f"{where}: {said}{value}") from None
