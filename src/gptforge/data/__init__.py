"""Stage 1, data: sources -> documents -> tokenizer -> token shards + manifest, and opening a dataset.

sources/ turns files (parquet, Wikipedia XML, text, jsonl) into documents; tokenizers encodes them;
prepare runs the command (one run = one dataset part): encode batches documents onto all cores, part_writer
writes and commits the part (shards.py, shard_streams.py, manifest.py), parts and identity say what a part's
val share is and what content a dataset holds; download fetches shards from the web; dataset opens a
prepared DATA_DIR (or a nanoGPT folder) for reading. This layer imports nothing from model, train, analysis
or interop.
"""
