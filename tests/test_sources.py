"""Corpora in the formats they come in, streamed: every format gives the same documents, prepare
writes shuffled shards that read as one stream, and a source that changes mid-prepare is an error."""

import gzip
import json
import random

import numpy as np
import pytest

from growdsl.data import prepare as data
from growdsl.data import sources
from growdsl.data.prepare import prepare
from growdsl.records.data_folder import read_meta, train_files
from growdsl.runtime.stream import TokenStream

TEXTS = [" ".join(f"w{random.Random(i).randrange(80)}" for _ in range(300)) + f" doc{i}." for i in range(24)]


def write_all_formats(root):
    """The 24 texts spread over every format growdsl reads, in one folder tree."""
    (root / "plain").mkdir(parents=True)
    for i in range(4):
        (root / "plain" / f"d{i}.txt").write_text(TEXTS[i])
    lines = "".join(json.dumps({"text": t}) + "\n" for t in TEXTS[4:8])
    (root / "a.jsonl").write_text(lines)
    with gzip.open(root / "b.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[8:12]))
    zstandard = pytest.importorskip("zstandard")
    (root / "c.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[12:16]).encode())
    )
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": TEXTS[16:20], "id": list(range(4))}), root / "d.parquet")
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": TEXTS[20:24]}).save_to_disk(str(root / "saved"))


def test_every_format_gives_its_documents(tmp_path):
    write_all_formats(tmp_path)
    found = sources.find([tmp_path])
    assert {s.kind for s in found} == {"text", "jsonl", "jsonl.gz", "jsonl.zst", "parquet", "arrow"}
    docs = list(sources.documents(found))
    assert sorted(t for _, t in docs) == sorted(TEXTS)
    names = [n for n, _ in docs]
    assert f"{tmp_path / 'a.jsonl'}:2" in names and f"{tmp_path / 'd.parquet'}#3" in names


@pytest.mark.parametrize(
    "name, content, said",
    [
        (
            "bad.jsonl",
            '{"text": "a"}\n{"txt": "b"}\n',
            'bad.jsonl:2: a .jsonl line must be an object with a string "text"',
        ),
        ("bad.jsonl.gz", None, "bad.jsonl.gz:1: not JSON"),
    ],
)
def test_bad_lines_are_named_in_every_jsonl_format(tmp_path, name, content, said):
    path = tmp_path / name
    if content is None:
        with gzip.open(path, "wt") as f:
            f.write("{nope\n")
    else:
        path.write_text(content)
    with pytest.raises(sources.SourceError, match=said):
        list(sources.documents(sources.find([path])))


def test_a_parquet_file_without_text_is_named(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "t.parquet")
    with pytest.raises(sources.SourceError, match='t.parquet has no "text" column \\(it has body\\)'):
        list(sources.documents(sources.find([tmp_path])))


def test_prepare_shards_a_corpus_and_streams_it_as_one(tmp_path, monkeypatch):
    write_all_formats(tmp_path / "in")
    one = prepare([tmp_path / "in"], tmp_path / "one", vocab_size=300, holdout=0.25)
    monkeypatch.setattr(data, "SHARD_CHARS", 5_000)  # many small shuffle buckets
    monkeypatch.setattr(data, "BATCH_CHARS", 3_000)  # many small batches
    many = prepare([tmp_path / "in"], tmp_path / "many", vocab_size=300, holdout=0.25)
    assert len(one.shards) == 1 and len(many.shards) > 3
    assert (many.documents, many.train_tokens, many.val_tokens) == (one.documents, one.train_tokens, one.val_tokens)
    assert (tmp_path / "many" / "val.bin").read_bytes() == (tmp_path / "one" / "val.bin").read_bytes()
    tokens = np.concatenate([np.fromfile(p, dtype=many.dtype) for p in train_files(tmp_path / "many", many)])
    assert sorted(tokens.tolist()) == sorted(
        np.concatenate([np.fromfile(p, dtype=one.dtype) for p in train_files(tmp_path / "one", one)]).tolist()
    )  # the same tokens, shuffled otherwise
    stream = TokenStream(train_files(tmp_path / "many", many), many.dtype)
    seen = np.concatenate([stream.next_batch(2, 50)[0].flatten().numpy() for _ in range(len(tokens) // 100 + 3)])
    expected = np.concatenate([tokens[i * 50 : i * 50 + 50] for i in range(len(seen) // 50)])  # no wrap yet
    n = (len(tokens) - 1) // 50 * 50
    assert (seen[:n] == expected[:n]).all()  # across every shard boundary, in order
    assert read_meta(tmp_path / "many") == many


def test_a_source_that_changes_while_it_is_prepared_is_an_error(tmp_path, monkeypatch):
    for i in range(4):
        (tmp_path / f"d{i}.txt").write_text(TEXTS[i])
    real = data._Index.add
    seen = []

    def then_changed(index, text):
        real(index, text)
        seen.append(text)
        if len(seen) == 4:
            (tmp_path / "d2.txt").write_text("another text altogether")

    monkeypatch.setattr(data._Index, "add", then_changed)
    with pytest.raises(data.DataError, match="d2.txt changed while it was being prepared"):
        prepare([tmp_path], tmp_path / "out", vocab_size=300)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["gz", "zst", "parquet"])
def test_damaged_files_are_one_line_errors_naming_them(tmp_path, kind):
    zstandard = pytest.importorskip("zstandard")
    lines = "".join(json.dumps({"text": t}) + "\n" for t in TEXTS)
    if kind == "gz":
        whole, path = gzip.compress(lines.encode()), tmp_path / "c.jsonl.gz"
    elif kind == "zst":
        whole, path = zstandard.ZstdCompressor().compress(lines.encode()), tmp_path / "c.jsonl.zst"
    else:
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": TEXTS}), tmp_path / "x.parquet")
        whole, path = (tmp_path / "x.parquet").read_bytes(), tmp_path / "c.parquet"
        (tmp_path / "x.parquet").unlink()
    path.write_bytes(whole[: len(whole) // 2])  # truncated
    with pytest.raises(sources.SourceError, match=f"{path.name}"):
        list(sources.documents(sources.find([tmp_path])))


def test_what_is_not_a_corpus_is_refused_and_what_is_is_not_skipped(tmp_path):
    (tmp_path / "notes.txt.gz").write_bytes(gzip.compress(b"text"))
    with pytest.raises(sources.SourceError, match="notes.txt.gz is not text"):
        sources.find([tmp_path / "notes.txt.gz"])
    books = tmp_path / "books"
    books.mkdir()
    (books / "meta.json").write_text("{}")  # someone's metadata, not a prepared folder
    (books / "a.txt").write_text("a book")
    assert [s.path.name for s in sources.find([books])] == ["a.txt"]
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "n.parquet")
    with pytest.raises(sources.SourceError, match='"text" column holds int64, not strings'):
        list(sources.documents(sources.find([tmp_path / "n.parquet"])))


def test_a_saved_dataset_gives_its_train_split_and_not_its_caches(tmp_path):
    datasets = pytest.importorskip("datasets")
    splits = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict({"text": TEXTS[:5]}), "test": datasets.Dataset.from_dict({"text": ["x"]})}
    )
    splits.save_to_disk(str(tmp_path / "dd"))
    (tmp_path / "dd" / "train" / "cache-123.arrow").write_bytes(
        (tmp_path / "dd" / "test" / "data-00000-of-00001.arrow").read_bytes()
    )
    assert [t for _, t in sources.documents(sources.find([tmp_path / "dd"]))] == TEXTS[:5]


def test_a_source_that_shrinks_while_it_is_prepared_is_an_error(tmp_path, monkeypatch):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[:4]))
    real = data._Index.add
    calls = []

    def then_shortened(index, text):
        real(index, text)
        calls.append(text)
        if len(calls) == 4:  # its last line goes
            corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS[:3]))

    monkeypatch.setattr(data._Index, "add", then_shortened)
    with pytest.raises(data.DataError, match="held 4 documents, then 3"):
        prepare([tmp_path], tmp_path / "out", vocab_size=300)


def test_one_huge_document_is_not_the_whole_held_out_share(tmp_path):
    lines = "".join(json.dumps({"text": TEXTS[i % 24] + f" n{i}"}) + "\n" for i in range(300))
    (tmp_path / "small.jsonl").write_text(lines)
    (tmp_path / "dump.txt").write_text(" ".join(TEXTS) * 40)  # as large as everything else together, and more
    for seed in range(4):
        meta = prepare([tmp_path], tmp_path / f"out{seed}", vocab_size=300, holdout=0.05, seed=seed)
        assert meta.val_tokens < 0.3 * (meta.train_tokens + meta.val_tokens), seed


def test_a_hub_dataset_name_is_told_how_to_reach_growdsl_offline(tmp_path, monkeypatch, capsys):
    from growdsl.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["data", "prepare", "cerebras/SlimPajama-627B", "--out", "out"]) == 2
    err = capsys.readouterr().err
    assert "no such file or folder: cerebras/SlimPajama-627B: if it names a Hugging Face hub dataset" in err
    assert "save_to_disk(DIR), and give DIR" in err and not (tmp_path / "out").exists()
    assert main(["data", "prepare", "typo.txt"]) == 2
    assert capsys.readouterr().err == "growdsl data prepare: no such file or folder: typo.txt\n"
