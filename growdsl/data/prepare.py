"""Prepare a corpus: tokenize it once into token shards with a held-out split (the folder's layout
and meta.json: growdsl.records.data_folder; training reads it with growdsl.runtime.stream).

`prepare` streams the corpus (growdsl.data.sources: text, jsonl, compressed jsonl, parquet, saved
datasets) three times and never holds it in memory: it indexes the documents, holds out a share of
them (by size, with a floor; whole documents where there are enough of them, else pieces of all of
them: `split`), trains a BPE on the rest if asked (or takes the user's tokenizer,
growdsl.data.tokenizer), then tokenizes in batches on all cores: the held-out share into val.bin,
the rest cut into pieces of a few paragraphs scattered over shuffle buckets, each bucket shuffled into
a shard train-NNNNN.bin (so any stretch of the stream mixes the corpus rather than following one long
document). Every piece is [bos] + tokens + [eos] as the tokenizer's conventions say. Beside them:
tokenizer.json and tokenizer_config.json, val.jsonl (the held-out text, for `growdsl eval`), and
meta.json, written last."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from growdsl.data import corpora, sources
from growdsl.data import tokenizer as tokenizers
from growdsl.data.corpora import DEFAULT, DEFAULT_VOCAB
from growdsl.records.data_folder import DataError, DataMeta, Shard

PIECE_CHARS = 2000  # training documents are shuffled in pieces of a few paragraphs
HOLDOUT_FLOOR = 400_000  # characters held out at least (~100K tokens or more): a validation set that means something
MIN_HELDOUT_DOCUMENTS = 10


def prepare(
    paths: list[Path],
    out: Path,
    vocab_size: int = 8192,
    holdout: float = 0.05,
    seed: int = 0,
    tokenizer: str | None = None,
) -> DataMeta:
    """Tokenize `paths` into the prepared folder `out` with `tokenizer` (see growdsl.data.tokenizer:
    bpe:N or a file; default a BPE of `vocab_size` trained on the corpus), written whole into a fresh
    folder beside `out` and swapped in at the end: `out` is the old prepared folder or the new one,
    never a mix."""
    _, what = tokenizers.parse(tokenizer or f"bpe:{vocab_size}")
    # a tokenizer of the user's (a bad one is refused before any work), or the size of a BPE to train
    chosen = tokenizers.load(what) if isinstance(what, Path) else what
    _put_back_killed_swap(out)
    _replaceable(out, paths)
    for stale in out.parent.glob(f".{out.name}.partial-*"):  # left by a prepare that was killed
        if not _alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    fresh = out.with_name(f".{out.name}.partial-{os.getpid()}")
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    made = [p for p in out.parents if not p.exists()]
    try:
        meta = _prepare(paths, fresh, chosen, holdout, seed)
        if out.exists():
            out.replace(old)
        fresh.replace(out)
        made = []
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        for parent in made:  # a refused prepare leaves no folders behind
            try:
                parent.rmdir()
            except OSError:
                break
    return meta


def _put_back_killed_swap(out: Path) -> None:
    """A prepare killed between its two renames left no `out` and the old folder aside (`.NAME.old-PID`):
    it goes back, so that `out` is again the old folder, whole, before anything else happens. Where
    `out` was made again since, the old folder stays aside, untouched."""
    for old in sorted(out.parent.glob(f".{out.name}.old-*")):
        if not _alive(old.name.rsplit("-", 1)[-1]) and not out.exists() and not out.is_symlink():
            old.replace(out)


def _alive(pid: str) -> bool:
    """Whether a process of this number runs (a prepare still writing its folder)."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


PREPARED = {"meta.json", "train.bin", "val.bin", "val.jsonl", "tokenizer.json", tokenizers.CONFIG, "tokenizer.model"}


def _replaceable(out: Path, inputs: list[Path]) -> None:
    """`out` may be written: it does not exist, is empty, or is a prepared folder holding nothing
    else; and no source lies inside it (it is replaced whole)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise DataError(f"{out} is not a folder: give another --out")
    if out.is_dir():
        names = {p.name for p in out.iterdir()}
        foreign = {n for n in names if n not in PREPARED and not re.fullmatch(r"train-\d{5,}\.bin", n)}
        if names and ("meta.json" not in names or foreign):
            extra = sorted(foreign) or sorted(names)
            raise DataError(
                f"{out} holds {extra[0]}, which is not part of a prepared data folder: nothing in it is "
                f"replaced; give another --out"
            )
    inside = [p for p in inputs if out.resolve() in p.resolve().parents or p.resolve() == out.resolve()]
    if inside:
        raise DataError(f"{inside[0]} lies inside --out {out}, which is replaced whole: give another --out")


def _prepare(
    paths: list[Path], out: Path, tokenizer: tokenizers.DocumentTokenizer | int, holdout: float, seed: int
) -> DataMeta:
    """Three streaming passes over the sources, memory flat in the corpus's size: index the documents
    (sizes, digests, pieces), train the tokenizer if asked (on the training text), then tokenize in
    batches on all cores, the held-out share into val.bin and the training pieces scattered over
    shuffle buckets, each bucket then shuffled in memory into a shard."""
    srcs = sources.find(paths)
    index = _index(srcs)
    if index.count < 2:
        raise DataError("a corpus needs at least two documents (one is held out)")
    held, unit = split(index, holdout, random.Random(seed))
    if isinstance(tokenizer, int):
        training = (p for d, _, text in _stream(srcs, index) for k, p in enumerate(_pieces(text)) if not held(d, k))
        chosen = tokenizers.train_bpe(training, tokenizer)
    else:
        chosen = tokenizer
        if chosen.kind == "sentencepiece":  # on pieces, as they are encoded: a huge document is not encoded whole
            pieces = (
                (f"{name}#{k + 1}", p) for _, name, text in _stream(srcs, index) for k, p in enumerate(_pieces(text))
            )
            tokenizers.check_sentencepiece(chosen, pieces)
    tokenizers.match_template(chosen)  # Hugging Face users of the export get the conventions training had
    dtype = np.uint16 if chosen.vocab_size <= 2**16 else np.uint32
    out.mkdir(parents=True)
    buckets = max(1, -(-index.chars // SHARD_CHARS))  # by the whole corpus: the held-out share is small
    writer = _Writer(out, chosen, buckets, dtype, np.random.default_rng(seed), _Progress(index.chars))
    with (out / "val.jsonl").open("w") as held_text:  # the held-out text, for `growdsl eval`
        for d, name, text in _stream(srcs, index):
            if unit == "documents" and held(d, 0):
                writer.add(text, held=True)
                held_text.write(json.dumps({"name": name, "text": text}) + "\n")
            else:
                for k, piece in enumerate(_pieces(text)):
                    writer.add(piece, held=held(d, k))
                    if held(d, k):
                        held_text.write(json.dumps({"name": f"{name}#{k + 1}", "text": piece}) + "\n")
            writer.progress.document(len(text))
    shards = writer.finish(np.random.default_rng(seed + 1))
    eos = chosen.id(chosen.specials.eos)
    assert eos is not None  # every tokenizer growdsl takes has its end token (tokenizer.load checks it)
    meta = DataMeta(
        vocab_size=chosen.vocab_size,
        eot_id=eos,
        dtype="uint16" if dtype == np.uint16 else "uint32",
        train_tokens=sum(n for _, n in shards),
        val_tokens=writer.val_tokens,
        documents=index.count,
        val_documents=writer.val_units,
        sources_sha256=index.digest(),
        holdout_unit=unit,
        bos_id=chosen.id(chosen.specials.bos),
        tokenizer=chosen.kind,
        shards=[Shard(f, n) for f, n in shards],
    )
    _atomic_write(out / "tokenizer.json", chosen.tokenizer.to_str().encode())
    _atomic_write(out / tokenizers.CONFIG, json.dumps(chosen.config(), indent=2).encode())
    for name, payload in chosen.files.items():
        _atomic_write(out / name, payload)
    _atomic_write(out / "meta.json", json.dumps(asdict(meta), indent=2).encode())  # last: marks it complete
    return meta


SHARD_CHARS = 64_000_000  # training text per shuffle bucket and shard (~16-20M tokens): what one shuffle holds
BATCH_CHARS = 4_000_000  # text tokenized at once: encode_batch spreads it over all cores


class _Index:
    """What the first pass learns of every document, compactly: its size, its digest, its pieces'
    sizes. Some tens of bytes a document, never its text."""

    def __init__(self):
        self.sizes = array("Q")
        self.digests = bytearray()
        self.piece_start = array("Q", [0])
        self.piece_sizes = array("Q")

    def add(self, text: str) -> None:
        self.sizes.append(len(text))
        self.digests += hashlib.sha256(text.encode()).digest()
        self.piece_sizes.extend(len(p) for p in _pieces(text))
        self.piece_start.append(len(self.piece_sizes))

    @property
    def count(self) -> int:
        return len(self.sizes)

    @property
    def chars(self) -> int:
        return sum(self.sizes)

    def pieces(self, d: int) -> range:
        return range(self.piece_start[d + 1] - self.piece_start[d])

    def piece_size(self, d: int, k: int) -> int:
        return self.piece_sizes[self.piece_start[d] + k]

    def digest(self) -> str:
        """The corpus's identity: its documents' contents, however their paths were spelled."""
        each = sorted(self.digests[i : i + 32].hex() for i in range(0, len(self.digests), 32))
        return hashlib.sha256("".join(each).encode()).hexdigest()


def _index(srcs: list[sources.Source]) -> _Index:
    index = _Index()
    for _, text in sources.documents(srcs):
        index.add(text)
    return index


def _stream(srcs: list[sources.Source], index: _Index):
    """(document number, name, text) again, each checked against the first pass: a source that
    changes while it is prepared is an error, not a corpus that is half one and half another."""
    seen = 0
    for d, (name, text) in enumerate(sources.documents(srcs)):
        if d >= index.count or hashlib.sha256(text.encode()).digest() != index.digests[32 * d : 32 * d + 32]:
            raise DataError(f"{name} changed while it was being prepared: prepare again")
        seen = d + 1
        yield d, name, text
    if seen != index.count:
        raise DataError(
            f"the sources held {index.count} documents, then {seen}: one changed while it was being prepared"
        )


class _Writer:
    """Tokenizes what it is given in batches (all cores); held-out text goes to val.bin in order,
    each training piece to a random shuffle bucket (its tokens to the bucket's file, its length to a
    list), and `finish` shuffles every bucket's pieces into a shard."""

    def __init__(self, out: Path, chosen, buckets: int, dtype, rng, progress):
        self.out, self.chosen, self.dtype, self.rng, self.progress = out, chosen, dtype, rng, progress
        self.pending: list[tuple[str, bool]] = []
        self.pending_chars = 0
        self.val = (out / "val.bin").open("wb")
        self.val_tokens = self.val_units = 0
        self.buckets = [out / f".bucket-{k:05d}" for k in range(buckets)]  # opened per batch: no file limit
        self.lengths = [array("Q") for _ in range(buckets)]

    def add(self, text: str, held: bool) -> None:
        self.pending.append((text, held))
        self.pending_chars += len(text)
        if self.pending_chars >= BATCH_CHARS:
            self._flush()

    def _flush(self) -> None:
        encoded = self.chosen.documents([t for t, _ in self.pending])
        where = self.rng.integers(len(self.buckets), size=len(encoded))
        scattered: dict[int, list[bytes]] = {}
        for (_, held), ids, k in zip(self.pending, encoded, where):
            if held:
                self.val.write(ids.astype(self.dtype).tobytes())
                self.val_tokens += len(ids)
                self.val_units += 1
            else:
                scattered.setdefault(int(k), []).append(ids.astype(self.dtype).tobytes())
                self.lengths[k].append(len(ids))
            self.progress.tokens(len(ids))
        for k, chunks in scattered.items():
            with self.buckets[k].open("ab") as bucket:
                bucket.writelines(chunks)
        self.pending, self.pending_chars = [], 0

    def finish(self, rng) -> list[tuple[str, int]]:
        """Each bucket's pieces shuffled into a shard, train-NNNNN.bin; (file, tokens) of each."""
        self._flush()
        self.val.close()
        out: list[tuple[str, int]] = []
        for path, lengths in zip(self.buckets, self.lengths):
            if lengths:
                tokens = np.memmap(path, dtype=self.dtype, mode="r")  # read piece by piece, never whole
                ends = np.cumsum(np.asarray(lengths, dtype=np.int64))
                starts = ends - np.asarray(lengths, dtype=np.int64)
                name = f"train-{len(out):05d}.bin"
                with (self.out / name).open("wb") as shard:
                    for i in rng.permutation(len(lengths)):
                        shard.write(tokens[starts[i] : ends[i]].tobytes())
                out.append((name, int(ends[-1])))
                del tokens
            path.unlink(missing_ok=True)
        self.progress.done()
        return out


class _Progress:
    """Documents, tokens, MB/s and ETA on one line of a terminal's stderr, redrawn twice a second."""

    def __init__(self, total_chars: int, out=None):
        out = out or sys.stderr  # looked up now, not when the module was imported (it may have been replaced since)
        self.total, self.out, self.on = total_chars, out, out.isatty()
        self.chars = self.docs = self.toks = 0
        self.begin = self.last = time.monotonic()

    def document(self, chars: int) -> None:
        self.docs += 1
        self.chars += chars
        self._draw()

    def tokens(self, n: int) -> None:
        self.toks += n

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.on or (now - self.last < 0.5 and not force):
            return
        self.last = now
        rate = self.chars / max(now - self.begin, 1e-9)
        eta = (self.total - self.chars) / rate if rate else 0
        self.out.write(
            f"\r\x1b[Kprepare: {self.docs:,} documents, {self.toks:,} tokens, {rate / 1e6:.1f} MB/s, "
            f"ETA {int(eta) // 60}:{int(eta) % 60:02d}"
        )
        self.out.flush()

    def done(self) -> None:
        if self.on:
            self._draw(force=True)
            self.out.write("\n")


def split(index: _Index, holdout: float, rng: random.Random):
    """(held(document, piece) -> bool, unit): `holdout` of the corpus's characters, but at least
    HOLDOUT_FLOOR (a quarter of a smaller corpus), held out as whole documents when that takes at
    least MIN_HELDOUT_DOCUMENTS of them, else as pieces drawn from every document (a corpus of a few
    long works, like Shakespeare's plays, would otherwise be judged on two or three of them)."""
    total = index.chars
    target = max(holdout * total, min(HOLDOUT_FLOOR, total / 4))
    order = list(range(index.count))
    rng.shuffle(order)
    documents: set[int] = set()
    size = 0
    for d in order:  # a document that would overshoot the target by half stays in training
        if size >= target:
            break
        if size + index.sizes[d] <= max(1.5 * target, target + PIECE_CHARS):
            documents.add(d)
            size += index.sizes[d]
    if MIN_HELDOUT_DOCUMENTS <= len(documents) < len(order) and size >= target:
        return (lambda d, k: d in documents), "documents"
    pieces = [(d, k) for d in order for k in index.pieces(d)]
    rng.shuffle(pieces)
    taken = size = 0
    while size < target and taken < len(pieces) - 1:
        size += index.piece_size(*pieces[taken])
        taken += 1
    chosen = set(pieces[:taken])
    return (lambda d, k: (d, k) in chosen), "pieces"


def _pieces(text: str, min_chars: int = PIECE_CHARS) -> list[str]:
    """Consecutive paragraphs gathered into pieces of at least `min_chars` (the last may be short); a
    paragraph longer than twice that (text without blank lines) is cut at a line break or a space."""
    pieces, current = [], []
    size = 0
    for paragraph in (part for block in text.split("\n\n") for part in _cut(block, min_chars)):
        current.append(paragraph)
        size += len(paragraph)
        if size >= min_chars:
            pieces.append("\n\n".join(current))
            current, size = [], 0
    if current:
        pieces.append("\n\n".join(current))
    return [p for p in pieces if p.strip()]


def _cut(paragraph: str, size: int) -> list[str]:
    # cut by position: slicing off the rest at every cut would copy it each time (quadratic)
    parts, start = [], 0
    while len(paragraph) - start > 2 * size:
        window = (start + size, start + 2 * size)
        at = max(paragraph.rfind("\n", *window), paragraph.rfind(" ", *window))
        at = at if at > start else start + 2 * size
        parts.append(paragraph[start:at])
        start = at
    return [*parts, paragraph[start:]]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


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
