"""`growdsl data prepare`: what to tokenize, with which tokenizer, into which folder; then prepare it
(growdsl.data.prepare) and say what it holds."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from growdsl.data import corpora
from growdsl.errors import GrowdslError, UsageError
from growdsl.files import unwritable_folder
from growdsl.records.data_folder import DataMeta, read_meta


@dataclass(frozen=True)
class PrepareRequest:
    sources: tuple[str, ...] = ()  # files or folders of a corpus; () for a named corpus
    corpus: str | None = None  # a named corpus (growdsl.data.corpora); default shakespeare without sources
    out: str | None = None  # default ./data, or the cache for a named corpus
    tokenizer: str | None = None  # bpe:N, a tokenizer file or folder, or a named tokenizer
    vocab: int | None = None  # the same as bpe:N
    holdout: float = 0.05


@dataclass(frozen=True)
class Prepared:
    folder: Path
    meta: DataMeta

    def summary(self) -> str:
        m = self.meta
        held = "held out" if m.holdout_unit == "documents" else "pieces of them held out"
        return (
            f"{self.folder}: {m.documents} documents ({m.val_documents} {held}), vocab {m.vocab_size}, "
            f"{m.train_tokens:,} training and {m.val_tokens:,} held-out tokens"
        )


def prepare_data(request: PrepareRequest) -> Prepared:
    """Prepare the request's corpus; UsageError for arguments that cannot be used, GrowdslError for a
    corpus or tokenizer that cannot be prepared. A refused prepare writes nothing."""
    from growdsl.data import prepare, tokenizer

    if request.vocab is not None and request.tokenizer:
        raise UsageError("give --tokenizer or --vocab, not both")
    if request.sources and request.corpus:
        raise UsageError("give PATHs or --corpus, not both")
    if not 0 < request.holdout <= 0.5:
        raise UsageError("--holdout must be above 0 and at most 0.5")
    spec = request.tokenizer or f"bpe:{corpora.DEFAULT_VOCAB if request.vocab is None else request.vocab}"
    name = spec  # what names a named corpus's default folder
    if spec in corpora.TOKENIZERS:
        spec = str(corpora.fetch_tokenizer(spec))  # a FetchError is the caller's to say
    try:
        kind, _ = tokenizer.parse(spec)
    except tokenizer.TokenizerError as e:
        raise UsageError(str(e)) from None
    if request.sources:
        paths, out = [_existing(p) for p in request.sources], Path(request.out or "data")
    else:
        corpus = request.corpus or "shakespeare"
        paths = [corpora.fetch(corpus)]  # a FetchError is the caller's to say
        out = Path(request.out) if request.out else _corpus_folder(corpus, name, spec, kind)
    why = unwritable_folder(out)
    if why:
        raise UsageError(f"--out: {why}")
    try:
        prepare.prepare(paths, out, holdout=request.holdout, tokenizer=spec)
    except (ValueError, UnicodeDecodeError) as e:  # a DataError, a TokenizerError, a SourceError
        raise GrowdslError(str(e)) from None
    except OSError as e:
        raise UsageError(f"cannot write {out}: {e.strerror}") from None
    return Prepared(out, read_meta(out))


def _existing(path: str) -> Path:
    if Path(path).exists():
        return Path(path)
    hub = re.fullmatch(r"[\w.-]+/[\w.-]+", path) and not path.startswith(".")
    hint = (
        ": if it names a Hugging Face hub dataset, growdsl never downloads (runs are offline): save it "
        "on a machine with the hub, datasets.load_dataset(NAME).save_to_disk(DIR), and give DIR"
        if hub
        else ""
    )
    raise UsageError(f"no such file or folder: {path}{hint}")


def _corpus_folder(corpus: str, name: str, spec: str, kind: str) -> Path:
    """Where a named corpus is prepared by default: in growdsl's cache, named by corpus and tokenizer."""
    if corpus == "shakespeare" and spec == f"bpe:{corpora.DEFAULT_VOCAB}":
        return corpora.DEFAULT
    tag = name.removeprefix("bpe:") if name.startswith("bpe:") else name
    return corpora.HOME / "data" / f"{corpus}-{tag if tag in corpora.TOKENIZERS or kind == 'bpe' else _file_tag(spec)}"


def _file_tag(path: str) -> str:
    """A tokenizer file's name and a short digest of its bytes: two tokenizer.json files never share a folder."""
    file = Path(path) / "tokenizer.json" if Path(path).is_dir() else Path(path)
    digest = hashlib.sha256(file.read_bytes()).hexdigest()[:8] if file.is_file() else "x"
    return f"{Path(path).stem}-{digest}"
