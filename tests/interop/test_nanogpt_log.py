"""nanoGPT's console log read as a run: the shared real log of a CPU run (skipped without ../shared), the
hand-written 8-GPU log in tests/fixtures/nanogpt, diagnose and plot on them, and bad input."""

import math
import re
import shutil

import numpy as np
import pytest

from gptforge.analysis.runlog import read_run
from gptforge.cli import main
from gptforge.commands.runs import diagnose_command, open_log, plot_command
from gptforge.errors import UserError
from gptforge.interop.nanogpt_log import read_nanogpt_log, split_launches

import synthetic_runs as runs
from helpers import FIXTURES, nanogpt_char_folder

GPU_LOG = FIXTURES / "nanogpt" / "gpt2-8xa100.log"


@pytest.fixture
def real_log(shared_data, tmp_path):
    """The shared log beside nanoGPT's data folder, laid out as in a nanoGPT checkout."""
    text = (shared_data / "tinyshakespeare.txt").read_text(encoding="utf-8")
    nanogpt_char_folder(tmp_path / "data" / "shakespeare_char", text)
    log = tmp_path / "shakespeare-char-cpu.log"
    shutil.copy(shared_data / "nanogpt-logs" / "shakespeare-char-cpu.log", log)
    return log


def test_the_real_cpu_log_reads_as_a_run(real_log):
    run, log = open_log(real_log)
    assert log.data_dir == real_log.parent / "data" / "shakespeare_char"  # found from `found vocab_size ... (inside`
    assert log.settings["batch_size"] == 12 and log.settings["n_layer"] == 4 and log.settings["dropout"] == 0.0
    assert log.settings["eval_interval"] == 100 and log.settings["wandb_project"] == "shakespeare-char"  # the echo
    assert log.config["device"] == "cpu" and log.config["compile"] == "false" and log.config["bias"] is False
    start = run.start
    assert start.params == 804_096  # 802,944 decayed + 1,152 non-decayed, as the log says
    assert start.tokens_per_iter == 768 and start.dataset_train_tokens == 1_003_854 and start.world_size == 1
    assert [e.step for e in run.evals] == list(range(0, 801, 100))
    assert (run.evals[-1].train_loss, run.evals[-1].val_loss) == (2.1571, 2.2157)
    assert len(run.logs) == 81 and run.logs[0].step == 1 and run.logs[-1].step == 801  # iter N is update N + 1
    assert run.logs[0].dt_ms == 6828.07 and run.logs[-1].tokens == 801 * 768
    assert run.logs[1].lr == pytest.approx(1e-3 * 11 / 101)  # nanoGPT's get_lr(10) in warmup
    assert run.end_reason == "max_iters" and run.trainer == "nanoGPT"
    assert run.time_includes[1] == "the start-up and the eval at step 0"
    assert run.time_includes[101] == "the eval at step 100 and the checkpoint save" and len(run.time_includes) == 9
    assert run.printed_mfu[11] == pytest.approx(0.0004) and 1 not in run.printed_mfu  # -100%: not measured yet


def test_diagnose_the_real_cpu_log(real_log, capsys):
    d = diagnose_command(real_log)
    f = d.facts
    assert f.last_step == 801 and f.tokens_seen == 615_168
    assert f.epochs == pytest.approx(615_168 / 1_003_854) and f.tokens_per_param == pytest.approx(615_168 / 804_096)
    assert f.val_min == 2.2157 and f.val_min_step == 800 and f.trend.status == "improving"
    assert f.schedule.now == pytest.approx(1e-4) and f.warmup_iters == 100
    # the eval and start-up iterations are left out of the speed figures
    assert f.step_ms == pytest.approx(38.5, abs=1.0) and f.throughput.p10 > 10_000
    assert f.mfu is None and f.mfu_a100.median == pytest.approx(0.0003)
    timing = d.finding("step_time_includes_evals")
    assert timing.evidence[0].startswith("iter 0: 6,828 ms against a median of 38")
    assert "8 iteration(s) right after an eval (iters 100, 200, 300, 400 ...): median 4" in timing.evidence[1]
    assert "nanoGPT draws new random batches at every eval" in " ".join(d.finding("eval_noise").evidence)
    assert "throughput_unstable" in d.kinds()  # the 1-2 s iterations at 60, 110, 170 ...: a busy shared machine
    assert "diverged" not in d.kinds() and "overfitting" not in d.kinds()
    out = capsys.readouterr().out
    assert "801 updates (nanoGPT's iter 0-800) of max_iters 800 (ended: max_iters)" in out
    assert "0.03% in nanoGPT's convention" in out and "on a CPU a GPU's peak means nothing" in out
    report = (real_log.parent / "shakespeare-char-cpu.diagnosis.md").read_text()
    assert "from nanoGPT's console log shakespeare-char-cpu.log" in report and "| epochs | 0.61 |" in report
    assert (real_log.parent / "shakespeare-char-cpu.loss.png").read_bytes()[:4] == b"\x89PNG"


def test_diagnose_a_log_with_data_elsewhere_names_the_data(real_log, tmp_path, monkeypatch, capsys):
    """--data from another working directory: the data family and the tokenizer come from that folder."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    d = diagnose_command(real_log, data=str(real_log.parent / "data" / "shakespeare_char"), out=str(tmp_path / "d"))
    assert d.facts.epochs == pytest.approx(615_168 / 1_003_854)
    assert "with the char tokenizer on shakespeare data" in capsys.readouterr().out


def test_the_gpu_log_mfu_in_both_conventions(tmp_path, capsys):
    run, log = open_log(GPU_LOG, gpu="A100")
    assert run.start.world_size == 8  # nanoGPT's MFU is per process: the printed values imply 8
    assert "implies 8 processes" in " ".join(log.notes)
    assert log.settings["gradient_accumulation_steps"] == 40 and log.settings["max_iters"] == 300  # 5 * 8; override
    assert log.config["wandb_log"] is False and log.config["compile"] == "auto"  # not set: gptforge's auto
    assert run.start.params == 124_373_760 and run.start.tokens_per_iter == 491_520
    clean = [e for e in run.logs if e.step not in run.time_includes]
    flops = 6 * (12 * 12 * 768 ** 2 + 50304 * 768) + 12 * 12 * 768 * 1024
    assert clean[5].mfu == pytest.approx(flops * 491_520 / (clean[5].dt_ms / 1000) / 8 / 312e12)
    d = diagnose_command(GPU_LOG, gpu="A100", out=tmp_path)
    assert 0.39 < d.facts.mfu.median < 0.42 and 0.37 < d.facts.mfu_a100.median < 0.39
    # the same run on a card with a lower peak is a higher MFU; nanoGPT's figure does not change
    d = diagnose_command(GPU_LOG, gpu="RTX 4090", out=tmp_path)
    assert d.facts.mfu.median == pytest.approx(0.40 * 312 / 165.2, abs=0.03)
    assert d.finding("warmup_too_long").evidence[0] == ("warmup_iters 2,000 for a run of 300 iterations: the LR "
                                                        "reached 15% of its peak")
    mfu_row = next(line for line in capsys.readouterr().out.splitlines()[::-1] if line.strip().startswith("MFU"))
    assert re.search(r"7\d\.\d% median of the real GPU's dense bf16 peak \(RTX 4090 \(24 GB\), 165\.2 TFLOPS\); "
                     r"38\.\d\d% in nanoGPT's convention \(as nanoGPT printed it", mfu_row), mfu_row
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpt2-8xa100.diagnosis.md", "gpt2-8xa100.loss.png"]


def test_a_log_without_its_config_echo_takes_config(tmp_path):
    lines = GPU_LOG.read_text().splitlines()
    lines = lines[lines.index("Overriding: max_iters = 300"):]  # without the config echo
    (tmp_path / "bare.log").write_text("\n".join(lines) + "\n")
    assert read_nanogpt_log(tmp_path / "bare.log").settings["gradient_accumulation_steps"] == 40  # the default
    log = read_nanogpt_log(tmp_path / "bare.log", config=FIXTURES / "nanogpt" / "train_gpt2.py")
    assert log.settings["eval_iters"] == 200 and log.settings["wandb_project"] == "owt"


def test_a_log_that_went_to_nan_is_diverged(tmp_path):
    lines = ["tokens per iteration will be: 8,192", "step 0: train loss 10.9000, val loss 10.9100"]
    for i in range(0, 400, 10):
        loss = 10.9 * math.exp(-i / 80) + 4.0 if i < 250 else float("nan")
        lines.append(f"iter {i}: loss {loss:.4f}, time 50.00ms, mfu 10.00%")
    (tmp_path / "nan.log").write_text("\n".join(lines) + "\n")
    d = diagnose_command(tmp_path / "nan.log")
    assert d.kinds()[0] == "diverged" and d.facts.nonfinite_losses == 15
    assert "15 logged loss(es) were nan or inf, from step 251" in d.findings[0].evidence


def test_plot_draws_a_nanogpt_log_beside_a_gptforge_run(real_log, tmp_path):
    from gptforge.analysis.plot import draw

    run_dir = runs.overfitting(tmp_path / "gptforge-run")
    out = plot_command([real_log, run_dir / "metrics.jsonl"], tmp_path / "both.png")  # the file means its run
    assert out.read_bytes()[:4] == b"\x89PNG"
    fig = draw([open_log(real_log)[0], read_run(run_dir)])
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["shakespeare-char-cpu.log: train (smoothed)", "shakespeare-char-cpu.log: val",
                      "gptforge-run: train (smoothed)", "gptforge-run: val"]
    xs = fig.axes[0].get_lines()[1].get_xdata()  # the smoothed train curve of the log, against steps
    assert xs[0] == 1 and xs[-1] == 801
    # throughput leaves out the iterations whose time also counts an eval or the start-up, as diagnose does
    # (they dipped to a few hundred tok/s at every eval; the busy machine's slow iterations stay)
    speed = fig.axes[3]
    assert speed.get_title() == "throughput"
    steps = set(speed.get_lines()[0].get_xdata())
    assert len(steps) == 81 - 9 and not steps & {1, 101, 201, 801}


def test_bad_logs_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "other.log").write_text("hello\nEpoch 1/10 - loss: 0.52\n")
    assert main(["diagnose", str(tmp_path / "other.log")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'other.log'} holds no nanoGPT `iter N: loss ...`" in err
    assert main(["plot", str(tmp_path / "other.log"), "--out", str(tmp_path / "x.png")]) == 1
    assert "holds no nanoGPT" in capsys.readouterr().err
    code = tmp_path / "train_x.py"
    code.write_text("batch_size = 8\nimport os\nn_layer = int(os.environ['L'])\n")
    assert main(["diagnose", str(GPU_LOG), "--config", str(code)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"gptforge diagnose: error: {code}: line 2: `import os` is code, not a `name = value` setting; gptforge "
        "reads nanoGPT configs as data and never runs them: write the value itself (e.g. `batch_size = 12`)")
    assert main(["diagnose", str(tmp_path / "missing.log")]) == 1
    assert "missing.log does not exist" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.log", "train_x.py"]  # nothing written
    with pytest.raises(UserError, match="--gpu 'Voodoo 3': unknown GPU"):
        open_log(GPU_LOG, gpu="Voodoo 3")


def test_launches_and_resume(tmp_path):
    """A log appended to by a resumed run: records after the checkpoint's step are replaced, as for a
    gptforge run's metrics.jsonl."""
    first = ["tokens per iteration will be: 1,024", "step 0: train loss 5.0000, val loss 5.0000",
             "iter 0: loss 5.0000, time 900.00ms, mfu -100.00%", "iter 10: loss 4.0000, time 10.00ms, mfu -100.00%",
             "step 20: train loss 3.9000, val loss 3.9500", "saving checkpoint to out",
             "iter 20: loss 3.8000, time 100.00ms, mfu 1.00%", "iter 30: loss 3.7000, time 10.00ms, mfu 1.00%"]
    second = ["Overriding: init_from = resume", "tokens per iteration will be: 1,024", "Resuming training from out",
              "step 20: train loss 3.9000, val loss 3.9500", "iter 20: loss 3.6000, time 800.00ms, mfu -100.00%"]
    launches = split_launches(first + second)
    assert len(launches) == 2 and launches[1].resumed and launches[1].settings == {"init_from": "resume"}
    (tmp_path / "r.log").write_text("\n".join(first + second) + "\n")
    run, _ = open_log(tmp_path / "r.log")
    assert [(e.step, e.loss) for e in run.logs] == [(1, 5.0), (11, 4.0), (21, 3.6)]
    assert [s.resumed_from for s in run.starts] == [None, 20]
    assert run.time_includes[21] == "the start-up and the eval at step 20"


def test_an_overfitting_nanogpt_run_gets_the_same_findings_as_a_gptforge_one(tmp_path):
    """nanoGPT's shakespeare-char recipe as its log would read (PERFORMANCE.md: best val near step 1750, then
    rising): overfitting at the best step, the epochs over train.bin, found next to the log."""
    folder = tmp_path / "data" / "shakespeare_char"
    folder.mkdir(parents=True)
    np.zeros(1_003_854, dtype=np.uint16).tofile(folder / "train.bin")
    np.zeros(111_540, dtype=np.uint16).tofile(folder / "val.bin")
    lines = ["Overriding config with config/train_shakespeare_char.py:",
             *(FIXTURES / "nanogpt" / "train_shakespeare_char.py").read_text().splitlines(), "",
             "tokens per iteration will be: 16,384", "found vocab_size = 65 (inside data/shakespeare_char/meta.pkl)",
             "Initializing a new model from scratch", "number of parameters: 10.65M"]
    for i in range(0, 5001):
        if i % 250 == 0:
            train = 0.95 + 3.2 * math.exp(-i / 300) - 0.04 * i / 1000
            val = 1.40 + 2.8 * math.exp(-i / 300) + 6e-5 * max(0, i - 1750)
            lines += [f"step {i}: train loss {train:.4f}, val loss {val:.4f}"]
        if i % 10 == 0:
            loss = 0.95 + 3.2 * math.exp(-i / 300) - 0.04 * i / 1000 + 0.03 * math.sin(i)
            lines.append(f"iter {i}: loss {loss:.4f}, time {13.4 if i % 250 else 900.0:.2f}ms, mfu 5.00%")
    (tmp_path / "sc.log").write_text("\n".join(lines) + "\n")
    d = diagnose_command(tmp_path / "sc.log")
    f = d.facts
    assert d.kinds()[0] == "overfitting" and f.val_min_step == 1750
    assert f.epochs == pytest.approx(5001 * 16384 / 1_003_854) and f.dataset_train_tokens == 1_003_854
    top = d.findings[0]
    assert top.advice[0].startswith("use the best checkpoint (step 1,750)")
    assert any("81.6 epochs over 1.00M train tokens" in e for e in top.evidence)
    assert f.step_ms == pytest.approx(13.4) and f.throughput.cv < 0.01  # the eval iterations left out
