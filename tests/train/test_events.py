"""The metrics.jsonl schema: one typed record per event kind, written by the loop exactly as declared, read
back leniently (old files, later fields, wrong types), and the same records diagnose and plot fold."""

from __future__ import annotations

import dataclasses
import json

import pytest

from gptforge.analysis.runlog import parse_events, read_run
from gptforge.train.events import (
    KINDS,
    Checkpoint,
    DataGrew,
    End,
    Eval,
    Log,
    MetricsLog,
    NanSkip,
    Spike,
    Start,
    from_dict,
    to_line,
)
from gptforge.train.loop import train

from helpers import make_char_data, tiny_config, tiny_text

# lines as gptforge wrote them before the schema module (field names and order of that version)
OLD_LINES = [
    '{"event": "start", "step": 0, "time": 0.41, "config": {"n_layer": 2}, "params": 28032, '
    '"params_non_embedding": 25472, "tokens_per_iter": 128, "max_iters": 6, "planned_tokens": 768, '
    '"tokens_per_param": 0.027, "dataset_train_tokens": 32917, "dataset_val_tokens": 3657, "dataset_version": 1, '
    '"planned_epochs": 0.023, "device": "cpu", "device_name": "CPU (x86_64, 1 threads)", "world_size": 1, '
    '"fsdp": false, "peak_flops": null, "flops_per_token": 172032.0, "resumed_from": null}',
    '{"event": "eval", "step": 0, "time": 0.5, "tokens": 0, "epoch": 0.0, "train_loss": 3.3, "val_loss": 3.31, '
    '"val_ppl": 27.4, "eval_batches": 2, "seconds": 0.01}',
    '{"event": "log", "step": 1, "time": 0.6, "tokens": 128, "epoch": 0.004, "loss": 3.29, "lr": 0.0015, '
    '"dt_ms": 12.5, "tok_per_s": 10240.0, "mfu": null, "grad_norm": 1.2, "tok_per_s_per_gpu": 10240.0, '
    '"tflops_per_gpu": 0.0018}',
    '{"event": "spike", "step": 3, "time": 0.7, "loss": 9.0, "mean": 3.2, "std": 0.05}',
    '{"event": "nan_skip", "step": 4, "time": 0.8, "count": 1, "consecutive": 1}',
    '{"event": "checkpoint", "step": 5, "time": 0.9, "path": "run/checkpoints/step_00000005", "seconds": 0.02}',
    '{"event": "data_grew", "step": 5, "time": 1.0, "old_train_tokens": 100, "new_train_tokens": 300, "version": 2}',
    '{"event": "end", "step": 6, "time": 1.1, "reason": "max_iters"}',
]


def test_todays_lines_read_as_typed_records_and_write_back_unchanged():
    events, skipped = parse_events(OLD_LINES)
    assert skipped == 0
    assert [type(e) for e in events] == [Start, Eval, Log, Spike, NanSkip, Checkpoint, DataGrew, End]
    start, ev, log = events[:3]
    assert (start.params, start.world_size, start.fsdp, start.peak_flops, start.resumed_from) == (28032, 1, False,
                                                                                                 None, None)
    assert (ev.val_loss, ev.eval_batches, log.loss, log.grad_norm, log.mfu) == (3.31, 2, 3.29, 1.2, None)
    for line, event in zip(OLD_LINES, events):
        assert event.extra == {}
        assert json.loads(to_line(event)) == json.loads(line)


def test_older_lines_missing_fields_later_fields_and_wrong_types():
    older = from_dict({"event": "start", "step": 0, "resumed_from": None, "params": 100})  # before dataset fields
    assert older.params == 100 and older.dataset_train_tokens is None and older.world_size is None
    later = from_dict({"event": "log", "step": 7, "loss": 2.0, "tokens": 896, "grad_norm_clipped": 1.0})
    assert later.loss == 2.0 and later.extra == {"grad_norm_clipped": 1.0} and later.lr is None
    assert json.loads(to_line(later))["grad_norm_clipped"] == 1.0  # kept
    wrong = from_dict({"event": "log", "step": 2, "loss": "3.1", "tokens": True, "lr": 1, "epoch": None})
    assert (wrong.loss, wrong.tokens, wrong.lr, wrong.epoch) == (None, None, 1, None)  # an int is a fine float
    assert from_dict({"event": "eval_hellaswag", "step": 3, "acc": 0.3}) is None  # a kind of a later version
    assert from_dict({"event": "log", "step": "3"}) is None


def test_unknown_kinds_are_left_out_and_torn_lines_counted():
    lines = [OLD_LINES[0], '{"event": "eval_hellaswag", "step": 3, "acc": 0.3}', OLD_LINES[2], '{"event": "lo']
    events, skipped = parse_events(lines)
    assert [e.KIND for e in events] == ["start", "log"] and skipped == 1


def test_records_must_be_complete_when_written():
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'reason'"):
        End(step=3)
    assert {f.name for f in dataclasses.fields(Spike)} == {"step", "time", "extra", "loss", "mean", "std"}
    assert sorted(KINDS) == ["checkpoint", "data_grew", "end", "eval", "level_shift", "log", "nan_skip", "spike",
                             "start"]


def test_the_writer_stamps_the_time_and_mirrors_only_numbers(tmp_path):
    scalars = []

    class Board:
        def add_scalar(self, name, value, step):
            scalars.append((name, value, step))

        def close(self):
            pass

    log = MetricsLog(tmp_path, fresh=True, t0=0.0)
    log.tb = Board()
    log.write(Eval(step=4, tokens=512, epoch=0.5, train_loss=2.0, val_loss=2.5, val_ppl=12.2, eval_batches=2,
                   seconds=0.1))
    log.write(End(step=4, time=9.0, reason="max_iters"))
    log.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[0]["time"] > 1e9 and records[1]["time"] == 9.0  # seconds since t0 (here: the epoch)
    assert list(records[0]) == ["event", "step", "time", "tokens", "epoch", "train_loss", "val_loss", "val_ppl",
                                "eval_batches", "seconds"]
    assert [s[0] for s in scalars] == ["eval/tokens", "eval/epoch", "eval/train_loss", "eval/val_loss",
                                       "eval/val_ppl", "eval/eval_batches", "eval/seconds"]


def test_the_loop_writes_every_field_of_the_schema_and_nothing_else(tmp_path):
    from gptforge.data.prepare import prepare

    data = make_char_data(tmp_path, tiny_text(400, seed=1))
    run = tmp_path / "run"
    train(tiny_config(data, run, max_iters=4))
    (tmp_path / "more.txt").write_text(tiny_text(400, seed=2))
    prepare([str(tmp_path / "more.txt")], data)
    train(tiny_config(data, run, max_iters=6, init_from="resume"))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    kinds = set()
    for line in lines:
        raw = json.loads(line)
        event = from_dict(raw)
        kinds.add(event.KIND)
        assert event.extra == {} and set(raw) == {"event", "step", "time", *event.fields()}, line
        assert all(raw[name] is not None for name in ("step", "time"))
    assert kinds == {"start", "eval", "log", "checkpoint", "data_grew", "end"}
    run_log = read_run(run)
    assert [s.resumed_from for s in run_log.starts] == [None, 4] and run_log.data_grew[0].version == 2
    assert [e.step for e in run_log.logs] == [1, 2, 3, 4, 5, 6] and run_log.end_reason == "max_iters"
