"""Console formats (nanoGPT-compatible), the peak-FLOPs table, MFU, metrics.jsonl."""

from __future__ import annotations

import io
import json

import pytest

from gptforge.errors import UserError
from gptforge.train.console import Console, eval_line, iter_line
from gptforge.train.devices import mfu, peak_flops
from gptforge.train.events import Log, MetricsLog


@pytest.mark.parametrize("name, flops", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H100 NVL", 835e12),
    ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA A100 80GB PCIe", 312e12),
    ("NVIDIA L4", 121e12), ("NVIDIA L40S", 362e12), ("NVIDIA GeForce RTX 3090", 71e12),
    ("NVIDIA GeForce RTX 4070", 58.3e12), ("NVIDIA GeForce RTX 4070 Ti", 80.2e12),
    ("NVIDIA GeForce RTX 4080", 97.5e12), ("NVIDIA GeForce RTX 4090", 165.2e12),
    ("NVIDIA GeForce RTX 5090", 209.5e12),
])
def test_peak_flops_table(name, flops):
    assert peak_flops(name) == flops


def test_unknown_devices_and_override():
    assert peak_flops("CPU (x86_64, 2 threads)") is None and peak_flops(None) is None
    assert peak_flops("CPU", override=1e12) == 1e12
    assert mfu(6e8, 1000.0, None) is None
    assert mfu(6e8, 500_000.0, 989e12) == pytest.approx(6e8 * 5e5 / 989e12)


def test_lines_keep_nanogpt_shape():
    assert iter_line(100, 1.23456, 38.123, None, 20150.2, 1e-3) == \
        "iter 100: loss 1.2346, time 38.12ms, mfu n/a, 20,150 tok/s, lr 1.000e-03"
    assert iter_line(5, 2.0, 10.0, 0.4281, 1.0, 6e-4).startswith("iter 5: loss 2.0000, time 10.00ms, mfu 42.81%")
    line = eval_line(250, 1.5, 1.75, 0.5)
    assert line.startswith("step 250: train loss 1.5000, val loss 1.7500, val ppl 5.75")
    # a diverged run's perplexity in a few characters, not 118 digits
    assert eval_line(100, 272.5, 271.4757, 0.5).startswith("step 100: train loss 272.5000, val loss 271.4757, "
                                                           "val ppl 7.95e+117 (eval")


def test_metrics_jsonl_is_flushed_per_line(tmp_path):
    log = MetricsLog(tmp_path, fresh=True)
    log.write(Log(step=3, loss=1.5, lr=1e-3, tokens=96, epoch=0.1, dt_ms=1.0, tok_per_s=1.0, mfu=None,
                  grad_norm=None, tok_per_s_per_gpu=None, tflops_per_gpu=None))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]  # before close
    assert records[0]["event"] == "log" and records[0]["step"] == 3 and records[0]["loss"] == 1.5
    assert records[0]["mfu"] is None and isinstance(records[0]["time"], float)
    log.close()
    MetricsLog(tmp_path).close()  # a resume appends
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_optional_loggers_not_installed_are_clear(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    with pytest.raises(UserError, match="wandb_log is on but wandb is not installed: pip install wandb"):
        MetricsLog(tmp_path, wandb_log=True)


def test_progress_bar_only_on_a_terminal():
    plain = io.StringIO()
    console = Console(stream=plain)
    console.progress(5, 10, 0.5)
    console.print("iter 5")
    assert plain.getvalue() == "iter 5\n"

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    console = Console(stream=tty)
    console.progress(5, 10, 0.5)
    assert "50.0% 5/10 ETA 2s" in tty.getvalue()
