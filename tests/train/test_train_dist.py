"""Many processes (RELIABILITY 11, 13; issue 5): torchrun with gloo on the CPU.

1 process vs 2 with the same global batch, checkpoints crossing world sizes (DDP and FSDP), every rank
taking the same skip decisions, and a failed rank ending the job in bounded time.

Tolerance for 1 vs 2 processes: the same data reach the same fp32 model, but the gradient is summed in
another order (one process adds the micro-batch gradients as it goes; DDP adds each rank's, then
all-reduces and divides by 2; FSDP reduce-scatters). That changes the last bits of the gradient
(~1e-7 relative), and Adam divides by sqrt(v) so small differences stay relative, not absolute: over 8
steps the losses agree to ~1e-6. We allow 1e-4 relative, far below what a wrong batch, a missed
gradient average or a wrong learning rate would do (these move the loss by > 1e-2 here).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gptforge.train.checkpoint import latest_checkpoint, load_checkpoint
from gptforge.train.loop import train

from helpers import records, sigint_default, tiny_config

WORKER = Path(__file__).with_name("dist_worker.py")
# dropout 0: with dropout, the ranks draw other masks than one process does (same data, other noise)
BASE = dict(max_iters=8, eval_interval=4, eval_iters=3, lr_decay_iters=40, dropout=0.0, keep_last=5,
            gradient_accumulation_steps=2, device="cpu")
RTOL = 1e-4


def cli_args(**overrides) -> list[str]:
    cfg = tiny_config("x", "y", **{**BASE, **overrides}).flat()
    skip = ("data", "out", "sample_prompts", "vocab_size")
    return [f"--{k}={v}" for k, v in cfg.items() if k not in skip]


def torchrun(data, out, nproc=2, env=None, wait=True, code=0, **overrides):
    """`gptforge train` under torchrun (through tests/dist_worker.py); --standalone picks a free port."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(WORKER),
           "train", f"--data={data}", f"--out={out}", *cli_args(**overrides)]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env,
                            preexec_fn=sigint_default)
    if not wait:
        return proc
    out_text, _ = proc.communicate(timeout=180)
    assert (proc.returncode != 0 if code else proc.returncode == 0), out_text[-4000:]
    return out_text


def assert_losses_close(a_run, b_run, steps):
    a, b = records(a_run), records(b_run)
    for s in steps:
        assert b[s]["loss"] == pytest.approx(a[s]["loss"], rel=RTOL), f"step {s}"
        assert b[s]["lr"] == a[s]["lr"] and b[s]["tokens"] == a[s]["tokens"] and b[s]["epoch"] == a[s]["epoch"]


def assert_params_close(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5, msg=k)


def step_dir(run, step):
    return Path(run) / "checkpoints" / f"step_{step:08d}"


def copy_run_at(src, dst, step):
    """A copy of run `src` whose newest checkpoint is `step`."""
    shutil.copytree(src, dst)
    for p in (Path(dst) / "checkpoints").glob("step_*"):
        if int(p.name[5:]) > step:
            shutil.rmtree(p)
    assert latest_checkpoint(dst) == step_dir(dst, step)


@pytest.fixture(scope="module")
def one_process(char_data, tmp_path_factory):
    """The reference: one process, 12 steps, checkpoints at 4, 8 and 12."""
    run = tmp_path_factory.mktemp("one") / "run"
    train(tiny_config(char_data, run, **{**BASE, "max_iters": 12}))
    return run


@pytest.fixture(scope="module")
def two_processes(char_data, tmp_path_factory):
    """The same run (8 steps) with 2 DDP processes; each rank dumps its final parameters."""
    run = tmp_path_factory.mktemp("two") / "run"
    dump = run.parent / "params"
    dump.mkdir()
    output = torchrun(char_data, run, env={"GPTFORGE_TEST_PARAMS": str(dump)})
    return run, dump, output


def test_two_processes_equal_one_and_ranks_hold_identical_parameters(one_process, two_processes):
    run, dump, output = two_processes
    assert "2 process(es), DDP" in output
    assert "gradient_accumulation_steps 2 is global: 1 micro-batch(es) of 4 per process per step" in output
    assert output.count("iter 3: loss") == 1  # only rank 0 prints
    assert_losses_close(one_process, run, range(1, 9))
    for s in (4, 8):
        assert records(run, "eval")[s]["val_loss"] == pytest.approx(
            records(one_process, "eval")[s]["val_loss"], rel=RTOL
        )
    r0, r1 = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # DDP: the same averaged gradient, the same update, bit for bit
    assert_params_close(load_checkpoint(step_dir(one_process, 8))["model"], r0)
    assert_params_close(load_checkpoint(step_dir(run, 8))["model"], r0)
    start = records(run, "start")[0]
    assert start["world_size"] == 2 and start["tokens_per_iter"] == 4 * 16 * 2 and start["fsdp"] is False
    log = records(run)[8]
    assert log["tok_per_s_per_gpu"] == pytest.approx(log["tok_per_s"] / 2, rel=1e-3)
    assert "2 processes: tok/s is the total; per process" in output


def test_the_global_data_position_does_not_depend_on_the_world_size(one_process, two_processes):
    run, _, _ = two_processes
    for s in (4, 8):
        a, b = load_checkpoint(step_dir(one_process, s))["state"], load_checkpoint(step_dir(run, s))["state"]
        assert a["loader"] == b["loader"] and a["tokens_seen"] == b["tokens_seen"]
        assert (a["world_size"], b["world_size"]) == (1, 2)


def test_two_process_checkpoint_resumes_in_one_process(tmp_path, char_data, one_process, two_processes):
    resumed = tmp_path / "resumed"
    shutil.copytree(two_processes[0], resumed)
    train(tiny_config(char_data, resumed, **{**BASE, "max_iters": 12, "init_from": "resume"}))
    assert_losses_close(one_process, resumed, range(9, 13))
    assert_params_close(load_checkpoint(step_dir(one_process, 12))["model"],
                        load_checkpoint(step_dir(resumed, 12))["model"])


def test_one_process_checkpoint_resumes_in_two_fsdp_processes_and_samples_in_one(tmp_path, char_data, one_process):
    run = tmp_path / "fsdp"
    copy_run_at(one_process, run, 4)
    output = torchrun(char_data, run, init_from="resume", fsdp="true", sample_tokens=8)
    assert "FSDP (parameters, gradients and optimizer state sharded)" in output
    assert "samples during training are off with FSDP" in output
    assert "the checkpoint was written by 1 process(es), this run has 2" in output
    assert_losses_close(one_process, run, range(5, 9))  # the optimizer state crossed into the shards intact
    saved = load_checkpoint(step_dir(run, 8))
    assert_params_close(load_checkpoint(step_dir(one_process, 8))["model"], saved["model"])
    assert saved["state"]["world_size"] == 2
    assert saved["optimizer"]["state"].keys() == load_checkpoint(step_dir(one_process, 8))["optimizer"]["state"].keys()
    # the sharded run's checkpoint is an ordinary one: one process samples from it and continues it
    from gptforge.commands.sample import sample_command

    texts = sample_command(str(run), prompt="the cat", max_new_tokens=12, temperature=0.0, top_k=None, device="cpu",
                           out=io.StringIO())
    assert len(texts) == 1 and len(texts[0]) >= 12
    train(tiny_config(char_data, run, **{**BASE, "max_iters": 12, "init_from": "resume"}))
    assert_losses_close(one_process, run, range(9, 13))


def test_skip_and_stop_decisions_agree_across_ranks(tmp_path, char_data):
    """Faults on rank 1 only: fp16 overflow at step 2, a NaN loss at step 4, SIGTERM during step 5.
    Both ranks skip both steps, then both stop after step 5 and save."""
    run, dump = tmp_path / "run", tmp_path / "params"
    dump.mkdir()
    output = torchrun(
        char_data,
        run,
        max_iters=50,
        eval_interval=50,
        dtype="float16",
        spike_sigma=0,
        env={"GPTFORGE_TEST_PARAMS": str(dump), "GPTFORGE_TEST_FAULT": "1:2:overflow,1:4:nan,1:5:sigterm"},
        code=143,  # each rank exits 143 after the save: the job was stopped by a signal
    )
    assert "exitcode  : 143" in output
    # DDP averages the gradients before the scaler looks: rank 0 sees rank 1's inf and skips too
    assert "step 2: fp16 overflow, step skipped; loss scale 65536 -> 32768" in output
    # the loss is all-reduced before the guard looks: rank 0 sees rank 1's NaN
    assert "step 4: non-finite loss (nan), step skipped (1 in a row, 1 in total)" in output
    assert [r["step"] for r in records(run, "nan_skip").values()] == [4]
    # the stop flag is all-reduced: rank 0, which got no signal, stops after the same step
    assert records(run, "end") == {6: records(run, "end")[6]} and records(run, "end")[6]["reason"] == \
        "signal (received by another rank)"
    saved = load_checkpoint(latest_checkpoint(run))
    assert saved["state"]["step"] == 6 and saved["tensors"]["scaler"]["scale"] == 32768.0
    r0, r1 = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    assert all(torch.isfinite(r0[k]).all() and torch.equal(r0[k], r1[k]) for k in r0)
    assert_params_close(saved["model"], r0)


def _rank_pid(launcher: subprocess.Popen, rank: int, deadline: float) -> int:
    """The pid of torchrun's worker with RANK=rank (Linux /proc)."""
    while time.time() < deadline:
        try:
            children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
        except OSError:
            children = []
        for pid in children:
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env:
                return int(pid)
        time.sleep(0.1)
    raise AssertionError(f"no worker with RANK={rank}")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker's pid in /proc")
def test_a_killed_rank_ends_the_job_in_bounded_time(tmp_path, char_data):
    run = tmp_path / "run"
    proc = torchrun(char_data, run, wait=False, max_iters=100_000, eval_interval=3, eval_iters=1)
    deadline = time.time() + 90
    while latest_checkpoint(run) is None or len(records(run)) < 8:  # a few checkpoints and steps done
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    os.kill(_rank_pid(proc, 1, deadline), signal.SIGKILL)
    killed = time.time()
    out, _ = proc.communicate(timeout=60)
    assert time.time() - killed < 40  # torchrun's SIGTERM, then SIGKILL after 30 s, bounds it
    assert proc.returncode == 1
    assert "Signal 9 (SIGKILL) received by PID" in out and "rank      : 1" in out
    assert load_checkpoint(latest_checkpoint(run))["state"]["step"] % 3 == 0  # the newest complete one loads


@pytest.mark.slow  # another torchrun launch (~10 s on 2 cores); the file's default tests stay near 60 s
def test_sigint_to_torchrun_and_its_workers_saves_and_stops_every_rank(tmp_path, char_data):
    """A scheduler that signals every process of a job (Slurm's scancel --signal=INT) makes each worker get
    SIGINT twice: directly, then forwarded by torchrun. That is one request to stop and save, not a
    second Ctrl-C that aborts without saving."""
    run = tmp_path / "run"
    proc = torchrun(char_data, run, wait=False, max_iters=100_000, eval_interval=1000, eval_iters=1)
    deadline = time.time() + 90
    while not (run / "metrics.jsonl").exists() or len(records(run)) < 3:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    workers = [_rank_pid(proc, r, deadline) for r in (0, 1)]
    for pid in workers:
        os.kill(pid, signal.SIGINT)
    os.kill(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert "SIGINT received: finishing this step, then saving a checkpoint" in out
    end = list(records(run, "end").values())
    assert len(end) == 1 and end[0]["reason"] == "signal SIGINT"
    assert load_checkpoint(latest_checkpoint(run))["state"]["step"] == end[0]["step"]
    assert "gptforge train: interrupted\n" not in out  # (the line of a second Ctrl-C, which aborts)
    assert "gptforge train: interrupted (signal SIGINT) after saving the checkpoint" in out and proc.returncode != 0


@pytest.mark.slow  # torchrun ends the job as for the killed rank above; this adds the traceback
def test_a_rank_that_raises_ends_the_job(tmp_path, char_data):
    proc = torchrun(char_data, tmp_path / "run", wait=False, env={"GPTFORGE_TEST_FAULT": "1:3:raise"})
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "ValueError: injected fault on rank 1" in out


def test_a_rank_stuck_outside_the_collectives_times_the_others_out(tmp_path, char_data):
    t0 = time.time()
    proc = torchrun(char_data, tmp_path / "run", wait=False,
                    env={"GPTFORGE_TEST_FAULT": "1:5:hang", "GPTFORGE_DIST_TIMEOUT": "2"})
    out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 1 and time.time() - t0 < 45
    assert "gptforge train: error: rank 0: a collective with the other processes failed" in out
    assert "continue with --init_from=resume" in out
    assert load_checkpoint(latest_checkpoint(tmp_path / "run"))["state"]["step"] == 4  # saved before the hang


def test_fsdp_refuses_what_it_cannot_shard_and_one_process_has_nothing_to_shard(monkeypatch):
    from gptforge.errors import UserError
    from gptforge.train import dist, parallel

    assert parallel.use_fsdp(True, 1, "muon", torch.float16) is False  # one process: trains unsharded
    assert parallel.use_fsdp(True, 2, "adamw", torch.bfloat16) is True
    with pytest.raises(UserError, match="fsdp=true with optimizer=muon: Muon orthogonalises whole matrices"):
        parallel.use_fsdp(True, 2, "muon", torch.float32)
    with pytest.raises(UserError, match="fsdp=true with float16: .* use --dtype=bfloat16"):
        parallel.use_fsdp(True, 2, "adamw", torch.float16)
    monkeypatch.setenv("GPTFORGE_DIST_TIMEOUT", "soon")
    with pytest.raises(UserError, match="GPTFORGE_DIST_TIMEOUT='soon' is not a positive number of seconds"):
        dist.timeout_seconds()
    monkeypatch.setenv("GPTFORGE_DIST_TIMEOUT", "90")
    assert dist.timeout_seconds() == 90.0
