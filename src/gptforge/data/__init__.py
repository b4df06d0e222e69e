"""Stage 1, data: sources -> documents -> tokenizer -> token shards + manifest, and opening a dataset.

sources/ turns files (parquet, Wikipedia XML, text, jsonl) into documents; tokenizers encodes them;
prepare writes shards (shards.py, shard_streams.py) and the manifest (manifest.py); download fetches
shards from the web; dataset opens a prepared DATA_DIR (or a nanoGPT folder) for reading.
This layer imports nothing from model, train, analysis or interop.
"""
