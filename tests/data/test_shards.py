import numpy as np
import pytest

from gptforge.data.shards import HEADER_BYTES, MAGIC, MAGIC_U32, ShardWriter, open_shard, shard_format, write_shard
from gptforge.errors import UserError


def test_round_trip_uint16_and_uint32(tmp_path):
    small = np.array([0, 5, 50256, 65535], dtype=np.uint32)
    write_shard(tmp_path / "a.bin", small, vocab_size=50257)
    assert (tmp_path / "a.bin").stat().st_size == HEADER_BYTES + 4 * 2
    header = np.fromfile(tmp_path / "a.bin", dtype="<i4", count=3)
    assert list(header) == [MAGIC, 1, 4]
    assert open_shard(tmp_path / "a.bin").tolist() == small.tolist()

    big = np.array([70000, 1, 99999], dtype=np.uint32)
    write_shard(tmp_path / "b.bin", big, vocab_size=100_000)
    # llm.c's own uint32 header (dev/data/data_common.py, "llama-3"): magic 20240801, version 7
    assert list(np.fromfile(tmp_path / "b.bin", dtype="<i4", count=3)) == [20240801, 7, 3] == [MAGIC_U32, 7, 3]
    assert (tmp_path / "b.bin").stat().st_size == HEADER_BYTES + 4 * 3
    assert open_shard(tmp_path / "b.bin", vocab_size=100_000, check_ids=True).tolist() == big.tolist()
    assert shard_format(tmp_path / "a.bin") == "uint16 (llm.c GPT-2 format)"
    assert shard_format(tmp_path / "b.bin") == "uint32 (llm.c llama-3 format)"


def test_reads_older_gptforge_uint32_shards(tmp_path):
    """Shards written before the switch to llm.c's uint32 header (magic 20240520, version 2) still open."""
    old = _raw(tmp_path / "train_000000.bin", [MAGIC, 2, 3], np.array([70000, 0, 5], dtype="<u4").tobytes())
    assert open_shard(old, vocab_size=70001, check_ids=True).tolist() == [70000, 0, 5]
    assert shard_format(old) == "uint32 (older gptforge format, version 2)"


def test_writer_uses_a_temporary_name_until_closed(tmp_path):
    w = ShardWriter(tmp_path / "train_000000.bin", 100)
    w.write(np.arange(10))
    assert not (tmp_path / "train_000000.bin").exists()
    assert [p.name for p in tmp_path.iterdir()] == [".train_000000.bin.tmp"]
    w.abort()
    assert list(tmp_path.iterdir()) == []


def _raw(path, header, body=b""):
    h = np.zeros(256, dtype="<i4")
    h[: len(header)] = header
    path.write_bytes(h.tobytes() + body)
    return path


@pytest.mark.parametrize(
    "header,body,message",
    [
        ([MAGIC, 3, 2], b"\0" * 4, "unknown version 3 for magic 20240520"),
        ([MAGIC_U32, 1, 2], b"\0" * 8, "unknown version 1 for magic 20240801"),
        ([MAGIC_U32, 7, 5], b"\0" * 8, "size is 1032 bytes but the header's 5 tokens need 1044"),
        ([MAGIC, 1, 5], b"\0" * 4, "size is 1028 bytes but the header's 5 tokens need 1034"),
        ([MAGIC, 1, 0], b"", "is empty"),
        ([123, 1, 2], b"\0" * 4, "bad magic"),
    ],
)
def test_bad_shards_name_the_file_and_the_fault(tmp_path, header, body, message):
    path = _raw(tmp_path / "val_000000.bin", header, body)
    with pytest.raises(UserError, match=message) as e:
        open_shard(path)
    assert str(path) in str(e.value)


def test_token_id_beyond_vocab_and_zero_byte_file(tmp_path):
    write_shard(tmp_path / "s.bin", np.array([1, 2, 300]), vocab_size=1000)
    with pytest.raises(UserError, match="token id 300 at position 2 is not below the vocab size 256"):
        open_shard(tmp_path / "s.bin", vocab_size=256, check_ids=True)
    (tmp_path / "z.bin").write_bytes(b"")
    with pytest.raises(UserError, match=r"z.bin is empty \(0 bytes\)"):
        open_shard(tmp_path / "z.bin")


def test_reads_nanogpt_headerless_files(tmp_path):
    np.array([3, 1, 4, 1, 5], dtype=np.uint16).tofile(tmp_path / "train.bin")
    assert open_shard(tmp_path / "train.bin").tolist() == [3, 1, 4, 1, 5]
    (tmp_path / "val.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(UserError, match="size .3. is odd"):
        open_shard(tmp_path / "val.bin")
