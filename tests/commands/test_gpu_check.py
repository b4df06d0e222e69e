"""benchmarks/gpu_check.py: `--smoke` runs every check of the GPU check on the CPU and writes its table, so the
script works the day someone with a GPU runs it; its verdicts fail on the evidence they should fail on."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from gptforge.train.loop import train

from helpers import REPO, tiny_config, tiny_text

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # (its dataclasses look their module up while being made)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(1500)  # ~20 fresh processes (torchrun ones among them): 1-3 minutes on 2 shared cores
def test_smoke_runs_every_check_on_the_cpu_and_writes_the_table(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(tiny_text(3000), encoding="utf-8")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--text", str(text)],
                          capture_output=True, text=True, timeout=1400, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    lines = (out / "gpu_check.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["check", "scope", "metric", "value", "status", "note"]
    rows = [line.split("\t") for line in lines[1:]]
    assert all(len(r) == 6 and r[4] == "ok" for r in rows), [r for r in rows if r[4] != "ok"]
    value = {(r[0], r[1], r[2]): r[3] for r in rows}
    for check in ("a resume", "b torchrun x1", "b torchrun x2", "c fp16"):  # b x2: 2 gloo processes
        assert value[(check, "total", "steps 5-8 compared")] == "4"
        assert value[(check, "total", "max |loss difference|")] == "0"
        assert value[(check, "total", "final weights bit-equal")] == "yes"
    for b in (2, 4, 8):
        assert float(value[(f"d batch {b}", "total", "tokens/s")].replace(",", "")) > 0
        assert float(value[(f"d batch {b}", "total", "peak memory GiB")]) > 0
        assert value[(f"d batch {b}", "total", "MFU")] == "n/a"  # a CPU has no peak in the table
    total = float(value[("d batch 8 x 2 GPUs", "total", "tokens/s")].replace(",", ""))
    per_gpu = [float(value[("d batch 8 x 2 GPUs", f"gpu{i}", "tokens/s")].replace(",", "")) for i in (0, 1)]
    assert sum(per_gpu) == pytest.approx(total, abs=2)  # (rounded to whole tokens)
    assert value[("e recipe (smoke: not judged)", "total", "seconds to val <= 1.47")] == "never"  # 6 tiny steps
    # block 32, a prompt of 8: 24 greedy tokens inside the cache's window, each the full model's first choice
    assert value[("f serve (smoke: not judged)", "total", "greedy tokens equal with/without KV cache")] == "24/24"
    assert "0 failed of" in done.stdout


def test_a_resume_that_is_not_bit_equal_fails(tmp_path, char_data):
    module = gpu_check()
    for name, seed in (("a", 7), ("b", 8)):
        train(tiny_config(char_data, tmp_path / name, max_iters=4, eval_interval=2, seed=seed))
    same = module.resume_rows("a resume", "total", tmp_path / "a", tmp_path / "a", 2)
    assert [r.status for r in same] == ["ok"] * 3 and same[1].value == "0"
    other = module.resume_rows("a resume", "total", tmp_path / "a", tmp_path / "b", 2)
    assert [r.status for r in other] == ["FAIL"] * 3 and other[2].value == "no" and float(other[1].value) > 0


def test_throughput_fails_over_plans_memory_or_under_half_of_nanogpt_on_an_h100():
    module = gpu_check()
    s = module.Settings(False, "cuda", (), "bfloat16", "true", ("--dtype=bfloat16",), (64,), (20, 5), (), 0)
    fine = {"batch": 64, "tokens_per_s": 480_000.0, "ms_per_iter": 136.5, "mfu": 0.42, "data_share": 0.001,
            "peak_memory_gib": 40.8, "peak_memory_gib_per_process": [40.8]}
    rows = module.throughput_rows(s, [fine], "NVIDIA H100 80GB HBM3", 0)
    assert all(r.status == "ok" for r in rows)
    assert next(r for r in rows if r.metric == "tokens/s").note.startswith("0.98x nanoGPT's 488,710")
    slow = {**fine, "tokens_per_s": 200_000.0}
    assert next(r for r in module.throughput_rows(s, [slow], "NVIDIA H100 80GB HBM3", 0)
                if r.metric == "tokens/s").status == "FAIL"
    assert next(r for r in module.throughput_rows(s, [slow], "NVIDIA A100-SXM4-80GB", 0)
                if r.metric == "tokens/s").status == "ok"  # nanoGPT's figure is an H100's
    heavy = {**fine, "peak_memory_gib": 60.0, "peak_memory_gib_per_process": [60.0]}
    memory = next(r for r in module.throughput_rows(s, [heavy], "NVIDIA H100 80GB HBM3", 0)
                  if r.metric == "peak memory GiB")
    assert memory.status == "FAIL" and "plan's estimate" in memory.note


def test_without_a_gpu_the_full_check_says_so(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "no CUDA device here; `--smoke` runs the same steps on the CPU" in done.stderr
