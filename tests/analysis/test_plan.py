"""gptforge plan: exact parameter counts against the real model, FLOPs, memory, fit, data, download, time."""

import json
import math

import pytest

from gptforge.analysis.gpus import find_gpu
from gptforge.analysis.plan.sizing import (
    FINEWEB_SHARD_CHARS,
    download_need,
    flops_per_token,
    make_plan,
    memory_estimate,
    param_counts,
)
from gptforge.cli import main
from gptforge.config import ModelConfig, build_config
from gptforge.errors import UserError
from gptforge.model.gpt import GPT
from gptforge.train.fit import batch_splits

CONFIGS = [
    dict(arch="gpt2", n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=70, bias=True),
    dict(arch="gpt2", n_layer=3, n_head=4, n_embd=64, block_size=40, vocab_size=65, bias=False),
    dict(arch="gpt2", n_layer=1, n_head=1, n_embd=48, block_size=8, vocab_size=128, bias=True),
    dict(arch="modern", n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=70),
    dict(arch="modern", n_layer=3, n_head=4, n_embd=64, block_size=40, vocab_size=1000),
]


@pytest.mark.parametrize(
    "values", CONFIGS, ids=lambda v: f"{v['arch']}-{v['n_layer']}x{v['n_embd']}-v{v['vocab_size']}"
)
def test_analytic_counts_equal_the_real_model(values):
    m = ModelConfig(**values)
    counts = param_counts(m, m.vocab_size)
    model = GPT(m)
    assert counts.total == sum(p.numel() for p in model.parameters()) == model.num_params()
    assert counts.non_embedding == model.num_params(non_embedding=True)
    assert counts.matmul(m) == model.matmul_params()
    assert flops_per_token(m, counts) == model.flops_per_token()
    # the component split adds up to the model's own per-module sums
    blocks = model.transformer.h
    assert counts.attention == sum(p.numel() for b in blocks for p in b.attn.parameters())
    assert counts.mlp == sum(p.numel() for b in blocks for p in b.mlp.parameters())


def test_gpt2_124m_numbers():
    counts = param_counts(ModelConfig(), 50257)
    assert counts.total == 124_475_904  # nanoGPT's GPT-2 with the vocabulary padded to 50,304
    assert counts.token_embedding == 50304 * 768 and counts.position_embedding == 1024 * 768 and counts.head == 0
    assert flops_per_token(ModelConfig(), counts) == 6 * (12 * 12 * 768 * 768 + 50304 * 768) + 12 * 12 * 768 * 1024


def test_plan_defaults_and_chinchilla():
    cfg = build_config({"batch_size": 8, "gradient_accumulation_steps": 4})
    plan = make_plan(cfg)
    assert plan["vocab_size"] == 50257 and plan["padded_vocab"] == 50304
    assert plan["tokens_per_iter"] == 8 * 4 * 1024
    # no max_iters: the trainer's rule, 20 tokens per parameter
    assert plan["max_iters"] == math.ceil(20 * 124_475_904 / (8 * 4 * 1024))
    assert plan["chinchilla_tokens"] == 20 * 124_475_904
    assert plan["chinchilla_ratio"] == pytest.approx(1.0, abs=0.001)


def test_memory_matches_the_measured_h100_figure():
    # PERFORMANCE.md: nanoGPT's GPT-2 124M, batch 64 x 1024, compiled, bf16, fused AdamW: 40.8 GiB peak
    cfg = build_config({"batch_size": 64, "compile": "true"})
    mem = memory_estimate(cfg, param_counts(cfg.model, 50257), 50257, 64, "compiled")
    assert mem.weights == mem.gradients == 4 * 124_475_904 and mem.optimizer == 8 * 124_475_904
    assert 40.8 * 0.97 <= mem.needed_gib <= 40.8 * 1.1


def test_muon_keeps_one_state_for_hidden_matrices_and_fsdp_shards():
    m = dict(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=100)
    counts = param_counts(ModelConfig(**m), 100)
    muon = memory_estimate(build_config({**m, "optimizer": "muon"}), counts, 100, 1, "eager")
    assert muon.optimizer == 4 * 12 * 2 * 64 * 64 + 8 * (counts.total - 12 * 2 * 64 * 64)
    fsdp = memory_estimate(build_config({**m, "fsdp": True}), counts, 100, 1, "eager", processes=4)
    assert fsdp.weights == 4 * counts.total / 4 and fsdp.optimizer == 8 * counts.total / 4


def test_batch_splits_keep_the_global_batch():
    assert batch_splits(12, 1) == [(12, 1), (6, 2), (4, 3), (3, 4), (2, 6), (1, 12)]
    assert batch_splits(12, 2) == [(6, 2), (3, 4), (2, 6), (1, 12)]  # accumulation divisible by the processes


def test_fit_and_suggested_split_on_a_12gb_card():
    cfg = build_config({"batch_size": 16, "gradient_accumulation_steps": 32, "max_iters": 5000})
    plan = make_plan(cfg, gpu="RTX 4070")
    fit = plan["fit"]
    assert plan["gpu"].memory_gb == 12 and not fit["fits"] and fit["needed_gib"] > 11.94
    micro, accum = fit["best_split"]
    assert micro * accum == 16 * 32 and micro < 16 and fit["best_needed_gib"] <= plan["gpu"].capacity_gib
    h100 = make_plan(cfg, gpu="H100")
    assert h100["fit"]["fits"]
    # the time: total FLOPs at 40% of the H100's 989 TFLOP/s
    total = h100["flops_per_token"] * 5000 * 16 * 32 * 1024
    assert h100["times"]["H100 (80 GB)"] == pytest.approx(total / (989e12 * 0.4))


def test_gpu_names():
    assert find_gpu("4070").name == "rtx 4070" and find_gpu("4070").peak_flops == 58.3e12
    assert find_gpu("NVIDIA H100 80GB HBM3").peak_flops == 989e12
    assert find_gpu("A100 40GB").memory_gb == 40 and find_gpu("a100").memory_gb == 80
    assert find_gpu("RTX 3060").peak_flops is None  # memory known, peak not in metrics.py's table
    with pytest.raises(UserError, match="--gpu 'TPU v5': unknown GPU"):
        find_gpu("TPU v5")


def test_download_sizing():
    need = download_need(1e9, None)
    assert need["chars"] == 4.8e9 and need["shards"] == math.ceil(4.8e9 / FINEWEB_SHARD_CHARS) == 20
    assert download_need(1e9, 4.0)["shards"] == 16


def test_plan_with_data_counts_epochs(char_data):
    manifest = json.loads((char_data / "manifest.json").read_text())
    totals = manifest["totals"]
    cfg = build_config({"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16, "batch_size": 4, "max_iters": 1000})
    plan = make_plan(cfg, data=str(char_data))
    assert plan["vocab_size"] == manifest["tokenizer"]["vocab_size"]
    assert plan["epochs"] == pytest.approx(1000 * 4 * 16 / totals["train_tokens"])
    assert plan["data"].chars_per_token == pytest.approx(totals["characters"] / totals["tokens"])
    assert plan["download"]["measured"] and plan["download_missing"]["tokens"] == max(0, 64000 - totals["train_tokens"])


def test_plan_errors():
    cfg = build_config({})
    with pytest.raises(UserError, match="--mfu 40: give a fraction"):
        make_plan(cfg, mfu=40)
    with pytest.raises(UserError, match="data directory '/nonexistent/x' does not exist"):
        make_plan(cfg, data="/nonexistent/x")
    note = make_plan(build_config({"gradient_accumulation_steps": 3}), processes=2)["notes"][0]
    assert "must be divisible by --processes (2)" in note


def test_cli_prints_the_true_count_of_a_config_claiming_125m(tmp_path, capsys):
    toml = tmp_path / "gpt2_small.toml"
    toml.write_text("# GPT-2 small: 125M parameters\n"
                    "n_layer = 4\nn_head = 8\nn_embd = 512   # the 125M model\nblock_size = 1024\n"
                    "batch_size = 16\ngradient_accumulation_steps = 32\nmax_iters = 14500\n", encoding="utf-8")
    assert main(["plan", str(toml), "--gpu", "RTX 4070"]) == 0
    out = capsys.readouterr().out
    assert "total                    38,890,496  = 38.9M" in out
    assert "tokens per iteration  524,288 = 16 batch x 32 accumulation x 1024 block" in out
    assert "planned tokens        7,602,176,000 (7.60B), 195.5 tokens per parameter" in out
    assert "RTX 4070 (12 GB)" in out
    # both comments that claim 125M are called out with the true size
    assert "note: line 1 of " in out and "note: line 4 of " in out
    assert "claims 125M parameters; this config's model has 38.9M" in out


def test_cli_reports_a_bad_gpu_in_one_line(capsys):
    assert main(["plan", "--gpu", "Voodoo2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("gptforge plan: error: --gpu 'Voodoo2': unknown GPU") and "\n" not in err


def test_only_sizes_of_the_model_are_claims(tmp_path):
    from gptforge.analysis.plan.sizing import claimed_sizes

    comments = ["# config for training GPT-2 (124M) on FineWeb 10B", "# these make the total batch size be ~0.5M",
                "# this makes total number of tokens be 300B", "# a 1.5B params model", "# gpt2-xl 1.5B",
                "n_embd = 768  # the 350M-parameter GPT", "# 10B tokens of FineWeb-Edu, 2M batch", "# 7B model"]
    path = tmp_path / "c.toml"
    path.write_text("\n".join(comments) + "\n", encoding="utf-8")
    assert claimed_sizes(path) == [(1, 124e6), (4, 1.5e9), (5, 1.5e9), (6, 350e6), (8, 7e9)]


def test_mfu_in_nanogpts_convention_is_converted_to_the_card():
    """nanoGPT prints MFU against an A100's 312 TFLOPS whatever the GPU: "10% on a 4070" is 53.5% of the 4070's
    58.3 TFLOPS, and planning with --mfu 0.10 would predict 5.35x too long."""
    cfg = build_config({"max_iters": 5000, "batch_size": 12, "gradient_accumulation_steps": 40})
    plain = make_plan(cfg, gpu="RTX 4070", mfu=0.10)
    nano = make_plan(cfg, gpu="RTX 4070", mfu="10%@A100")
    assert nano["mfu"] == pytest.approx(0.10 * 312 / 58.3) and nano["mfu_converted"]["given"] == 0.10
    (label,) = nano["times"]
    assert plain["times"][label] / nano["times"][label] == pytest.approx(312 / 58.3)
    assert nano["times"][label] == pytest.approx(nano["total_flops"] / 31.2e12)
    assert make_plan(cfg, gpu="4070", mfu="10%@nanogpt")["mfu"] == nano["mfu"]
    assert make_plan(cfg, mfu="40%")["mfu"] == 0.4 and make_plan(cfg, mfu="0.4")["mfu"] == 0.4
    for mfu, gpu, message in [("10%@A100", None, "name that card with --gpu"), ("fast", None, "give a fraction"),
                              ("60%@A100", "RTX 4070", "would be 321% of its peak"), ("140%", None, "between 0 and 1"),
                              ("10%@Voodoo", "RTX 4070", "unknown GPU")]:
        with pytest.raises(UserError, match=message):
            make_plan(cfg, gpu=gpu, mfu=mfu)


def test_cli_plan_with_nanogpts_mfu(capsys):
    assert main(["plan", "--gpu", "RTX 4070", "--mfu", "10%@A100", "--max_iters=5000"]) == 0
    out = capsys.readouterr().out
    assert ("time at 54% MFU: 10% of the A100 (80 GB)'s 312 TFLOPS (nanoGPT's convention) is 53.5% of the "
            "RTX 4070 (12 GB)'s 58.3") in out
