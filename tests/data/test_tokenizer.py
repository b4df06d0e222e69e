import os

import pytest

from gptforge.data.tokenizers import CharTokenizer, gpt2_tokenizer, load_tokenizer, train_bpe
from gptforge.errors import UserError

from helpers import play_texts


def test_gpt2_gives_exactly_gpt2_ids_offline():
    tok = gpt2_tokenizer()
    assert tok.enc.encode("Hello world<|endoftext|>", allowed_special="all") == [15496, 995, 50256]
    assert tok.encode("Hello world").tolist() == [15496, 995]
    # "<|endoftext|>" inside a document is ordinary text, never the separator
    assert 50256 not in tok.encode("a <|endoftext|> b").tolist()
    assert tok.vocab_size == 50257 and tok.eot_id == 50256
    assert tok.decode([15496, 995]) == "Hello world"


def test_gpt2_load_copies_nothing_to_tmp(tmp_path, monkeypatch):
    import tiktoken.load

    calls = []
    real = tiktoken.load.read_file_cached

    def spy(blobpath, expected_hash=None):
        calls.append(os.environ.get("TIKTOKEN_CACHE_DIR"))
        return real(blobpath, expected_hash)

    monkeypatch.setattr(tiktoken.load, "read_file_cached", spy)
    import gptforge.data.tokenizers as t

    monkeypatch.setattr(t, "_GPT2", None)
    t.gpt2_tokenizer()
    assert calls == ["", ""]  # an empty cache dir disables tiktoken's copy to /tmp/data-gym-cache


def test_trained_bpe_is_fast_and_exact(tmp_path):
    from tokenizers import Tokenizer as HF

    texts = play_texts(6)
    tok = train_bpe(texts, 600, tmp_path / "tok")
    assert tok.vocab_size == 600 and tok.eot_id == 0
    hf = HF.from_file(str(tmp_path / "tok" / "tokenizer.json"))
    for text in texts + ["Hello, world!  Über naïve café 12345\n\n  x"]:
        assert tok.encode(text).tolist() == hf.encode(text).ids
        assert tok.decode(tok.encode(text)) == text
    again = load_tokenizer(tmp_path / "tok")
    assert again.identity() == tok.identity()


def test_char_tokenizer_and_unknown_characters():
    tok = CharTokenizer.from_texts(["hello world"])
    assert tok.chars == [" ", "d", "e", "h", "l", "o", "r", "w"]
    assert tok.encode("hello").tolist() == [3, 2, 4, 4, 5]
    assert tok.eot_id == 8 and tok.vocab_size == 9
    assert tok.decode(tok.encode("world")) == "world"
    with pytest.raises(UserError, match="'z'"):
        tok.encode("zoo")


def test_bad_tokenizer_specs(tmp_path):
    with pytest.raises(UserError, match="not 'gpt2', 'char' or an existing tokenizer directory"):
        load_tokenizer(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no tokenizer_meta.json"):
        load_tokenizer(tmp_path / "empty")
    with pytest.raises(UserError, match="at least 258"):
        train_bpe(["abc"], 100, tmp_path / "t")
