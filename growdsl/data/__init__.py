"""The offline data pipeline, `growdsl data prepare`: a corpus (sources: text, jsonl, parquet, saved
datasets; corpora: the named ones growdsl fetches once) tokenized once (tokenizer: a BPE trained
here, a tokenizer.json or a SentencePiece model) into a prepared folder (prepare; its layout and
meta.json: growdsl.records.data_folder). Training reads the folder (growdsl.runtime.stream)."""
