"""The tokenizer a corpus is prepared with, from what the user has: a byte-level BPE trained on the
corpus (`bpe:N`), a Hugging Face `tokenizer.json` or tokenizer folder, or a SentencePiece `.model`
(Llama-2's 32k), converted once into the `tokenizers` library's form and checked to encode the
corpus exactly as SentencePiece does.

Every tokenizer comes with its document conventions (`Specials`): the token that ends a document
(always) and the one that starts it, where the tokenizer's own convention adds one (Llama's <s>).
A prepared folder keeps `tokenizer.json` (what training, eval and export read),
`tokenizer_config.json` (the conventions, in Hugging Face's terms) and, for SentencePiece, the
original `tokenizer.model`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer

from growdsl.errors import GrowdslError
from growdsl.files import FileProblem, parse_json, read_bytes, read_json

TOKENIZER_LIMIT = 512 * 2**20  # the largest tokenizer.json known is a few tens of MB
MAX_VOCAB = 2**24  # token ids (the largest vocabularies in use are ~256K)

EOT = "<|endoftext|>"  # the end-of-document token of the BPE tokenizers growdsl trains
END_NAMES = ("</s>", EOT, "<|end_of_text|>", "<eos>", "<|eos|>")  # what other tokenizers call theirs
CONFIG = "tokenizer_config.json"


class TokenizerError(GrowdslError, ValueError):
    """A tokenizer that cannot be used; the message names the file and says why."""


@dataclass(frozen=True)
class Specials:
    """A document is [bos] + its tokens + [eos]."""

    eos: str
    bos: str | None = None


@dataclass
class DocumentTokenizer:
    """A tokenizer and its document conventions (the tokens that start and end a document), as a
    corpus is prepared with it, with the files kept beside its tokenizer.json."""

    tokenizer: Tokenizer
    specials: Specials
    kind: str  # "bpe" (trained here), "tokenizer.json", "sentencepiece"
    files: dict[str, bytes] = field(default_factory=dict)  # kept beside tokenizer.json (tokenizer.model)

    @property
    def vocab_size(self) -> int:
        """The highest id + 1: what a model's embedding must hold (ids need not be contiguous)."""
        return max(self.tokenizer.get_vocab(with_added_tokens=True).values()) + 1

    def id(self, token: str | None) -> int | None:
        return None if token is None else self.tokenizer.token_to_id(token)

    def documents(self, texts: list[str]) -> list[np.ndarray]:
        """Each text as [bos] + tokens + [eos] (the tokenizer's own templates left out: these are
        the conventions), in uint16 or uint32; encoded on all cores."""
        dtype = np.uint16 if self.vocab_size <= 2**16 else np.uint32
        head = [] if self.specials.bos is None else [self.id(self.specials.bos)]
        tail = [self.id(self.specials.eos)]
        self.tokenizer.encode_special_tokens = True  # a "</s>" in the text is text, as SentencePiece reads it
        encoded = self.tokenizer.encode_batch(texts, add_special_tokens=False)
        return [np.array(head + e.ids + tail, dtype=dtype) for e in encoded]

    def config(self) -> dict:
        """tokenizer_config.json: the conventions, as Hugging Face's tokenizers read them."""
        return {
            "tokenizer_class": "LlamaTokenizerFast" if self.kind == "sentencepiece" else "PreTrainedTokenizerFast",
            "bos_token": self.specials.bos,
            "eos_token": self.specials.eos,
            "add_bos_token": self.specials.bos is not None,
            "add_eos_token": False,
            "growdsl_tokenizer": self.kind,
        }


def match_template(chosen: DocumentTokenizer) -> None:
    """Make the tokenizer's own template say what `chosen.specials` says (a BOS before a text, or
    nothing), so that a Hugging Face user of an exported model encodes as training did."""
    from tokenizers import processors

    bos = chosen.specials.bos
    if bos is None:
        chosen.tokenizer.post_processor = None
    else:
        chosen.tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, chosen.id(bos))]
        )


def parse(spec: str) -> tuple[str, int | Path]:
    """`bpe:N` -> ("bpe", N); anything else is a path -> ("file", Path)."""
    if spec.startswith("bpe:"):
        try:
            size = int(spec[4:])
        except ValueError:
            size = 0
        if not 260 <= size <= 2**20:
            raise TokenizerError(f"--tokenizer {spec}: bpe:N takes a vocabulary of 260 to {2**20:,} entries")
        return "bpe", size
    path = Path(spec)
    if not path.exists():
        raise TokenizerError(
            f"--tokenizer {spec}: no such file or folder (give bpe:N, a tokenizer.json, a Hugging Face "
            f"tokenizer folder, or a SentencePiece .model)"
        )
    return "file", path


def train_bpe(texts, vocab_size: int) -> DocumentTokenizer:
    """A byte-level BPE trained on `texts`, ending documents with EOT."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(texts, trainer)
    return DocumentTokenizer(tokenizer, Specials(EOT), "bpe")


def load(path: Path) -> DocumentTokenizer:
    """An existing tokenizer: a tokenizer.json, a folder holding one (or a SentencePiece model:
    tokenizer.model, or Mistral's tokenizer.model.v1 and the like), or a SentencePiece model file.
    A file is told by its content (JSON text, or SentencePiece's binary), whatever its name."""
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return _from_json(path / "tokenizer.json", path / CONFIG)
        models = sorted(p for p in path.glob("tokenizer.model*") if p.is_file())
        if len(models) > 1:
            names = ", ".join(p.name for p in models)
            raise TokenizerError(f"{path} holds several SentencePiece models ({names}): name the one to use")
        if models:
            return _from_sentencepiece(models[0])
        raise TokenizerError(f"{path} holds neither tokenizer.json nor a SentencePiece tokenizer.model")
    if _read(path).lstrip()[:1] == b"{":
        return _from_json(path, path.with_name(CONFIG))
    return _from_sentencepiece(path)


def read_prepared(directory: Path) -> tuple[Tokenizer, Specials]:
    """A prepared folder's (or run directory's) tokenizer and conventions; a folder written before
    tokenizer_config.json existed ends documents with EOT and starts them with nothing."""

    file = directory / "tokenizer.json"
    tokenizer = _tokenizer_json(file)
    tokenizer.encode_special_tokens = True  # text that spells a special token is text
    config = directory / CONFIG
    if not config.is_file():
        return tokenizer, Specials(EOT)
    try:
        raw = read_json(config)
        eos = _token(raw.get("eos_token"))
        bos = _token(raw.get("bos_token")) if raw.get("add_bos_token") else None
    except (ValueError, AttributeError, UnicodeDecodeError):
        raise TokenizerError(f"{config} is not a tokenizer config") from None
    if eos is None:
        raise TokenizerError(f"{config} names no eos_token: growdsl ends every document with it")
    specials = Specials(eos, bos)
    for token in (specials.eos, specials.bos):
        if token is not None and tokenizer.token_to_id(token) is None:
            raise TokenizerError(f"{config} names {token!r}, which {file} does not have")
    return tokenizer, specials


def _tokenizer_json(file: Path) -> Tokenizer:
    """A tokenizer.json, its token ids checked before the tokenizers library sees them (an id near 1e9
    makes it allocate a table that size and abort the process)."""
    from tokenizers import Tokenizer

    text = _read(file)
    try:
        raw = parse_json(text)
        vocab = raw["model"]["vocab"]
        ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))  # BPE, WordPiece; Unigram
        ids += [t["id"] for t in raw.get("added_tokens") or []]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise TokenizerError(f"{file} is not a Hugging Face tokenizer.json: {str(e).splitlines()[0][:160]}") from None
    if not all(isinstance(i, int) and 0 <= i < MAX_VOCAB for i in ids):
        raise TokenizerError(f"{file} has token ids outside 0 to {MAX_VOCAB:,}: not a tokenizer growdsl reads")
    if len(set(ids)) < 2:
        raise TokenizerError(f"{file} has {len(set(ids))} token(s): a tokenizer needs text tokens and an end token")
    try:
        return Tokenizer.from_str(text.decode())
    except Exception as e:  # the tokenizers library raises its own Exception
        raise TokenizerError(f"{file} is not a Hugging Face tokenizer.json: {str(e).splitlines()[0]}") from None


def _read(file: Path) -> bytes:
    """A tokenizer file: a plain file (a FIFO would block the reader forever) of a sane size."""
    try:
        return read_bytes(file, limit=TOKENIZER_LIMIT)
    except FileProblem as e:
        raise TokenizerError(str(e)) from None
    except OSError as e:
        raise TokenizerError(f"{file} cannot be read: {e.strerror}") from None


def _token(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    if value is not None and not isinstance(value, str):
        raise ValueError(value)
    return value


def _from_json(file: Path, config: Path) -> DocumentTokenizer:
    tokenizer = _tokenizer_json(file)
    bos = eos = None
    if config.is_file():  # a Hugging Face folder says what its ends are
        try:
            raw = read_json(config)
            eos, bos = _token(raw.get("eos_token")), _token(raw.get("bos_token"))
            add_bos = raw.get("add_bos_token")
        except (ValueError, AttributeError, UnicodeDecodeError):
            raise TokenizerError(f"{config} is not a tokenizer config") from None
        if add_bos is None:  # the template decides, as below
            bos = _template_bos(tokenizer)
        elif not add_bos:
            bos = None
    else:
        bos = _template_bos(tokenizer)
    if eos is None:
        specials = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
        eos = next((name for name in END_NAMES if name in specials), None)
    if eos is None or tokenizer.token_to_id(eos) is None:
        raise TokenizerError(
            f"{file}: no end-of-document token found (looked for {', '.join(END_NAMES)}"
            f"{' and ' + str(config) if config.is_file() else ''}): give a tokenizer folder whose "
            f"{CONFIG} names its eos_token"
        )
    if bos is not None and tokenizer.token_to_id(bos) is None:
        raise TokenizerError(f"{config} names bos_token {bos!r}, which {file} does not have")
    return DocumentTokenizer(tokenizer, Specials(eos, bos), "tokenizer.json")


def _template_bos(tokenizer) -> str | None:
    """The token the tokenizer's own template puts before a text (Llama's <s>), if it puts one."""
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode("a").ids
    if len(full) > len(plain) and full[len(full) - len(plain) :] == plain and full[0] != plain[0]:
        return tokenizer.id_to_token(full[0])
    return None


def _from_sentencepiece(file: Path) -> DocumentTokenizer:
    """A SentencePiece BPE model (Llama-2, Mistral) as a `tokenizers` BPE with byte fallback: the
    merges follow the pieces' scores, spaces become ▁ with one prepended, as SentencePiece does."""
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        raise TokenizerError(
            "a SentencePiece .model needs the sentencepiece package: pip install sentencepiece protobuf"
        ) from None
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(_read(file))
    except TokenizerError:
        raise
    except Exception:  # protobuf's DecodeError
        raise TokenizerError(f"{file} is not a SentencePiece model") from None
    if not proto.pieces:
        raise TokenizerError(f"{file} is not a SentencePiece model (no pieces)")
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    plain = norm.name in ("identity", "") and not norm.remove_extra_whitespaces
    if spec.model_type != sentencepiece_model_pb2.TrainerSpec.BPE or not plain:
        kind = sentencepiece_model_pb2.TrainerSpec.ModelType.Name(spec.model_type)
        normalized = f"{norm.name} normalization" + (", whitespace collapsed" if norm.remove_extra_whitespaces else "")
        raise TokenizerError(
            f"{file} is a SentencePiece {kind} model with {normalized}: growdsl reads BPE models that keep the "
            f"text as it is (Llama's, Mistral's); convert this one to a tokenizer.json with transformers and give that"
        )
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    _check_pieces(file, pieces, spec, sentencepiece_model_pb2.ModelProto.SentencePiece)
    vocab = {piece: i for i, (piece, _, _) in enumerate(pieces)}
    merges = []
    for merged, score, kind in pieces:
        if kind != sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL:
            continue
        local = [(merged[:k], merged[k:]) for k in range(1, len(merged)) if merged[:k] in vocab and merged[k:] in vocab]
        merges += [(score, vocab[merged], vocab[left], vocab[right], left, right) for left, right in local]
    merges.sort(key=lambda m: (-m[0], m[1], m[2], m[3]))  # by score; ties as transformers' converter
    unk = pieces[spec.unk_id][0] if 0 <= spec.unk_id < len(pieces) else None
    model = models.BPE(
        vocab, [(m[4], m[5]) for m in merges], unk_token=unk, fuse_unk=True, byte_fallback=spec.byte_fallback
    )
    tokenizer = Tokenizer(model)
    steps = [normalizers.Prepend("▁")] if norm.add_dummy_prefix else []
    tokenizer.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(" ", 1, 0)] if norm.add_dummy_prefix else [])
    )
    control = sentencepiece_model_pb2.ModelProto.SentencePiece
    special = [p for p, _, kind in pieces if kind in (control.CONTROL, control.UNKNOWN)]
    tokenizer.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in special])

    def named(i: int) -> str | None:
        return pieces[i][0] if 0 <= i < len(pieces) else None

    eos, bos = named(spec.eos_id), named(spec.bos_id)
    if eos is None:
        raise TokenizerError(f"{file} has no end-of-sentence piece: growdsl needs one to end documents")
    if bos is not None:  # as Llama's tokenizer.json: a text starts with <s> (growdsl adds it itself)
        from tokenizers import processors

        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, spec.bos_id)]
        )
    return DocumentTokenizer(tokenizer, Specials(eos, bos), "sentencepiece", {"tokenizer.model": _read(file)})


MAX_PIECE = 256  # characters of one SentencePiece piece (Llama's longest is 16)


def _check_pieces(file: Path, pieces: list, spec, kinds) -> None:
    """Pieces a BPE can be made of: each once, none empty or huge (its merges are found by splitting
    it at every place), the 256 byte pieces if it falls back on bytes, and its end of sentence a
    control piece (an ordinary one, say '▁', would end every document where it stands)."""
    seen: set[str] = set()
    for piece, _, _ in pieces:
        if not piece or len(piece) > MAX_PIECE or piece in seen:
            what = (
                "an empty piece"
                if not piece
                else f"the piece {piece[:40]!r} "
                + ("twice" if piece in seen else f"of {len(piece):,} characters (at most {MAX_PIECE})")
            )
            raise TokenizerError(f"{file} holds {what}: not a SentencePiece BPE model growdsl reads")
        seen.add(piece)
    if spec.byte_fallback and sum(kind == kinds.BYTE for _, _, kind in pieces) != 256:
        raise TokenizerError(f"{file} falls back on bytes but lacks the 256 byte pieces <0x00>..<0xFF>")
    if 0 <= spec.eos_id < len(pieces) and pieces[spec.eos_id][2] != kinds.CONTROL:
        raise TokenizerError(
            f"{file}: its end-of-sentence id {spec.eos_id} is the ordinary piece {pieces[spec.eos_id][0]!r}, which "
            f"would end a document wherever it stands: not a model growdsl reads"
        )


def check_sentencepiece(chosen: DocumentTokenizer, texts: Iterable[tuple[str, str]], limit: int = 2_000_000) -> None:
    """The converted tokenizer must encode the corpus as SentencePiece itself does: compared on the
    (name, text) pieces given, up to `limit` characters (a difference names the first that differs)."""
    import sentencepiece

    try:
        processor = sentencepiece.SentencePieceProcessor(model_proto=chosen.files["tokenizer.model"])
    except RuntimeError as e:  # SentencePiece's own check of the model
        raise TokenizerError(f"SentencePiece refuses the model: {str(e).splitlines()[0][:200]}") from None
    size = 0
    batch = []
    for name, text in texts:
        batch.append((name, text))
        size += len(text)
        if size >= limit:
            break
    chosen.tokenizer.encode_special_tokens = True
    ours = chosen.tokenizer.encode_batch([t for _, t in batch], add_special_tokens=False)
    for (name, text), mine in zip(batch, ours):
        theirs = processor.encode(text)
        if mine.ids != theirs:
            at = next((i for i, (a, b) in enumerate(zip(mine.ids, theirs)) if a != b), min(len(mine.ids), len(theirs)))
            raise TokenizerError(
                f"the SentencePiece model does not convert exactly: {name} encodes differently from token {at} on "
                f"({theirs[at : at + 5]} by SentencePiece, {mine.ids[at : at + 5]} converted)"
            )
