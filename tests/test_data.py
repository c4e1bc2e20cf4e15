"""Data: prepare is deterministic and holds out a share of the corpus by size (whole documents where
there are enough, pieces of them where not); the stream is exact and resumable."""

import json
import random

import numpy as np
import pytest
import torch

from growdsl.cli import main
from growdsl.data.prepare import prepare
from growdsl.data.tokenizer import EOT
from growdsl.records.data_folder import read_meta, train_files
from growdsl.runtime.stream import TokenStream

WORDS = (
    "the quick brown fox jumps over a lazy dog while seven bold knights sing of green hills and "
    "silver rivers under the pale moon"
).split()


def training(out, meta):
    """The training stream's tokens, its shards one after the other."""
    return np.concatenate([np.fromfile(p, dtype=meta.dtype) for p in train_files(out, meta)])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """40 short documents, a quarter held out: 10 whole documents."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    for i in range(36):
        text = " ".join(rng.choice(WORDS) for _ in range(100)) + f" document{i}."
        (root / f"doc{i:02d}.txt").write_text(text)
    (root / "more.jsonl").write_text(
        "\n".join(
            json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(100)) + f" line {i}."}) for i in range(4)
        )
    )
    out = root / "prepared"
    meta = prepare([root], out, vocab_size=300, holdout=0.25)
    return root, out, meta


def test_prepare_writes_token_files_and_holds_out_whole_documents(corpus):
    root, out, meta = corpus
    assert meta == read_meta(out) and (meta.documents, meta.holdout_unit) == (40, "documents")
    assert meta.val_documents in (10, 11)  # documents differ a little in size: as many as make a quarter
    train = training(out, meta)
    val = np.fromfile(out / "val.bin", dtype=meta.dtype)
    assert (len(train), len(val)) == (meta.train_tokens, meta.val_tokens)
    assert (train == meta.eot_id).sum() == 40 - meta.val_documents and (val == meta.eot_id).sum() == meta.val_documents
    assert 0.24 < meta.val_tokens / (meta.train_tokens + meta.val_tokens) < 0.3  # a quarter, by size
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    held_out = tok.decode(val.tolist(), skip_special_tokens=False).split(EOT)[:-1]
    originals = {p.read_text() for p in root.glob("*.txt")} | {
        json.loads(line)["text"] for line in (root / "more.jsonl").read_text().splitlines()
    }
    assert set(held_out) <= originals and not set(held_out) & set(
        tok.decode(train.tolist(), skip_special_tokens=False).split(EOT)
    )


def test_a_corpus_of_a_few_long_documents_holds_out_pieces_of_all_of_them(tmp_path, monkeypatch):
    from growdsl.data import prepare as data

    monkeypatch.setattr(data, "HOLDOUT_FLOOR", 20_000)  # the floor, scaled down with the corpus
    for name in "abcd":  # four works of ~40K characters: 5% would be a fifth of one of them
        paragraphs = [f"{name}{i} " + " ".join(random.Random(i).choice(WORDS) for _ in range(60)) for i in range(120)]
        (tmp_path / f"{name}.txt").write_text("\n\n".join(paragraphs))
    meta = prepare([tmp_path], tmp_path / "out", vocab_size=300, holdout=0.05)
    assert meta.holdout_unit == "pieces"
    held = [json.loads(line) for line in (tmp_path / "out" / "val.jsonl").read_text().splitlines()]
    assert len(held) == meta.val_documents and {h["name"].split("#")[0][-5] for h in held} == set("abcd")
    size = sum(len(h["text"]) for h in held)
    assert 20_000 <= size < 20_000 + 2 * data.PIECE_CHARS  # the floor, not 5%: at most a piece over


def test_prepare_is_deterministic(corpus, tmp_path):
    root, out, meta = corpus
    again = prepare([root], tmp_path / "again", vocab_size=300, holdout=0.25)
    assert again == meta
    for name in ("train-00000.bin", "val.bin", "tokenizer.json"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()


def test_stream_reads_front_to_back_across_batch_and_length_changes(corpus):
    _, out, meta = corpus
    stream = TokenStream(train_files(out, meta), meta.dtype)
    tokens = training(out, meta).astype(np.int64)
    seen = []
    for batch, seq in [(2, 8), (2, 8), (4, 16), (3, 5)]:  # a growth may change batch and length
        x, y = stream.next_batch(batch, seq)
        assert torch.equal(x[:, 1:], y[:, :-1])
        seen.append(x.reshape(-1))
    assert stream.position == 2 * 8 * 2 + 4 * 16 + 3 * 5
    assert torch.equal(torch.cat(seen), torch.from_numpy(tokens[: stream.position]))


def test_resume_at_a_position_gives_the_exact_next_batch(corpus):
    _, out, meta = corpus
    a = TokenStream(train_files(out, meta), meta.dtype)
    for _ in range(5):
        a.next_batch(4, 32)
    b = TokenStream(train_files(out, meta), meta.dtype, position=a.position)
    assert all(torch.equal(u, v) for u, v in zip(a.next_batch(4, 32), b.next_batch(4, 32)))


def test_ranks_split_the_global_batch_and_the_stream_wraps(corpus):
    _, out, meta = corpus
    whole = TokenStream(train_files(out, meta), meta.dtype, position=meta.train_tokens - 40)
    parts = [TokenStream(train_files(out, meta), meta.dtype, position=meta.train_tokens - 40) for _ in range(2)]
    x, _ = whole.next_batch(4, 16)  # runs past the end: wraps to the start
    xs = [p.next_batch(4, 16, rank=r, world=2)[0] for r, p in enumerate(parts)]
    assert torch.equal(torch.cat(xs), x)
    assert {p.position for p in parts} == {whole.position}


def test_data_prepare_command(corpus, tmp_path, capsys):
    from growdsl.cli import main

    root, _, _ = corpus
    out = tmp_path / "d"
    assert main(["data", "prepare", str(root), "--out", str(out), "--vocab", "300", "--holdout", "0.25"]) == 0
    assert f"40 documents ({read_meta(corpus[1]).val_documents} held out), vocab 300" in capsys.readouterr().out
    assert read_meta(out).vocab_size == 300
    assert main(["data", "prepare", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert main(["data", "prepare", str(root), "--holdout", "2"]) == 2
    capsys.readouterr()
    for bad, said in (  # were a numpy error and a Rust abort
        (["--holdout", "0.99"], "--holdout must be above 0 and at most 0.5"),
        (["--vocab", "1000000000"], "bpe:N takes a vocabulary of 260 to 1,048,576 entries"),
        (["--vocab", "300", "--tokenizer", "bpe:300"], "give --tokenizer or --vocab, not both"),
    ):
        assert main(["data", "prepare", str(root), "--out", str(tmp_path / "x"), *bad]) == 2
        assert said in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # a refused command writes nothing


def test_training_documents_are_shuffled_in_pieces_of_paragraphs(tmp_path):
    from tokenizers import Tokenizer

    paragraphs = [f"paragraph {i} " + "word " * 120 for i in range(40)]
    (tmp_path / "a.txt").write_text("\n\n".join(p.replace("paragraph", "alpha") for p in paragraphs))
    (tmp_path / "b.txt").write_text("\n\n".join(p.replace("paragraph", "beta") for p in paragraphs))
    (tmp_path / "c.txt").write_text("held out " * 50)
    meta = prepare([tmp_path], tmp_path / "out", vocab_size=280, holdout=0.34, seed=1)
    tok = Tokenizer.from_file(str(tmp_path / "out" / "tokenizer.json"))
    text = tok.decode(training(tmp_path / "out", meta).tolist(), skip_special_tokens=False)
    pieces = text.split(EOT)[:-1]
    assert len(pieces) > 4  # two documents became many pieces
    firsts = [p.split()[0] for p in pieces]
    assert firsts != sorted(firsts)  # interleaved, not one document after the other
    assert sorted(len(p) >= 2000 for p in pieces).count(False) <= 2  # only a document's last piece is short


def test_the_validation_sequences_are_spread_over_the_whole_held_out_split(corpus):
    from growdsl.runtime.stream import HeldOut

    _, out, meta = corpus
    held = HeldOut(out / "val.bin", meta.dtype)
    tokens = torch.from_numpy(np.fromfile(out / "val.bin", dtype=meta.dtype).astype(np.int64))
    x, y = held.sequences(4 * 16, 16)
    stride = (len(tokens) - 1) // 4
    assert stride > 16 and x.shape == y.shape == (4, 16)  # not the first 64 tokens: every quarter
    for i in range(4):
        assert torch.equal(x[i], tokens[i * stride : i * stride + 16]) and torch.equal(
            y[i], tokens[i * stride + 1 : i * stride + 17]
        )
    assert held.count(10**9, 16) == (len(tokens) - 1) // 16 and held.count(10**9, 16, multiple=3) % 3 == 0


def test_the_default_corpus_says_it_is_being_prepared_once(corpus, tmp_path, monkeypatch):
    from growdsl.data import prepare as data

    root, _, _ = corpus
    fetched = []
    monkeypatch.setattr(data, "DEFAULT", tmp_path / "default")
    monkeypatch.setattr(data, "DEFAULT_VOCAB", 300)
    monkeypatch.setattr(data, "HOLDOUT_FLOOR", 1000)
    monkeypatch.setattr(data.corpora, "fetch", lambda name: fetched.append(name) or root)
    said = []
    assert data.default_corpus(said.append) == tmp_path / "default"
    assert fetched == ["shakespeare"] and len(said) == 2
    assert said[0].startswith("the default corpus (Shakespeare) is not prepared yet: fetching it")
    assert data.default_corpus(said.append) == tmp_path / "default" and len(said) == 2  # prepared: silent


def test_plan_shows_what_each_stage_reads_and_warns_when_the_run_repeats_its_data(data_dir, tmp_path, capsys):
    from ops_helpers import TINY_RUN

    meta = read_meta(data_dir)
    per_step = 4 * 32
    schedule = tmp_path / "s.grow"
    schedule.write_text(TINY_RUN + "train 1L for 10 steps\nstack x2\ntrain 30 steps\n")
    assert main(["plan", str(schedule), "--data", str(data_dir)]) == 0
    out, err = capsys.readouterr()
    assert f"{meta.train_tokens:,} training tokens" in out
    assert (
        f"stage 1 reads {30 * per_step:,} tokens ({30 * per_step / meta.train_tokens:.2f} epochs), from token 1,280"
        in out
    )
    assert "warning" not in err
    steps = meta.train_tokens // per_step + 1  # one step more than the data holds
    schedule.write_text(TINY_RUN + f"train 1L for {steps} steps\n")
    assert main(["plan", str(schedule), "--data", str(data_dir)]) == 0
    assert "warning: the run reads its data 1.0" in capsys.readouterr().err


def test_plan_refuses_missing_and_half_prepared_data(data_dir, tmp_path, capsys):
    import shutil

    from ops_helpers import TINY_RUN

    half = tmp_path / "half"
    shutil.copytree(data_dir, half)
    (half / "val.bin").unlink()
    schedule = tmp_path / "s.grow"
    schedule.write_text(TINY_RUN.replace(" padded", "") + "train 1L for 10 steps\n")  # vocab 400, the data's 394
    assert main(["plan", str(schedule), "--data", str(data_dir)]) == 1
    assert "set vocab 394 in the model statement" in capsys.readouterr().err
    for data, said in [("nowhere", "does not exist"), ("half", "val.bin is missing, not the")]:
        schedule.write_text(TINY_RUN + f'data "{data}"\ntrain 1L for 10 steps\n')
        assert main(["plan", str(schedule)]) == 1
        assert said in capsys.readouterr().err


def test_a_paragraph_without_blank_lines_is_cut_at_spaces_into_bounded_parts():
    """Text with no blank line (16 MB took 33 s to cut when each cut copied the rest): parts of
    `size` to `2 size` characters, each ending before a space or line break, that join back to it."""
    from growdsl.data.prepare import _cut

    rng = random.Random(3)
    text = " ".join("".join(rng.choices("abcdefgh", k=rng.randint(1, 12))) for _ in range(200_000))
    text = text[:500] + "\n" + text[500:]
    parts = _cut(text, 4000)
    assert "".join(parts) == text
    assert all(4000 <= len(p) <= 8000 for p in parts[:-1]) and len(parts[-1]) <= 8000
    assert all(p[0] in " \n" for p in parts[1:])
    assert _cut("x" * 9000, 4000) == ["x" * 8000, "x" * 1000]  # no space to cut at: at twice the size
