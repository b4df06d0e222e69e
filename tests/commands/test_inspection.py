"""`gptforge inspect` reads every shard format: llm.c uint16 and uint32, older gptforge uint32, nanoGPT."""

from __future__ import annotations

import json
import shutil

import numpy as np

from gptforge.cli import main
from gptforge.data.dataset import open_dataset
from gptforge.data.manifest import listed_shards, load_manifest
from gptforge.data.shards import HEADER_BYTES, MAGIC, open_shard, write_shard


def inspect(capsys, path) -> tuple[int, str]:
    code = main(["inspect", str(path)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def rewrite_as_old_uint32(path) -> None:
    """The bytes gptforge wrote for a uint32 shard before it used llm.c's header: magic 20240520, version 2."""
    tokens = np.asarray(open_shard(path)).astype("<u4")
    header = np.zeros(256, dtype="<i4")
    header[:3] = [MAGIC, 2, len(tokens)]
    path.write_bytes(header.tobytes() + tokens.tobytes())


def test_single_shards_of_each_format(tmp_path, capsys):
    write_shard(tmp_path / "u16.bin", np.array([1, 2, 65535]), vocab_size=65536)
    write_shard(tmp_path / "u32.bin", np.array([70000, 3]), vocab_size=100_000)
    code, out = inspect(capsys, tmp_path / "u16.bin")
    assert code == 0 and "3 tokens, uint16 (llm.c GPT-2 format), largest id 65,535" in out
    code, out = inspect(capsys, tmp_path / "u32.bin")
    assert code == 0 and "2 tokens, uint32 (llm.c llama-3 format), largest id 70,000" in out
    rewrite_as_old_uint32(tmp_path / "u32.bin")
    code, out = inspect(capsys, tmp_path / "u32.bin")
    assert code == 0 and "2 tokens, uint32 (older gptforge format, version 2), largest id 70,000" in out


def test_a_folder_of_llmc_shards_without_manifest(tmp_path, capsys):
    write_shard(tmp_path / "fineweb_val_000000.bin", np.array([5, 6, 7]), vocab_size=50257)
    write_shard(tmp_path / "fineweb_train_000001.bin", np.array([70000]), vocab_size=128_256)
    code, out = inspect(capsys, tmp_path)
    assert code == 0 and "no manifest.json: an llm.c / modded-nanogpt data folder" in out
    assert "fineweb_train_000001.bin: 1 tokens, uint32 (llm.c llama-3 format)" in out
    assert "fineweb_val_000000.bin: 3 tokens, uint16 (llm.c GPT-2 format)" in out


def forget_shard_checksums(data):
    manifest = json.loads((data / "manifest.json").read_text())

    def strip(node):
        if isinstance(node, dict):
            if "file" in node:
                node.pop("sha256", None)
                node.pop("max_id", None)
            for value in node.values():
                strip(value)
        elif isinstance(node, list):
            for value in node:
                strip(value)

    strip(manifest)
    (data / "manifest.json").write_text(json.dumps(manifest))


def test_a_data_dir_written_by_an_older_gptforge_still_verifies_and_opens(tmp_path, capsys, char_data):
    data = tmp_path / "data"
    shutil.copytree(char_data, data)
    before = open_dataset(data).train.read(0, 50).tolist()
    for path, _ in listed_shards(data, load_manifest(data), "train"):
        rewrite_as_old_uint32(path)
        assert path.stat().st_size > HEADER_BYTES
    forget_shard_checksums(data)  # an older gptforge recorded no sha256 or largest id per shard
    code, out = inspect(capsys, data)
    assert code == 0, out
    assert "tokens uint16 (llm.c GPT-2 format), uint32 (older gptforge format, version 2)" in out
    assert open_dataset(data).train.read(0, 50).tolist() == before


def test_a_broken_shard_in_a_folder_is_named(tmp_path, capsys):
    write_shard(tmp_path / "a_000000.bin", np.array([5, 6, 7]), vocab_size=50257)
    write_shard(tmp_path / "b_000000.bin", np.array([5, 6, 7]), vocab_size=50257)
    with open(tmp_path / "a_000000.bin", "r+b") as f:
        f.truncate(HEADER_BYTES + 2)
    assert main(["inspect", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert f"BAD: shard {tmp_path / 'a_000000.bin'}: size is 1026 bytes but the header's 3 tokens need 1030" in out
    assert "b_000000.bin: 3 tokens, uint16" in out
    assert err == f"gptforge inspect: error: shard folder {tmp_path}: 1 bad shard(s) (listed above)\n"
