import pytest

from gptforge.analysis.bench import bench
from gptforge.config import load_config
from gptforge.errors import UserError

TINY = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=16", "--vocab_size=256", "--batch_size=2",
        "--device=cpu"]


def test_bench_reports_consistent_figures_on_cpu(capsys):
    result = bench(load_config(None, TINY + ["--gradient_accumulation_steps=2"]), steps=3, warmup=1)
    assert result["mfu"] is None  # CPU: no peak in the table, so no made-up MFU
    assert result["tokens_per_s"] == pytest.approx(2 * 16 * 2 * 1000 / result["ms_per_iter"])
    assert 0 <= result["data_share"] < 1 and result["peak_memory_gib"] > 0
    out = capsys.readouterr().out
    assert "mfu n/a" in out and "3 timed steps" in out and "accumulation 2" in out


def test_bench_mfu_uses_the_honest_formula_against_the_given_peak():
    result = bench(load_config(None, TINY + ["--peak_flops=1e12"]), steps=2, warmup=0)
    assert result["mfu"] == pytest.approx(result["flops_per_token"] * result["tokens_per_s"] / 1e12)
    # 6 x matmul params (2 layers' worth of attention+MLP here is 1 layer, plus the 256-padded head) + 12·L·d·T
    d, L, T, V = 32, 1, 16, 256
    assert result["flops_per_token"] == 6 * (L * 12 * d * d + V * d) + 12 * L * d * T


def test_bench_rejects_bad_step_counts():
    with pytest.raises(UserError, match="--steps must be positive"):
        bench(load_config(None, TINY), steps=0)
