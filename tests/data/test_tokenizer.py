import json
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


NUMBERS_TEXT = ("In 1999 the 12345678 ships sailed; DON'T you see? I'LL go.\n\n  Again 2024-05-20, 3.14159 and 42.\n"
                "We've 7777777 coins and 31337 gems.  ")


@pytest.mark.parametrize("pattern, longest_digit_run", [("gpt4", 3), ("nanochat", 2)])
def test_gpt4_style_split_pattern_with_special_tokens(tmp_path, pattern, longest_digit_run):
    from tokenizers import Tokenizer as HF

    texts = play_texts(4) + [NUMBERS_TEXT * 50]
    tok = train_bpe(texts, 700, tmp_path / "tok", pattern=pattern, special_tokens=["<|bos|>", "<|user_start|>"])
    assert tok.eot_id == 0 and tok.special_tokens == ["<|endoftext|>", "<|bos|>", "<|user_start|>"]
    assert tok.enc.encode("<|bos|><|user_start|>", allowed_special="all") == [1, 2]
    assert 1 not in tok.encode("<|bos|> in a document is text").tolist()  # never injected from the data
    hf = HF.from_file(str(tmp_path / "tok" / "tokenizer.json"))
    for text in texts[:2] + [NUMBERS_TEXT, "Hello, world!  Über naïve café 12345\n\n  x"]:
        assert tok.encode(text).tolist() == hf.encode(text, add_special_tokens=False).ids
        assert tok.decode(tok.encode(text)) == text
    # the pattern keeps digits in short runs, where GPT-2's lets a whole number become one token
    pieces = [tok.decode([i]) for i in tok.encode(NUMBERS_TEXT).tolist()]
    assert max(len(p) for p in pieces if p.isdigit()) == longest_digit_run
    gpt2_style = train_bpe(texts, 700, tmp_path / "tok2")
    assert max(len(gpt2_style.decode([i])) for i in gpt2_style.encode("12345678 7777777").tolist()) > 3
    again = load_tokenizer(tmp_path / "tok")  # the pattern is read back from tokenizer.json
    assert again.enc._pat_str == tok.enc._pat_str and again.encode(NUMBERS_TEXT).tolist() == tok.encode(
        NUMBERS_TEXT).tolist()


def test_tokenizer_train_command_writes_files_transformers_loads(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    from gptforge import cli

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(play_texts(3)) + NUMBERS_TEXT, encoding="utf-8")
    out = tmp_path / "tok"
    assert cli.main(["tokenizer", "train", str(corpus), "--vocab-size", "600", "--pattern", "gpt4",
                     "--special-tokens", "<|bos|>, <|user_start|>,<|user_end|>", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "600 tokens (gpt4 split pattern, special tokens <|endoftext|> <|bos|> <|user_start|> <|user_end|>)" in said
    ours = load_tokenizer(out)
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    for text in (NUMBERS_TEXT, play_texts(1)[0][:3000]):
        assert theirs.encode(text, add_special_tokens=False) == ours.encode(text).tolist()
        assert theirs.decode(ours.encode(text).tolist()) == text
    assert theirs.eos_token_id == theirs.bos_token_id == 0
    assert theirs.convert_tokens_to_ids(["<|bos|>", "<|user_start|>", "<|user_end|>"]) == [1, 2, 3]
    assert theirs.encode("<|user_start|>hi<|user_end|>", add_special_tokens=False)[0] == 2  # special in HF's use


def test_bad_tokenizer_training_requests(tmp_path):
    with pytest.raises(UserError, match="--pattern 'gpt5': expected one of gpt2, gpt4, nanochat"):
        train_bpe(["abc"], 400, tmp_path / "t", pattern="gpt5")
    with pytest.raises(UserError, match="each must be a distinct, non-blank string other than <|endoftext|>"):
        train_bpe(["abc"], 400, tmp_path / "t", special_tokens=["<|a|>", "<|a|>"])
    with pytest.raises(UserError, match="distinct, non-blank"):
        train_bpe(["abc"], 400, tmp_path / "t", special_tokens=["<|endoftext|>"])
    with pytest.raises(UserError, match="--vocab-size must be at least 260 .256 bytes, 3 special token"):
        train_bpe(["abc"], 259, tmp_path / "t", special_tokens=["<|a|>", "<|b|>"])
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "tokenizer.json").write_text(json.dumps({
        "model": {"vocab": {"a": 1}}, "added_tokens": [{"content": "<|endoftext|>", "id": 0}],
        "pre_tokenizer": {"type": "Whitespace"}}))
    with pytest.raises(UserError, match=r"odd/tokenizer.json: its pre_tokenizer splits text in a way gptforge"):
        load_tokenizer(tmp_path / "odd")
