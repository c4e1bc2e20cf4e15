"""Corpora in the formats they come in, streamed: every format gives the same documents, prepare
writes shuffled shards that read as one stream, and a source that changes mid-prepare is an error."""

import gzip
import json
import random

import numpy as np
import pytest

from growdsl.runtime import data, sources
from growdsl.runtime.data import TokenStream, load_meta, prepare, train_files

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
    assert load_meta(tmp_path / "many") == many


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
