"""Tokenizers a user already has: a SentencePiece .model (converted, encoding exactly as SentencePiece
does), a Hugging Face tokenizer.json or folder; their document conventions (BOS/EOS) carried through
prepare, training, eval and export."""

import json
import shutil

import numpy as np
import pytest
from ops_helpers import TINY_RUN

from growdsl.cli import main
from growdsl.data import tokenizer as tokenizers
from growdsl.records.data_folder import read_meta, train_files

TEXT = (
    "the quick brown fox jumps over the lazy dog. ünïcödé 日本語\n  indented   spaces\n\n"
    "a second paragraph, with\ttabs and 3.14159 numbers; w1 w2 w3 w4\n"
)
HARD = ["the quick 😀 fox </s> <s> <unk>\n\n  x   y", "", " ", "\t\n", "ÿ\x00\u200b\u00a0z", "w1  w2   w3"]


@pytest.fixture(scope="module")
def sentencepiece_model(tmp_path_factory):
    """A Llama-style SentencePiece BPE (byte fallback, no normalization), trained here: the hub is not reachable."""
    spm = pytest.importorskip("sentencepiece")
    root = tmp_path_factory.mktemp("sp")
    (root / "text.txt").write_text(TEXT * 300)
    spm.SentencePieceTrainer.train(
        input=str(root / "text.txt"),
        model_prefix=str(root / "tokenizer"),
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    return root / "tokenizer.model"


def test_a_sentencepiece_model_converts_exactly(sentencepiece_model):
    import sentencepiece

    chosen = tokenizers.load(sentencepiece_model)
    assert chosen.kind == "sentencepiece" and chosen.specials == tokenizers.Specials("</s>", "<s>")
    processor = sentencepiece.SentencePieceProcessor(model_file=str(sentencepiece_model))
    chosen.tokenizer.encode_special_tokens = True
    for text in [TEXT, *HARD]:
        ids = chosen.tokenizer.encode(text, add_special_tokens=False).ids
        assert ids == processor.encode(text), text
        assert chosen.tokenizer.decode(ids) == processor.decode(ids) == text
    tokenizers.check_sentencepiece(chosen, [(str(i), t) for i, t in enumerate([TEXT, *HARD])])
    doc = chosen.documents(["w1 w2"])[0].tolist()
    assert doc == [processor.bos_id(), *processor.encode("w1 w2"), processor.eos_id()]


def test_a_conversion_that_differs_is_refused(sentencepiece_model):
    chosen = tokenizers.load(sentencepiece_model)
    chosen.tokenizer.normalizer = None  # as if the conversion had lost the ▁ prefix
    with pytest.raises(tokenizers.TokenizerError, match="doc2 encodes differently from token 0"):
        tokenizers.check_sentencepiece(chosen, [("doc1", ""), ("doc2", "w1 w2")])


def test_other_sentencepiece_models_are_refused_by_name(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    (tmp_path / "t.txt").write_text(TEXT * 100)
    spm.SentencePieceTrainer.train(
        input=str(tmp_path / "t.txt"), model_prefix=str(tmp_path / "uni"), vocab_size=50, minloglevel=2
    )
    with pytest.raises(tokenizers.TokenizerError, match="UNIGRAM model with nmt_nfkc normalization"):
        tokenizers.load(tmp_path / "uni.model")
    (tmp_path / "junk.model").write_bytes(b"\xff\x00 not a model")
    with pytest.raises(tokenizers.TokenizerError, match="is not a SentencePiece model"):
        tokenizers.load(tmp_path / "junk.model")


def test_hugging_face_tokenizer_files_and_their_conventions(data_dir, tmp_path):
    bpe = tokenizers.load(data_dir / "tokenizer.json")  # growdsl's own: EOT ends, nothing starts
    assert bpe.specials == tokenizers.Specials(tokenizers.EOT) and bpe.kind == "tokenizer.json"
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "tokenizer.json").write_text((data_dir / "tokenizer.json").read_text())
    config = {"eos_token": {"content": tokenizers.EOT}, "bos_token": tokenizers.EOT, "add_bos_token": True}
    (folder / tokenizers.CONFIG).write_text(json.dumps(config))
    assert tokenizers.load(folder).specials == tokenizers.Specials(tokenizers.EOT, tokenizers.EOT)
    (folder / tokenizers.CONFIG).write_text(json.dumps({"eos_token": "<nope>"}))
    with pytest.raises(tokenizers.TokenizerError, match="no end-of-document token"):
        tokenizers.load(folder)
    (folder / "tokenizer.json").write_text("{}")
    with pytest.raises(tokenizers.TokenizerError, match="is not a Hugging Face tokenizer.json"):
        tokenizers.load(folder)


@pytest.mark.parametrize("spec, said", [("bpe:12", "260 to"), ("bpe:x", "260 to"), ("nowhere.model", "no such file")])
def test_bad_tokenizer_specs_are_usage_errors(spec, said, tmp_path, capsys):
    (tmp_path / "a.txt").write_text(TEXT)
    assert main(["data", "prepare", str(tmp_path / "a.txt"), "--tokenizer", spec, "--out", str(tmp_path / "o")]) == 2
    assert said in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def sp_data(sentencepiece_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("spdata")
    for i in range(6):
        words = " ".join(f"w{(i * 13 + j * 7) % 60}" for j in range(2500))
        (root / f"d{i}.txt").write_text(TEXT + words)
    out = root / "prepared"
    assert main(["data", "prepare", str(root), "--tokenizer", str(sentencepiece_model), "--out", str(out)]) == 0
    return out


def test_prepare_with_a_sentencepiece_model_keeps_its_conventions(sp_data, sentencepiece_model):
    meta = read_meta(sp_data)
    assert (meta.tokenizer, meta.vocab_size, meta.bos_id, meta.eot_id) == ("sentencepiece", 400, 1, 2)
    assert (sp_data / "tokenizer.model").read_bytes() == sentencepiece_model.read_bytes()
    tokens = np.concatenate([np.fromfile(p, dtype=meta.dtype) for p in train_files(sp_data, meta)])
    starts, ends = np.flatnonzero(tokens == 1), np.flatnonzero(tokens == 2)
    assert tokens[0] == 1 and tokens[-1] == 2 and len(starts) == len(ends)
    assert (starts[1:] == ends[:-1] + 1).all()  # every document is <s> ... </s>, back to back
    tokenizer, specials = tokenizers.read_prepared(sp_data)
    assert specials == tokenizers.Specials("</s>", "<s>")


def test_a_run_on_a_sentencepiece_corpus_evaluates_and_exports_its_tokenizer(sp_data, tmp_path):
    transformers = pytest.importorskip("transformers")
    schedule = tmp_path / "s.grow"
    schedule.write_text(TINY_RUN + "train 1L for 6 steps\nstack x2\ntrain 4 steps\n")
    run = tmp_path / "run"
    assert main(["run", str(schedule), "--data", str(sp_data), "--run-dir", str(run)]) == 0
    assert (run / "tokenizer.model").exists() and (run / tokenizers.CONFIG).exists()
    assert main(["eval", str(run), "--tasks", "heldout", "--limit", "2"]) == 0
    assert main(["export", str(run), "--hf", str(tmp_path / "hf")]) == 0
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    ours = tokenizers.load(sp_data / "tokenizer.model")
    assert hf("w1 w2 ünï")["input_ids"] == [1, *ours.tokenizer.encode("w1 w2 ünï", add_special_tokens=False).ids]
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (1, 2)


def test_the_model_and_the_tokenizer_agree_on_the_vocab(data_dir):
    from growdsl.plan import plan_source
    from growdsl.runtime.trainer import RunError, Trainer

    schedule = TINY_RUN.replace(" padded", "") + "train 1L for 2 steps\n"  # the data has 394 tokens
    with pytest.raises(RunError, match=r"model's vocab is 400 but the data's tokenizer has 394 .* `vocab 400 padded`"):
        Trainer(plan_source(schedule), data_dir)
    with pytest.raises(RunError, match="has 394 tokens but the model's vocab is 300 .*: set vocab 394"):
        Trainer(plan_source(schedule.replace("vocab 400", "vocab 300")), data_dir)
    Trainer(plan_source(schedule.replace("vocab 400", "vocab 394")), data_dir)
    Trainer(plan_source(schedule.replace("vocab 400", "vocab 400 padded")), data_dir)


def test_eval_reads_a_document_as_training_did(sp_data):
    from growdsl.eval.lm import GrowLM

    tokenizer, specials = tokenizers.read_prepared(sp_data)
    lm = GrowLM(None, tokenizer, 2, 64, bos_id=1)
    text = tokenizer.encode("w1 w2 w3", add_special_tokens=False).ids
    assert lm.encode_pair("w1 w2", " w3")[0][:2] != [1, 1]
    context, continuation = lm.encode_pair("w1 w2", " w3")
    assert context + continuation == [1, *text]  # one <s>, as every training document starts


def test_vocab_size_is_the_highest_id_plus_one(tmp_path):
    from tokenizers import Tokenizer, models

    vocab = {"a": 0, "b": 1, "</s>": 70_000}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="a"))
    tok.add_special_tokens(["</s>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    chosen = tokenizers.load(tmp_path / "tokenizer.json")
    assert chosen.vocab_size == 70_001 and chosen.documents(["a b"])[0].dtype == np.uint32


@pytest.mark.parametrize(
    "how, said",
    [
        ("duplicate", "holds the piece 'w1' twice"),
        ("empty", "holds an empty piece"),
        ("huge", r"of 100,000 characters \(at most 256\)"),
        ("no bytes", "falls back on bytes but lacks the 256 byte pieces"),
        ("eos on a word", "is the ordinary piece '▁'"),
    ],
)
def test_a_sentencepiece_model_no_bpe_can_be_made_of_is_named(sentencepiece_model, tmp_path, how, said):
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(sentencepiece_model.read_bytes())
    kinds = sentencepiece_model_pb2.ModelProto.SentencePiece
    normal = [p for p in proto.pieces if p.type == kinds.NORMAL]
    if how == "duplicate":
        normal[0].piece, normal[1].piece = "w1", "w1"
    elif how == "empty":
        normal[0].piece = ""
    elif how == "huge":
        normal[0].piece = "x" * 100_000
    elif how == "no bytes":
        next(p for p in proto.pieces if p.type == kinds.BYTE).type = kinds.NORMAL
    else:
        proto.trainer_spec.eos_id = next(i for i, p in enumerate(proto.pieces) if p.piece == "▁")
    crafted = tmp_path / "crafted.model"
    crafted.write_bytes(proto.SerializeToString())
    with pytest.raises(tokenizers.TokenizerError, match=said):
        tokenizers.load(crafted)


@pytest.mark.parametrize("ids, said", [({"a": 0, "b": 999_999_999}, "token ids outside"), ({"a": 0}, r"1 token\(s\)")])
def test_a_tokenizer_json_with_impossible_ids_is_named_not_allocated(tmp_path, ids, said):
    """An id near 1e9 made the tokenizers library allocate a table that size and abort the process."""
    spec = {"version": "1.0", "model": {"type": "BPE", "vocab": ids, "merges": []}, "added_tokens": []}
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(tokenizers.TokenizerError, match=said):
        tokenizers.load(tmp_path / "tokenizer.json")
    with pytest.raises(tokenizers.TokenizerError, match=said):
        tokenizers.read_prepared(tmp_path)


def test_a_sentencepiece_model_is_known_by_its_content_not_its_name(sentencepiece_model, tmp_path):
    """Mistral ships tokenizer.model.v1 (llama-32k is one): a folder holding it, or the file itself."""
    folder = tmp_path / "mistral"
    folder.mkdir()
    shutil.copy(sentencepiece_model, folder / "tokenizer.model.v1")
    assert tokenizers.load(folder).kind == "sentencepiece"
    assert tokenizers.load(folder / "tokenizer.model.v1").kind == "sentencepiece"
    shutil.copy(sentencepiece_model, folder / "tokenizer.model.v3")
    with pytest.raises(tokenizers.TokenizerError, match="several SentencePiece models"):
        tokenizers.load(folder)
    bpe = tokenizers.train_bpe(["a b c d e f"] * 10, 300)
    bpe.tokenizer.save(str(tmp_path / "vocab.model"))  # a tokenizer.json by any other name
    assert tokenizers.load(tmp_path / "vocab.model").kind != "sentencepiece"
