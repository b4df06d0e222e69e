"""`gptforge export` of a modern-arch run: transformers loads it with the code the folder ships, computes the same
logits, and greedy `generate` continues a prompt exactly as `gptforge sample --top-k 1`."""

from __future__ import annotations

import ast
import io

import pytest
import torch

from gptforge import cli
from gptforge.commands.sample import sample_command
from gptforge.data.tokenizers import gpt2_tokenizer, train_bpe
from gptforge.interop.export import export_command

from helpers import make_run, play_texts, tiny_config

transformers = pytest.importorskip("transformers")


def load(directory):
    model = transformers.AutoModelForCausalLM.from_pretrained(directory, trust_remote_code=True).eval()
    return model, transformers.AutoTokenizer.from_pretrained(directory, trust_remote_code=True)


@pytest.fixture(scope="module")
def modern_run(char_data, tmp_path_factory):
    """A modern-arch run trained for a few steps on the tiny character dataset (context 64)."""
    from gptforge.train.loop import train

    run = tmp_path_factory.mktemp("modern") / "run"
    train(tiny_config(char_data, run, arch="modern", block_size=64, max_iters=30, dropout=0.0, eval_interval=4))
    return run


@pytest.fixture(scope="module")
def exported(modern_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported") / "hf"
    export_command(modern_run, "hf", out)
    return out


def test_the_folder_stands_on_its_own(exported):
    assert sorted(p.name for p in exported.iterdir()) == [
        "README.md", "config.json", "configuration_gptforge.py", "generation_config.json", "model.safetensors",
        "modeling_gptforge.py", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
    for name in ("configuration_gptforge.py", "modeling_gptforge.py"):
        source = (exported / name).read_text()
        imported = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported.add("." if node.level else node.module.split(".")[0])
        assert imported <= {"torch", "transformers", "."}, (name, imported)
        assert len(source.splitlines()) < 160  # short enough to read


def test_logits_match_gptforge_in_fp32(tmp_path):
    run, model = make_run(tmp_path, arch="modern", vocab_size=50257, tokenizer=gpt2_tokenizer())
    out = tmp_path / "hf"
    export_command(run, "hf", out)
    hf, tok = load(out)
    idx = torch.randint(0, 50257, (3, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours, theirs = model(idx)[0][..., :50257], hf(idx).logits
    assert theirs.shape == (3, 16, 50257) and (ours - theirs).abs().max().item() <= 1e-5
    text = "Hello world, the quick brown fox's 12345 naïve  émigrés\n\n  Again"
    assert tok.encode(text) == gpt2_tokenizer().encode(text).tolist() and tok.eos_token_id == 50256
    # the KV cache of `generate`: one token at a time gives the logits of the whole sequence
    with torch.no_grad():
        first = hf(idx[:, :10], use_cache=True)
        step = hf(idx[:, 10:11], cache=first.cache if hasattr(first, "cache") else first.past_key_values)
    assert (step.logits[:, -1] - theirs[:, 10]).abs().max().item() <= 1e-5


def test_greedy_generate_continues_exactly_as_gptforge_sample(modern_run, exported, capsys):
    hf, tok = load(exported)
    for prompt in ("the cat", "my king fears"):
        ours = sample_command(modern_run, prompt=prompt, top_k=1, max_new_tokens=40, device="cpu", out=io.StringIO())
        ids = tok(prompt, return_tensors="pt").input_ids
        continued = hf.generate(ids, max_new_tokens=40, do_sample=False)
        assert tok.decode(continued[0, ids.shape[1]:], skip_special_tokens=True) == ours[0]  # (text after the prompt)
    # the same through the command line, with temperature 0 (greedy) instead of top-k 1
    capsys.readouterr()
    ids = tok("the cat", return_tensors="pt").input_ids
    greedy = tok.decode(hf.generate(ids, max_new_tokens=40, do_sample=False)[0, ids.shape[1]:],
                                    skip_special_tokens=True)
    assert cli.main(["sample", str(modern_run), "--prompt", "the cat", "--temperature", "0",
                     "--max-new-tokens", "40", "--device", "cpu"]) == 0
    assert capsys.readouterr().out == "the cat" + greedy + "\n"


def test_batches_with_padding_give_each_row_its_own_result(modern_run, exported):
    hf, tok = load(exported)
    prompts = ["the cat sees", "a dog"]
    alone = [hf.generate(tok(p, return_tensors="pt").input_ids, max_new_tokens=12, do_sample=False)[0, -12:]
             for p in prompts]
    tok.padding_side, tok.pad_token = "left", tok.eos_token
    batch = tok(prompts, return_tensors="pt", padding=True)
    together = hf.generate(**batch, max_new_tokens=12, do_sample=False)[:, -12:]
    assert [row.tolist() for row in together] == [row.tolist() for row in alone]
    # right padding (lm-evaluation-harness's loglikelihood batches): the real positions are unaffected
    tok.padding_side = "right"
    batch = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        padded = hf(**batch).logits
        short = hf(tok(prompts[1], return_tensors="pt").input_ids).logits
    assert (padded[1, :short.shape[1]] - short[0]).abs().max().item() <= 1e-5


def test_trained_bpe_with_gpt4_pattern_and_special_tokens_goes_along(tmp_path):
    texts = play_texts(3)
    tok = train_bpe(texts, 400, tmp_path / "tok", pattern="gpt4", special_tokens=["<|bos|>", "<|user_start|>"])
    run, _ = make_run(tmp_path, arch="modern", vocab_size=tok.vocab_size, tokenizer=tok)
    out = tmp_path / "hf"
    export_command(run, "hf", out)
    _, hf_tok = load(out)
    text = texts[1][:2000] + " 1234567 DON'T"
    assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text).tolist()
    assert hf_tok.convert_tokens_to_ids(["<|endoftext|>", "<|bos|>", "<|user_start|>"]) == [0, 1, 2]


def test_modern_export_that_would_load_wrong_is_not_written(tmp_path, monkeypatch):
    import gptforge.interop.export as export

    run, _ = make_run(tmp_path, arch="modern", vocab_size=65)
    real = export.modern_hf_state

    def wrong(state):  # a mapping bug: one matrix transposed
        tensors = real(state)
        w = tensors["transformer.h.0.attn.c_proj.weight"]
        tensors["transformer.h.0.attn.c_proj.weight"] = w.t().contiguous()
        return tensors

    monkeypatch.setattr(export, "modern_hf_state", wrong)
    with pytest.raises(RuntimeError, match="do not reproduce"):
        export_command(run, "hf", tmp_path / "exported")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_transformers_that_cannot_run_it_is_reported_not_fatal(tmp_path, monkeypatch, capsys):
    run, _ = make_run(tmp_path, arch="modern", vocab_size=65)

    def too_old(*args, **kwargs):
        raise AttributeError("module 'torch.nn.functional' has no attribute 'rms_norm'")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", too_old)
    export_command(run, "hf", tmp_path / "hf")
    assert (f"not checked with transformers {transformers.__version__}: it failed to run it (AttributeError: "
            "module 'torch.nn.functional' has no attribute 'rms_norm')") in capsys.readouterr().out
    assert (tmp_path / "hf" / "model.safetensors").is_file()  # gptforge's own read-back passed
