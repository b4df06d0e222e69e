"""Checkpoints: atomic save, completion marker, checksums, retention, disk full, killed saves, safe loading."""

from __future__ import annotations

import errno
import hashlib
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from gptforge.errors import UserError
from gptforge.train import checkpoint as ck


def tied_model_state():
    torch.manual_seed(0)
    emb = torch.randn(8, 4)
    return {"wte.weight": emb, "lm_head.weight": emb, "ln.bias": torch.zeros(4)}  # tied, as GPT-2


def save(run, step, keep_last=2, is_best=False, val=None):
    opt = {"state": {0: {"step": torch.tensor(float(step)), "exp_avg": torch.ones(3) * step}},
           "param_groups": [{"lr": 0.1, "params": [0]}]}
    return ck.save_checkpoint(run, step, model_state=tied_model_state(), optimizer_state=opt,
                              extra_tensors={"cpu_rng": torch.get_rng_state()},
                              state={"step": step, "tokens_seen": step * 10, "val_loss": val},
                              keep_last=keep_last, is_best=is_best)


def steps(run):
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step_"))


def test_round_trip_and_marker(tmp_path):
    path = save(tmp_path, 5)
    assert path == tmp_path / "checkpoints" / "step_00000005"
    marker = json.loads((path / "COMPLETE").read_text())["files"]
    for name in ck.FILES:
        data = (path / name).read_bytes()
        assert marker[name] == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    loaded = ck.load_checkpoint(ck.latest_checkpoint(tmp_path))
    assert set(loaded["model"]) == {"wte.weight", "lm_head.weight", "ln.bias"}
    assert torch.equal(loaded["model"]["lm_head.weight"], tied_model_state()["wte.weight"])
    assert torch.equal(loaded["optimizer"]["state"][0]["exp_avg"], torch.ones(3) * 5)
    assert torch.equal(loaded["tensors"]["cpu_rng"], torch.get_rng_state())
    assert loaded["state"] == {"step": 5, "tokens_seen": 50, "val_loss": None}
    assert not any(p.name.startswith(".") for p in (tmp_path / "checkpoints").iterdir())


@pytest.mark.parametrize("damage", ["no marker", "zero-byte file", "truncated file", "garbage marker"])
def test_incomplete_checkpoints_are_ignored(tmp_path, damage):
    save(tmp_path, 1)
    newest = save(tmp_path, 2)
    if damage == "no marker":
        (newest / "COMPLETE").unlink()
    elif damage == "zero-byte file":
        (newest / "optimizer.pt").write_bytes(b"")
    elif damage == "truncated file":
        data = (newest / "model.safetensors").read_bytes()
        (newest / "model.safetensors").write_bytes(data[: len(data) // 2])
    else:
        (newest / "COMPLETE").write_text("{not json")
    assert ck.latest_checkpoint(tmp_path).name == "step_00000001"
    assert ck.load_checkpoint(ck.latest_checkpoint(tmp_path))["state"]["step"] == 1
    lines = ck.verify_run(tmp_path)
    assert lines[0].startswith("step_00000001: complete, checksums verified") and "(latest)" in lines[0]
    assert lines[1].startswith("step_00000002: INVALID, ignored")


def test_checksum_mismatch_is_an_error_not_a_silent_load(tmp_path):
    path = save(tmp_path, 3)
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes: only the checksum can tell
    (path / "model.safetensors").write_bytes(bytes(data))
    assert ck.latest_checkpoint(tmp_path) == path  # discovery checks sizes; load checks contents
    with pytest.raises(UserError, match=r"step_00000003: model.safetensors does not match the checksum in COMPLETE"):
        ck.load_checkpoint(path)


def test_pickled_code_is_never_executed(tmp_path):
    path = save(tmp_path, 4)
    evil = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(evil), "w"))

    torch.save({"x": Evil()}, path / "optimizer.pt")
    # rewrite the marker as an attacker would, so only weights_only stands in the way
    marker = json.loads((path / "COMPLETE").read_text())
    data = (path / "optimizer.pt").read_bytes()
    marker["files"]["optimizer.pt"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / "COMPLETE").write_text(json.dumps(marker))
    with pytest.raises(UserError, match="could not be read safely"):
        ck.load_checkpoint(path)
    assert not evil.exists()


def test_retention_keeps_last_k_and_the_best(tmp_path):
    save(tmp_path, 1, is_best=True, val=1.0)
    for step in (2, 3, 4):
        save(tmp_path, step, val=2.0)
    assert steps(tmp_path) == ["step_00000001", "step_00000003", "step_00000004"]  # the best survives
    save(tmp_path, 5, keep_last=3, is_best=True, val=0.5)
    assert steps(tmp_path) == ["step_00000003", "step_00000004", "step_00000005"]
    assert ck.best_name(tmp_path / "checkpoints") == "step_00000005"
    with pytest.raises(UserError, match="keep_last must be at least 2"):
        save(tmp_path, 6, keep_last=1)


def test_saving_the_same_step_again_replaces_it(tmp_path):
    save(tmp_path, 7)
    save(tmp_path, 7)
    assert steps(tmp_path) == ["step_00000007"]
    assert ck.load_checkpoint(tmp_path / "checkpoints" / "step_00000007")["state"]["step"] == 7


def test_disk_full_keeps_previous_purges_nothing_and_stops(tmp_path, monkeypatch):
    save(tmp_path, 1)
    save(tmp_path, 2)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", full)
    with pytest.raises(UserError) as info:
        save(tmp_path, 3)
    message = str(info.value)
    assert "step_00000003: the disk is full" in message
    assert "previous checkpoint" in message and "step_00000002 is intact, nothing was deleted" in message
    assert "\n" not in message
    assert steps(tmp_path) == ["step_00000001", "step_00000002"]  # retention did not run
    assert not any(p.name.startswith(".") for p in (tmp_path / "checkpoints").iterdir())
    assert ck.load_checkpoint(ck.latest_checkpoint(tmp_path))["state"]["step"] == 2


def test_process_killed_during_save_leaves_previous_loadable(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(tmp_path)!r})
        from gptforge.train import checkpoint as ck
        sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r})
        from test_checkpoint import save
        save({str(tmp_path)!r}, 1)
        real_save = torch.save
        def killed(obj, f, *a, **k):
            real_save(obj, f, *a, **k)
            os.kill(os.getpid(), signal.SIGKILL)  # dies with the model and optimizer half of step 2 written
        ck.torch.save = killed
        save({str(tmp_path)!r}, 2)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".tmp_")]
    assert len(leftovers) == 1 and leftovers[0].startswith(".tmp_step_00000002")
    assert ck.latest_checkpoint(tmp_path).name == "step_00000001"
    assert ck.load_checkpoint(ck.latest_checkpoint(tmp_path))["state"]["step"] == 1
    assert any("temporary directory of an interrupted save, ignored" in line for line in ck.verify_run(tmp_path))
    save(tmp_path, 2)  # the next save clears the leftover
    assert not any(p.name.startswith(".tmp_") for p in (tmp_path / "checkpoints").iterdir())
    assert steps(tmp_path) == ["step_00000001", "step_00000002"]


def test_verify_run_without_checkpoints(tmp_path):
    assert ck.verify_run(tmp_path) == [f"{tmp_path / 'checkpoints'}: no checkpoints"]
    assert ck.latest_checkpoint(tmp_path) is None
