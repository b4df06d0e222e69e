"""`gptforge export RUN_DIR --format hf`: transformers loads the result and computes the same logits."""

import json

import pytest
import torch

from gptforge.data.tokenizers import CharTokenizer, gpt2_tokenizer, train_bpe
from gptforge.errors import UserError
from gptforge.interop.export import export_command

from helpers import make_run

transformers = pytest.importorskip("transformers")


def hf_logits(directory, idx):
    hf = transformers.GPT2LMHeadModel.from_pretrained(directory).eval()
    with torch.no_grad():
        return hf(idx).logits


def max_diff(model, directory, idx):
    with torch.no_grad():
        ours, _ = model(idx)
    theirs = hf_logits(directory, idx)
    assert theirs.shape[-1] == model.vocab_size
    return (ours[..., :model.vocab_size] - theirs).abs().max().item()


def test_gpt2_run_with_gpt2_tokenizer(tmp_path):
    run, model = make_run(tmp_path, tokenizer=gpt2_tokenizer())
    out = tmp_path / "exported"
    assert export_command(run, "hf", out) == out
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "config.json", "generation_config.json", "merges.txt", "model.safetensors",
        "special_tokens_map.json", "tokenizer_config.json", "vocab.json"]
    idx = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(2))
    assert max_diff(model, out, idx) < 1e-5
    config = json.loads((out / "config.json").read_text())
    assert (config["vocab_size"], config["n_positions"], config["eos_token_id"]) == (50257, 16, 50256)
    # the tokenizer files give GPT-2's ids
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "Hello world, the quick brown fox's 12345 naïve  émigrés\n\n  Again"
    assert hf_tok.encode(text) == [int(i) for i in gpt2_tokenizer().encode(text)]
    assert hf_tok.eos_token_id == 50256
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_bias_free_gpt2_run(tmp_path):
    run, model = make_run(
        tmp_path, vocab_size=65, bias=False, tokenizer=CharTokenizer([chr(32 + i) for i in range(64)])
    )
    out = tmp_path / "exported"
    export_command(run, "hf", out)
    assert max_diff(model, out, torch.arange(16)[None] * 4) < 1e-5
    # the character vocabulary goes along as a tokenizer.json transformers reads
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "HELLO, WORLD! [1+2=3?] _^"  # characters 32..95: the run's vocabulary
    assert hf_tok.encode(text) == [ord(c) - 32 for c in text] and hf_tok.decode(hf_tok.encode(text)) == text
    assert hf_tok.eos_token_id == 64


def test_trained_bpe_tokenizer_is_exported(tmp_path):
    texts = ["the cat sees the moon. a dog loves the sea. " * 20, "my king fears his crown. " * 20]
    tok = train_bpe(texts, 300, tmp_path / "tok")
    run, model = make_run(tmp_path, vocab_size=tok.vocab_size, tokenizer=tok)
    out = tmp_path / "exported"
    export_command(run, "hf", out)
    assert max_diff(model, out, torch.arange(16)[None]) < 1e-5
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "the cat loves his crown."
    assert hf_tok.encode(text) == [int(i) for i in tok.encode(text)]


def test_bad_requests(tmp_path):
    run, _ = make_run(tmp_path, vocab_size=65)
    with pytest.raises(UserError, match="does not exist"):
        export_command(tmp_path / "nope", "hf", tmp_path / "o")
    with pytest.raises(UserError, match="only export format is 'hf'"):
        export_command(run, "gguf", tmp_path / "o")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not an empty directory"):
        export_command(run, "hf", busy)
    assert (busy / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(UserError, match="no complete checkpoint"):
        export_command(empty, "hf", tmp_path / "o")
    # an existing empty directory is fine
    (tmp_path / "o").mkdir()
    export_command(run, "hf", tmp_path / "o")
    assert (tmp_path / "o" / "model.safetensors").is_file()


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch

    run, _ = make_run(tmp_path, vocab_size=65)

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(UserError, match=r"^cannot write .*exported: the disk is full \(No space left on device\)"):
        export_command(run, "hf", tmp_path / "exported")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_an_export_that_would_load_wrong_is_not_written(tmp_path, monkeypatch):
    import gptforge.interop.export as export

    run, _ = make_run(tmp_path, vocab_size=65)
    real = export.hf_state_from_gptforge

    def wrong(state, cfg):  # a mapping bug: one bias lost
        tensors = real(state, cfg)
        tensors["transformer.h.1.mlp.c_fc.bias"].zero_()
        return tensors

    monkeypatch.setattr(export, "hf_state_from_gptforge", wrong)
    with pytest.raises(RuntimeError, match="do not reproduce"):
        export_command(run, "hf", tmp_path / "exported")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
