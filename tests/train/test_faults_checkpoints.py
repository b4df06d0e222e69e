"""Checkpoints that must not be trusted, and inputs that used to end in a traceback (issue 17).

Each test failed before its fix: the two latest checkpoints were saved with NaN weights while the stop message
sent the user to them; a latest checkpoint failing its checksum made train, sample, eval and export refuse (without
saying what to delete); export blamed itself for NaN weights; a state.json of wrong types behind a matching checksum,
a meta.pkl with vocab_size 2^31, a model too large for memory and a tampered shard ended in tracebacks; the nanoGPT
import repeated torch's advice to load with weights_only=False.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from gptforge.errors import UserError
from gptforge.model.gpt import GPT
from gptforge.train import loop
from gptforge.train.checkpoint import latest_checkpoint, load_checkpoint
from gptforge.train.loop import train

from helpers import make_run, nanogpt_char_folder, tiny_config, tiny_text

TINY = dict(max_iters=9, eval_interval=3, lr_decay_iters=40, dropout=0.0, keep_last=5)


@pytest.fixture(scope="module")
def finished(char_data, tmp_path_factory):
    """A run with checkpoints at steps 3, 6 and 9; copy it before changing it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(tiny_config(char_data, run, **TINY))
    return run


@pytest.fixture
def run(finished, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


def step_dir(run, step):
    return run / "checkpoints" / f"step_{step:08d}"


def resign(path, name):
    """Record `name`'s current bytes in COMPLETE, as if the file had been saved so."""
    marker = json.loads((path / "COMPLETE").read_text())
    data = (path / name).read_bytes()
    marker["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / "COMPLETE").write_text(json.dumps(marker))


def poison_weights(path):
    """A checkpoint with a NaN weight that verifies: what earlier versions saved after the weights went NaN."""
    weights = load_file(str(path / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, str(path / "model.safetensors"))
    resign(path, "model.safetensors")
    return f"{name} ({weights[name].numel():,} values)"


def corrupt(path):
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF  # same size: only the checksum can tell
    (path / "model.safetensors").write_bytes(bytes(data))


def edit_state(path, **values):
    state = json.loads((path / "state.json").read_text())
    (path / "state.json").write_text(json.dumps({**state, **values}))
    resign(path, "state.json")


# ---------------------------------------------------------------------------------------------- non-finite weights

def nan_after_step(monkeypatch, bad_step):
    """The first parameter turns NaN in optimizer step `bad_step` (as a NaN learning rate would do it)."""
    real = loop.build_optimizer

    def build(model, *args, **kwargs):
        optimizer = real(model, *args, **kwargs)
        step, calls = optimizer.step, {"n": 0}

        def poisoned(*a, **k):
            out = step(*a, **k)
            calls["n"] += 1
            if calls["n"] == bad_step:
                with torch.no_grad():
                    next(model.parameters()).view(-1)[0] = float("nan")
            return out

        optimizer.step = poisoned
        return optimizer

    monkeypatch.setattr(loop, "build_optimizer", build)


@pytest.mark.parametrize("max_nan_skips", [1, 5])  # the stop on NaN losses, or the eval's save, meets them first
def test_non_finite_weights_are_never_saved_and_the_stop_names_the_last_finite_checkpoint(
        tmp_path, char_data, monkeypatch, max_nan_skips):
    nan_after_step(monkeypatch, bad_step=7)
    run = tmp_path / "run"
    with pytest.raises(UserError) as info:
        train(tiny_config(char_data, run, **{**TINY, "max_iters": 30, "max_nan_skips": max_nan_skips}))
    stop = 8 if max_nan_skips == 1 else 9
    assert str(info.value) == (
        f"stopped at step {stop}: the weights hold 1 non-finite value(s) in transformer.wte.weight (2,048 values), so "
        "they were not saved as a checkpoint (a too high or non-finite learning rate, or gradients that overflowed, "
        f"do this); the last checkpoint, {step_dir(run, 6)}, holds finite weights: continue from it with "
        "--init_from=resume after lowering the learning rate")
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000003", "step_00000006"]
    assert all(torch.isfinite(t).all() for t in load_checkpoint(latest_checkpoint(run))["model"].values())
    end = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert (end["event"], end["reason"], end["step"]) == ("end", "nan", stop)


def test_the_nan_stop_names_the_checkpoint_it_saved(tmp_path, char_data, monkeypatch):
    from test_train import poison_forward

    poison_forward(monkeypatch, bad_steps=set(range(3, 100)))
    run = tmp_path / "run"
    with pytest.raises(UserError, match=rf"from before the bad steps are in {step_dir(run, 6)}; resume with"):
        train(tiny_config(char_data, run, **{**TINY, "max_iters": 30, "max_nan_skips": 3}))


def test_sample_and_export_skip_a_checkpoint_with_non_finite_weights(run, tmp_path, capsys):
    from gptforge.commands.sample import sample_command
    from gptforge.interop.export import export_command

    name = poison_weights(step_dir(run, 9))
    sample_command(run, prompt="the ", max_new_tokens=4, device="cpu")
    export_command(run, "hf", tmp_path / "hf")
    captured = capsys.readouterr()
    skip = (f"skipped checkpoint {step_dir(run, 9)} (its weights hold 1 non-finite value(s) in {name}); "
            f"using step_00000006: delete {step_dir(run, 9)} if you do not need it")
    assert captured.err.count(skip) == 2
    assert f"exported {step_dir(run, 6)} (" in captured.out


def test_export_of_non_finite_weights_says_so_instead_of_blaming_itself(tmp_path):
    from gptforge.interop.export import _check_export, export_command

    run, model = make_run(tmp_path)
    name = poison_weights(step_dir(run, 7))
    with pytest.raises(UserError) as info:
        export_command(run, "hf", tmp_path / "hf")
    assert str(info.value) == (f"{run} has no valid checkpoint: step_00000007 (its weights hold 1 non-finite value(s) "
                               f"in {name})")
    assert not (tmp_path / "hf").exists()
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] = float("nan")  # straight to the check: it names the cause too
    (tmp_path / "x").mkdir()
    with pytest.raises(UserError, match=r"^the checkpoint's weights compute non-finite logits \(NaN or inf\)"):
        _check_export(model, tmp_path / "x")


# ---------------------------------------------------------------------------------------------- fallback

def test_a_corrupt_latest_checkpoint_is_skipped_by_train_sample_eval_and_export(run, char_data, tmp_path, capsys):
    from gptforge.analysis.evaluate import eval_command
    from gptforge.commands.sample import sample_command
    from gptforge.interop.export import export_command

    corrupt(step_dir(run, 9))
    skip = (f"skipped checkpoint {step_dir(run, 9)} (model.safetensors does not match the checksum in COMPLETE "
            f"(corrupt file)); using step_00000006: delete {step_dir(run, 9)} if you do not need it")
    sample_command(run, prompt="the ", max_new_tokens=4, device="cpu")
    eval_command(run, data=str(char_data), device="cpu", max_batches=2)
    export_command(run, "hf", tmp_path / "hf")
    captured = capsys.readouterr()
    assert captured.err.count(skip) == 3 and f"exported {step_dir(run, 6)} (" in captured.out
    train(tiny_config(char_data, run, **{**TINY, "max_iters": 12, "init_from": "resume"}))
    out = capsys.readouterr().out
    assert skip in out and f"resuming from {step_dir(run, 6)}" in out
    assert load_checkpoint(step_dir(run, 9))["state"]["step"] == 9  # saved again, valid now


def test_without_any_valid_checkpoint_each_is_named_with_its_fault(run, char_data):
    from gptforge.commands.sample import sample_command

    corrupt(step_dir(run, 9))
    edit_state(step_dir(run, 6), tokens_seen="abc")
    (step_dir(run, 3) / "COMPLETE").unlink()
    problem = (f"{run} has no valid checkpoint: step_00000009 (model.safetensors does not match the checksum in "
               "COMPLETE (corrupt file)); step_00000006 (state.json has tokens_seen = \"abc\", not a count)")
    with pytest.raises(UserError) as info:
        sample_command(run, prompt="the ", max_new_tokens=4, device="cpu")
    assert str(info.value) == problem + "; step_00000003 (is not complete: no valid COMPLETE marker)"
    with pytest.raises(UserError) as info:  # (its start removes step_3 first: what a killed retention leaves)
        train(tiny_config(char_data, run, **{**TINY, "max_iters": 12, "init_from": "resume"}))
    assert str(info.value) == f"init_from=resume: {problem}"


@pytest.mark.parametrize("values, problem", [
    ({"tokens_seen": "abc"}, 'state.json has tokens_seen = "abc", not a count'),  # TypeError in the loop before
    ({"best_val_loss": "x"}, 'state.json has best_val_loss = "x", not a number'),
    ({"loader": 5}, "state.json has loader = 5, not an object or null"),
    ({"guard": [1]}, "state.json has guard = [1], not an object or null"),
    ({"tokenizer": 3}, "state.json has tokenizer = 3, not an object or null"),
])
def test_a_state_json_of_wrong_types_behind_a_matching_checksum_is_skipped(run, char_data, capsys, values, problem):
    edit_state(step_dir(run, 9), **values)
    train(tiny_config(char_data, run, **{**TINY, "max_iters": 12, "init_from": "resume"}))
    out = capsys.readouterr().out
    assert f"skipped checkpoint {step_dir(run, 9)} ({problem}); using step_00000006" in out
    assert f"resuming from {step_dir(run, 6)}" in out


def test_weights_that_do_not_fit_the_state_json_are_one_line(tmp_path):
    from gptforge.commands.sample import sample_command

    run, _ = make_run(tmp_path)
    state = json.loads((step_dir(run, 7) / "state.json").read_text())
    state["config"]["n_embd"] = 64
    edit_state(step_dir(run, 7), config=state["config"])
    with pytest.raises(UserError, match=rf"^checkpoint {step_dir(run, 7)}: its weights do not fit the model its "
                                        r"state.json describes \(.*size mismatch"):
        sample_command(run, prompt="a", max_new_tokens=2, device="cpu")


# ---------------------------------------------------------------------------------------------- inputs

def test_a_meta_pkl_with_a_huge_vocabulary_is_one_line(tmp_path):
    """Before: vocab_size 2^31 had the model allocate a 256 GB embedding (a RuntimeError traceback)."""
    from gptforge.data.dataset import open_dataset

    folder, _, _ = nanogpt_char_folder(tmp_path / "ng", tiny_text(200))
    meta = pickle.loads((folder / "meta.pkl").read_bytes())
    for vocab in (2**31, 10**12):
        (folder / "meta.pkl").write_bytes(pickle.dumps({**meta, "vocab_size": vocab, "itos": None, "stoi": None}))
        with pytest.raises(UserError) as info:
            open_dataset(folder)
        assert str(info.value) == (f"{folder / 'meta.pkl'}: 'vocab_size' is {vocab:,}, but nanoGPT's .bin files hold "
                                   "uint16 token ids, so a vocabulary has at most 65,536 entries")


def test_a_model_too_large_for_memory_is_one_line(tmp_path, char_data, monkeypatch):
    def cannot(cfg):  # what torch raises when the machine cannot hold it (a real attempt could swap the machine)
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory:"
                           " you tried to allocate 274877906944 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(loop, "GPT", cannot)
    with pytest.raises(UserError, match=r"^the model \(n_layer 2, n_embd 32, vocab_size 25: about 0.0B parameters, "
                                        r"0.0 GB in float32\) does not fit in this machine's memory"):
        train(tiny_config(char_data, tmp_path / "run", **TINY))


def test_the_nanogpt_import_refusal_does_not_suggest_running_the_files_code(tmp_path):
    from gptforge.interop.nanogpt import import_nanogpt_command

    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": {}, "model_args": {}, "config": argparse.Namespace(lr=1)}, ckpt)
    with pytest.raises(UserError) as info:
        import_nanogpt_command(ckpt, tmp_path / "out")
    assert str(info.value) == (f"{ckpt}: refused to load: it is not a plain tensor checkpoint (it asks for "
                               "argparse.Namespace, which is not plain tensor data, and gptforge never runs a file's "
                               "code)")


def test_export_to_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    from gptforge.interop.export import export_command

    run, _ = make_run(tmp_path)

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    out = tmp_path / "exports" / "hf"
    with pytest.raises(UserError, match=rf"^cannot write {out}: the disk is full \(No space left on device\): about "
                                        r"[\d.,]+ [kMG]B needed, [\d.,]+ [kMGT]?B free; nothing was left behind$"):
        export_command(run, "hf", out)
    assert list((tmp_path / "exports").iterdir()) == []


def test_a_tampered_shard_stops_training_in_one_line(tmp_path, char_data):
    """Token ids >= the vocabulary written into a shard after prepare: an IndexError inside training before."""
    data = tmp_path / "data"
    shutil.copytree(char_data, data)
    shard = sorted(data.glob("train_*.bin"))[0]
    tokens = np.fromfile(shard, dtype="<u2", offset=1024)
    tokens[::50] = 200  # (vocab 25)
    shard.write_bytes(shard.read_bytes()[:1024] + tokens.tobytes())
    with pytest.raises(UserError, match=rf"^shard {shard}: token id 200 at position \d+ is not below the vocab size "
                                        "25$"):
        train(tiny_config(data, tmp_path / "run", **TINY))


def test_torch_load_refusals_inside_a_checkpoint_are_one_line_too(run):
    state = step_dir(run, 9) / "train_state.pt"
    torch.save({"rng": argparse.Namespace(a=1)}, state)
    resign(step_dir(run, 9), "train_state.pt")
    with pytest.raises(UserError) as info:
        load_checkpoint(step_dir(run, 9))
    assert str(info.value) == (f"checkpoint {step_dir(run, 9)} could not be read safely: it asks for "
                               "argparse.Namespace, which is not plain tensor data, and gptforge never runs a file's "
                               "code")
    assert "weights_only" not in str(info.value)


def test_a_model_built_from_the_checkpoint_is_the_one_saved(run):
    """(the fallback loads what it verified: the model of the newest valid checkpoint, not another)"""
    from gptforge.train.runs import load_run

    corrupt(step_dir(run, 9))
    model, _, state = load_run(run, torch.device("cpu"))
    saved = load_checkpoint(step_dir(run, 6))["model"]
    assert state["step"] == 6 and isinstance(model, GPT)
    assert all(torch.equal(model.state_dict()[k], saved[k]) for k in saved)
