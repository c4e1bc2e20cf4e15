"""Training data: a corpus tokenized once into memory-mapped token files with a held-out split,
and a deterministic stream over them.

`prepare` holds out a share of the corpus (by size, with a floor; whole documents where there are
enough of them, else pieces of all of them: `split`), cuts the rest into pieces of a few paragraphs
and shuffles them (so any stretch of the stream mixes the corpus rather than following one long
document), tokenizes them with a BPE trained on them or a tokenizer the user has
(growdsl.runtime.tokenizer), and writes train.bin / val.bin (uint16 or uint32 token ids, every piece
[bos] + tokens + [eos] as the tokenizer's conventions say), tokenizer.json and tokenizer_config.json,
val.jsonl (the held-out documents' text, for `growdsl eval`), meta.json. The stream reads the token file
front to back: its whole state is one integer, the tokens consumed so far, so a grown model goes
on exactly where its base stopped and a resumed run at the exact next token."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from growdsl.plan.data import DataError, read_meta
from growdsl.runtime import corpora
from growdsl.runtime import tokenizer as tokenizers
from growdsl.runtime.corpora import HOME

DEFAULT_VOCAB = 4096  # the tiny preset's: a small head keeps a CPU step around 0.1 s
DEFAULT = HOME / "data" / f"shakespeare-{DEFAULT_VOCAB}-v2"  # v2: the held-out split sized by characters (cli.py too)
PIECE_CHARS = 2000  # training documents are shuffled in pieces of a few paragraphs
HOLDOUT_FLOOR = 400_000  # characters held out at least (~100K tokens or more): a validation set that means something
MIN_HELDOUT_DOCUMENTS = 10


@dataclass(frozen=True)
class Meta:
    vocab_size: int
    eot_id: int
    dtype: str
    train_tokens: int
    val_tokens: int
    documents: int
    val_documents: int  # held-out documents, or pieces of documents (holdout_unit)
    sources_sha256: str
    holdout_unit: str = "documents"  # "documents" or "pieces" (see `split`)
    bos_id: int | None = None  # the token that starts every document, where the tokenizer's convention has one
    tokenizer: str = "bpe"  # trained here ("bpe"), or given: "tokenizer.json", "sentencepiece"


def read_documents(paths: list[Path]) -> list[tuple[str, str]]:
    """(name, text) of every document: a .txt file is one, a .jsonl line with "text" is one."""
    docs = []
    for path in sorted(paths):
        if path.is_dir():
            docs += read_documents(
                [p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl") and not (p.parent / "meta.json").exists()]
            )  # not a prepared folder's val.jsonl
        elif path.suffix == ".jsonl":
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
                if line.strip():
                    docs.append((f"{path}:{i + 1}", _jsonl_text(line, f"{path}:{i + 1}")))
        else:
            docs.append((str(path), path.read_text(encoding="utf-8", errors="replace")))
    return [(name, text) for name, text in docs if text.strip()]


def _jsonl_text(line: str, where: str) -> str:
    try:
        record = json.loads(line)
    except ValueError as e:
        raise DataError(f"{where}: not JSON ({e})") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        raise DataError(f'{where}: a .jsonl line must be an object with a string "text"')
    return record["text"]


def prepare(
    paths: list[Path],
    out: Path,
    vocab_size: int = 8192,
    holdout: float = 0.05,
    seed: int = 0,
    tokenizer: str | None = None,
) -> Meta:
    """Tokenize `paths` into the prepared folder `out` with `tokenizer` (see growdsl.runtime.tokenizer:
    bpe:N or a file; default a BPE of `vocab_size` trained on the corpus), written whole into a fresh
    folder beside `out` and swapped in at the end: `out` is the old prepared folder or the new one,
    never a mix."""
    kind, what = tokenizers.parse(tokenizer or f"bpe:{vocab_size}")
    chosen = tokenizers.load(what) if kind == "file" else None  # a bad tokenizer is refused before any work
    _replaceable(out, paths)
    for stale in out.parent.glob(f".{out.name}.partial-*"):  # left by a prepare that was killed
        shutil.rmtree(stale, ignore_errors=True)
    fresh = out.with_name(f".{out.name}.partial-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    try:
        meta = _prepare(paths, fresh, chosen or int(what), holdout, seed)
        if out.exists():
            out.replace(old)
        fresh.replace(out)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return meta


PREPARED = {"meta.json", "train.bin", "val.bin", "val.jsonl", "tokenizer.json", tokenizers.CONFIG, "tokenizer.model"}


def _replaceable(out: Path, sources: list[Path]) -> None:
    """`out` may be written: it does not exist, is empty, or is a prepared folder holding nothing
    else; and no source lies inside it (it is replaced whole)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise DataError(f"{out} is not a folder: give another --out")
    if out.is_dir():
        names = {p.name for p in out.iterdir()}
        if names and ("meta.json" not in names or not names <= PREPARED):
            extra = sorted(names - PREPARED) or sorted(names)
            raise DataError(
                f"{out} holds {extra[0]}, which is not part of a prepared data folder: nothing in it is "
                f"replaced; give another --out"
            )
    inside = [p for p in sources if out.resolve() in p.resolve().parents or p.resolve() == out.resolve()]
    if inside:
        raise DataError(f"{inside[0]} lies inside --out {out}, which is replaced whole: give another --out")


def _prepare(paths: list[Path], out: Path, tokenizer: tokenizers.Chosen | int, holdout: float, seed: int) -> Meta:
    docs = read_documents(paths)
    if len(docs) < 2:
        raise DataError("a corpus needs at least two documents (one is held out)")
    rng = random.Random(seed)
    rng.shuffle(docs)
    val, train, unit = split(docs, holdout, rng)
    train = [(name, piece) for name, text in train for piece in _pieces(text)]
    rng.shuffle(train)
    if isinstance(tokenizer, int):
        chosen = tokenizers.train_bpe((text for _, text in train), tokenizer)
    else:
        chosen = tokenizer
        if chosen.kind == "sentencepiece":
            tokenizers.check_sentencepiece(chosen, docs)

    out.mkdir(parents=True)
    counts = {}
    for split_name, part in (("train", train), ("val", val)):
        tokens = np.concatenate(chosen.documents([t for _, t in part]))
        _atomic_write(out / f"{split_name}.bin", tokens.tobytes())
        counts[split_name] = len(tokens)
    # the corpus's identity: its documents' contents, however their paths were spelled
    digest = hashlib.sha256("".join(sorted(hashlib.sha256(t.encode()).hexdigest() for _, t in docs)).encode())
    meta = Meta(
        chosen.vocab_size,
        chosen.id(chosen.specials.eos),
        "uint16" if chosen.vocab_size <= 2**16 else "uint32",
        counts["train"],
        counts["val"],
        len(docs),
        len(val),
        digest.hexdigest(),
        unit,
        chosen.id(chosen.specials.bos),
        chosen.kind,
    )
    _atomic_write(out / "tokenizer.json", chosen.tokenizer.to_str().encode())
    _atomic_write(out / tokenizers.CONFIG, json.dumps(chosen.config(), indent=2).encode())
    for name, payload in chosen.files.items():
        _atomic_write(out / name, payload)
    held_out = "".join(json.dumps({"name": name, "text": text}) + "\n" for name, text in val)
    _atomic_write(out / "val.jsonl", held_out.encode())  # the held-out documents as text, for evaluation
    _atomic_write(out / "meta.json", json.dumps(asdict(meta), indent=2).encode())  # last: marks it complete
    return meta


def split(docs: list[tuple[str, str]], holdout: float, rng: random.Random):
    """(held out, training, unit): `holdout` of the corpus's characters, but at least HOLDOUT_FLOOR
    (a quarter of a smaller corpus), held out as whole documents when that takes at least
    MIN_HELDOUT_DOCUMENTS of them, else as pieces drawn from every document (a corpus of a few long
    works, like Shakespeare's plays, would otherwise be judged on two or three of them)."""
    total = sum(len(text) for _, text in docs)
    target = max(holdout * total, min(HOLDOUT_FLOOR, total / 4))
    taken = size = 0
    while size < target and taken < len(docs):
        size += len(docs[taken][1])
        taken += 1
    if MIN_HELDOUT_DOCUMENTS <= taken < len(docs):
        return docs[:taken], docs[taken:], "documents"
    pieces = [(f"{name}#{k + 1}", piece) for name, text in docs for k, piece in enumerate(_pieces(text))]
    rng.shuffle(pieces)
    taken = size = 0
    while size < target and taken < len(pieces) - 1:
        size += len(pieces[taken][1])
        taken += 1
    return pieces[:taken], pieces[taken:], "pieces"


def _pieces(text: str, min_chars: int = PIECE_CHARS) -> list[str]:
    """Consecutive paragraphs gathered into pieces of at least `min_chars` (the last may be short)."""
    pieces, current = [], []
    size = 0
    for paragraph in text.split("\n\n"):
        current.append(paragraph)
        size += len(paragraph)
        if size >= min_chars:
            pieces.append("\n\n".join(current))
            current, size = [], 0
    if current:
        pieces.append("\n\n".join(current))
    return [p for p in pieces if p.strip()]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def load_meta(directory: Path) -> Meta:
    """A prepared folder's meta.json, checked against the folder (growdsl.plan.data.read_meta): a
    DataError names what is missing or inconsistent."""
    raw = read_meta(directory)
    known = {f.name for f in fields(Meta)}
    try:
        return Meta(**{k: v for k, v in raw.items() if k in known})
    except TypeError as e:
        raise DataError(f"{directory / 'meta.json'} is not a prepared folder's meta.json: {e}") from None


def default_corpus(say: Callable[[str], None] = lambda line: None) -> Path:
    """The prepared default corpus (Shakespeare, 4k BPE), built on first use (saying so: it takes a
    while, once)."""
    if not (DEFAULT / "meta.json").exists() or not (DEFAULT / "val.jsonl").exists():
        say(
            f"the default corpus (Shakespeare) is not prepared yet: fetching it and training its "
            f"{DEFAULT_VOCAB:,}-token BPE tokenizer, once, into {DEFAULT} (about a minute)"
        )
        texts = corpora.fetch("shakespeare")
        shutil.rmtree(DEFAULT, ignore_errors=True)  # growdsl's own cache: whatever is there is incomplete
        prepare([texts], DEFAULT, vocab_size=DEFAULT_VOCAB)
        say(f"prepared the default corpus in {DEFAULT}")
    return DEFAULT


class HeldOut:
    """The held-out split as a fixed set of whole sequences spread evenly over all of it (not its
    first documents), the same for every run on this data: what the validation loss is measured on."""

    def __init__(self, path: Path, dtype: str):
        self.tokens = np.memmap(path, dtype=np.dtype(dtype), mode="r")
        self._cached: dict[tuple[int, int], tuple] = {}

    def digest(self) -> str:
        """What names this held-out split: runs validated on different splits do not compare."""
        return hashlib.sha256(np.asarray(self.tokens).tobytes()).hexdigest()[:16]

    def count(self, tokens: int, seq_len: int, multiple: int = 1) -> int:
        """How many sequences `sequences` gives: tokens // seq_len, as far as the split reaches,
        rounded down to a multiple of `multiple` (every process the same share)."""
        n = min(tokens // seq_len, max(0, len(self.tokens) - 1) // seq_len)
        return n - n % multiple

    def sequences(self, tokens: int, seq_len: int, multiple: int = 1):
        """(inputs, targets): `count(...)` sequences starting every (len - 1) // n tokens, so they
        never overlap; targets are the inputs shifted by one."""
        import torch

        n = self.count(tokens, seq_len, multiple)
        if (n, seq_len) not in self._cached:
            stride = (len(self.tokens) - 1) // max(n, 1)
            rows = np.stack([np.asarray(self.tokens[i * stride : i * stride + seq_len + 1]) for i in range(n)])
            ids = torch.from_numpy(rows.astype(np.int64)).reshape(n, seq_len + 1)
            self._cached[n, seq_len] = ids[:, :-1], ids[:, 1:]
        return self._cached[n, seq_len]


class TokenStream:
    """Batches of (inputs, targets) read front to back from a token file, wrapping at the end.

    `position` counts the tokens consumed (over all ranks); a batch of B sequences of T tokens
    consumes B*T. Rank r of R takes sequences [r*B/R, (r+1)*B/R) of each global batch."""

    def __init__(self, path: Path, dtype: str, position: int = 0):
        self.tokens = np.memmap(path, dtype=np.dtype(dtype), mode="r")
        if len(self.tokens) < 2:
            raise ValueError(f"{path} holds fewer than two tokens")
        self.position = position

    def next_batch(self, batch: int, seq_len: int, rank: int = 0, world: int = 1):
        import torch

        if batch % world:
            raise ValueError(f"batch {batch} does not split over {world} ranks")
        local = batch // world
        n = len(self.tokens) - 1  # the last token is only ever a target
        starts = [(self.position + (rank * local + i) * seq_len) % n for i in range(local)]
        rows = [self._window(s, seq_len + 1) for s in starts]
        self.position += batch * seq_len
        x = torch.from_numpy(np.stack(rows).astype(np.int64))
        return x[:, :-1], x[:, 1:]

    def _window(self, start: int, length: int) -> np.ndarray:
        end = start + length
        if end <= len(self.tokens):
            return np.asarray(self.tokens[start:end])
        return np.concatenate([self.tokens[start:], self.tokens[: end - len(self.tokens)]])
