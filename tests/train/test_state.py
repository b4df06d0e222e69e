"""TrainState, the checkpoint's training state: state.json keeps its keys, checkpoints written before the
record existed still load and resume exactly, later keys are kept, a broken state.json is one clear line."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch

from gptforge.errors import UserError
from gptforge.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from gptforge.train.loop import train
from gptforge.train.state import TrainState

from helpers import tiny_config

FIXED = dict(lr_decay_iters=40)
# the keys of state.json as the loop has written them since checkpoints had a state.json
TODAYS_KEYS = {"step", "tokens_seen", "epoch", "config", "tokenizer", "loader", "guard", "best_val_loss", "val_loss",
               "world_size", "dataset"}


def todays_state() -> dict:
    """A state.json object exactly as the loop wrote it before TrainState (step 4 of a tiny run)."""
    return {"step": 4, "tokens_seen": 512, "epoch": 0.0155, "config": {"n_layer": 2, "max_iters": 8},
            "tokenizer": {"name": "char24", "hash": "ab12"}, "loader": {"seed": 7, "epoch": 0, "pos": 32},
            "guard": {"window": [3.1, 3.0], "nan_skips": 0, "consecutive": 0, "spikes": 0},
            "best_val_loss": 3.05, "val_loss": 3.05, "world_size": 1,
            "dataset": {"path": "/data", "version": 1, "train_tokens": 32917}}


def test_a_state_of_todays_shape_loads_field_by_field_and_writes_back_the_same_object():
    old = todays_state()
    state = TrainState.from_state_dict(old)
    assert (state.step, state.tokens_seen, state.epoch, state.best_val_loss, state.val_loss) == (4, 512, 0.0155, 3.05,
                                                                                                  3.05)
    assert state.loader == old["loader"] and state.guard == old["guard"] and state.dataset == old["dataset"]
    assert state.extra == {} and state.imported_from is None
    assert state.state_dict() == old and json.loads(json.dumps(state.state_dict())) == old


def test_older_and_newer_states():
    older = {k: v for k, v in todays_state().items() if k not in ("world_size", "val_loss")}  # before DDP
    state = TrainState.from_state_dict(older)
    assert state.world_size == 1 and state.val_loss is None
    newer = {**todays_state(), "consumed_samples": 2048}  # a key of a later version: kept, written back
    state = TrainState.from_state_dict(newer)
    assert state.extra == {"consumed_samples": 2048} and state.state_dict() == newer
    imported = TrainState(step=5, imported_from={"iter_num": 5}).state_dict()
    assert imported["imported_from"] == {"iter_num": 5} and imported["best_val_loss"] == math.inf


@pytest.mark.parametrize("state, problem", [
    ({"tokens_seen": 0, "config": {}}, "lacks step"),
    ({"step": 3, "config": {}}, "lacks tokens_seen"),
    ({"step": "3", "tokens_seen": 0, "config": {}}, 'has step = "3", not a count'),
    ({"step": 3, "tokens_seen": 0, "config": []}, "has config = [], not an object"),
    ([1, 2], "is a list, not a JSON object"),
    # wrong types behind a matching checksum (issue 17): each was a TypeError or AttributeError in the loop
    ({"step": 3, "tokens_seen": "abc", "config": {}}, 'has tokens_seen = "abc", not a count'),
    ({"step": -1, "tokens_seen": 0, "config": {}}, "has step = -1, not a count"),
    ({"step": True, "tokens_seen": 0, "config": {}}, "has step = true, not a count"),
    ({"step": 3, "tokens_seen": 0, "config": {}, "best_val_loss": "x"}, 'has best_val_loss = "x", not a number'),
    ({"step": 3, "tokens_seen": 0, "config": {}, "val_loss": {}}, "has val_loss = {}, not a number or null"),
    ({"step": 3, "tokens_seen": 0, "config": {}, "loader": 5}, "has loader = 5, not an object or null"),
    ({"step": 3, "tokens_seen": 0, "config": {}, "guard": [1]}, "has guard = [1], not an object or null"),
    ({"step": 3, "tokens_seen": 0, "config": {}, "tokenizer": 3}, "has tokenizer = 3, not an object or null"),
    ({"step": 3, "tokens_seen": 0, "config": {}, "world_size": "2"}, 'has world_size = "2", not a count'),
    ({"step": 3, "tokens_seen": 0, "config": {}, "world_size": 0}, "has world_size 0, not a number of processes"),
    ({"step": 3, "tokens_seen": 0, "config": {}, "loader": {"pos": "x"}}, 'has loader.pos = "x", not a count'),
    ({"step": 3, "tokens_seen": 0, "config": {}, "loader": {"growth": [5]}},
     "has loader.growth holding other things than pairs of counts"),
    ({"step": 3, "tokens_seen": 0, "config": {}, "guard": {"window": ["a"]}},
     "has guard.window holding other things than numbers"),
])
def test_malformed_states_say_what_is_wrong(state, problem):
    with pytest.raises(ValueError) as info:
        TrainState.from_state_dict(state)
    assert str(info.value) == problem


def test_the_loop_writes_todays_keys(tmp_path, char_data):
    run = tmp_path / "run"
    train(tiny_config(char_data, run, max_iters=2, **FIXED))
    path = latest_checkpoint(run)
    written = json.loads((path / "state.json").read_text())
    assert set(written) == TODAYS_KEYS
    assert written["step"] == 2 and written["tokens_seen"] == 2 * 128 and written["world_size"] == 1
    assert TrainState.from_state_dict(written).state_dict() == written


def resave(run, state: dict):
    """Rewrite the latest checkpoint with another state.json (through the real writer: marker, checksums)."""
    ck = load_checkpoint(latest_checkpoint(run))
    save_checkpoint(run, state["step"], model_state=ck["model"], optimizer_state=ck["optimizer"],
                    extra_tensors=ck["tensors"], state=state, keep_last=2, is_best=False)


def test_a_checkpoint_written_before_train_state_resumes_exactly(tmp_path, char_data):
    """The state.json of an older gptforge (a literal without world_size and val_loss) continues the run bit
    for bit like an uninterrupted one."""
    train(tiny_config(char_data, tmp_path / "continuous", max_iters=6, **FIXED))
    run = tmp_path / "resumed"
    train(tiny_config(char_data, run, max_iters=3, **FIXED))
    st = load_checkpoint(latest_checkpoint(run))["state"]
    resave(run, {"step": st["step"], "tokens_seen": st["tokens_seen"], "epoch": st["epoch"], "config": st["config"],
                 "tokenizer": st["tokenizer"], "loader": st["loader"], "guard": st["guard"],
                 "best_val_loss": st["best_val_loss"], "dataset": st["dataset"]})
    train(tiny_config(char_data, run, max_iters=6, init_from="resume", **FIXED))
    a, b = (load_checkpoint(latest_checkpoint(r)) for r in (tmp_path / "continuous", run))
    assert b["state"]["step"] == 6 and b["state"]["world_size"] == 1
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_a_state_json_without_its_step_is_one_clear_error(tmp_path, char_data):
    run = tmp_path / "run"
    train(tiny_config(char_data, run, max_iters=2, **FIXED))
    path = latest_checkpoint(run)
    broken = {k: v for k, v in json.loads((path / "state.json").read_text()).items() if k != "step"}
    data = json.dumps(broken).encode()
    (path / "state.json").write_bytes(data)
    marker = json.loads((path / "COMPLETE").read_text())  # checksums that match: the state itself is refused
    marker["files"]["state.json"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / "COMPLETE").write_text(json.dumps(marker))
    with pytest.raises(UserError) as info:
        train(tiny_config(char_data, run, max_iters=4, init_from="resume", **FIXED))
    assert str(info.value) == f"init_from=resume: {run} has no valid checkpoint: {path.name} (state.json lacks step)"
