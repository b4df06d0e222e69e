"""The loop's guards and records: NaN skips, spikes, fp16 scaler state, config round-trip, data growth."""

from __future__ import annotations

import json

import pytest
import torch

from gptforge.config import load_config
from gptforge.errors import UserError
from gptforge.model.gpt import GPT
from gptforge.train.checkpoint import latest_checkpoint, load_checkpoint
from gptforge.train.loop import train

from helpers import make_char_data, tiny_config, tiny_text

FIXED = dict(lr_decay_iters=40)


def events(run_dir, name):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["event"] == name]


def poison_forward(monkeypatch, bad_steps, factor=float("nan"), accum=2):
    """Multiply the training loss by `factor` on the micro-batches of `bad_steps`."""
    real = GPT.forward
    calls = {"n": 0}

    def forward(self, idx, targets=None):
        logits, loss = real(self, idx, targets)
        if self.training and targets is not None:
            if calls["n"] // accum in bad_steps:
                loss = loss * factor
            calls["n"] += 1
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward)


def same_state(a, b):
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)


def test_nan_step_is_skipped_with_params_and_optimizer_untouched(tmp_path, char_data, monkeypatch):
    train(tiny_config(char_data, tmp_path / "ref", max_iters=5, **FIXED))
    poison_forward(monkeypatch, bad_steps={5})
    train(tiny_config(char_data, tmp_path / "nan", max_iters=6, **FIXED))
    ref = load_checkpoint(tmp_path / "ref" / "checkpoints" / "step_00000005")
    nan = load_checkpoint(tmp_path / "nan" / "checkpoints" / "step_00000006")
    same_state(ref, nan)  # step 5 consumed its data but changed nothing
    assert nan["state"]["guard"]["nan_skips"] == 1
    assert [(e["step"], e["count"], e["consecutive"]) for e in events(tmp_path / "nan", "nan_skip")] == [(5, 1, 1)]


def test_repeated_nans_stop_with_a_checkpoint_and_the_likely_causes(tmp_path, char_data, monkeypatch):
    poison_forward(monkeypatch, bad_steps=set(range(3, 100)))
    with pytest.raises(UserError) as info:
        train(tiny_config(char_data, tmp_path / "run", max_iters=30, max_nan_skips=3, **FIXED))
    message = str(info.value)
    assert "stopped at step 6: 3 steps in a row skipped for a non-finite loss or gradient" in message
    for cause in ("learning rate is too high", "fp16 overflow", "--grad_clip=1.0"):
        assert cause in message
    state = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert state["state"]["step"] == 6 and state["state"]["guard"]["consecutive"] == 3
    assert events(tmp_path / "run", "end")[-1]["reason"] == "nan"
    assert all(torch.isfinite(t).all() for t in state["model"].values())


@pytest.mark.parametrize("skip", [False, True])
def test_loss_spike_is_reported_and_optionally_skipped(tmp_path, char_data, monkeypatch, capsys, skip):
    if skip:
        train(tiny_config(char_data, tmp_path / "ref", max_iters=14, **FIXED))
    poison_forward(monkeypatch, bad_steps={14}, factor=50.0)
    run = tmp_path / "spiky"
    train(tiny_config(char_data, run, max_iters=15, skip_spikes=skip, **FIXED))
    spikes = events(run, "spike")
    assert len(spikes) == 1 and spikes[0]["step"] == 14
    assert spikes[0]["loss"] > spikes[0]["mean"] + 6 * spikes[0]["std"]
    out = capsys.readouterr().out
    assert "step 14: loss spike" in out
    assert ("optimizer step skipped" in out) == skip and ("kept (set --skip_spikes=true to skip)" in out) != skip
    if skip:
        after = load_checkpoint(run / "checkpoints" / "step_00000015")
        same_state(load_checkpoint(tmp_path / "ref" / "checkpoints" / "step_00000014"), after)


def test_fp16_overflow_skips_the_step_lowers_the_scale_and_scaler_state_round_trips(
    tmp_path, char_data, monkeypatch, capsys
):
    poison_forward(monkeypatch, bad_steps={2}, factor=1e30)  # finite loss, gradients overflow fp16
    run = tmp_path / "fp16"
    train(tiny_config(char_data, run, max_iters=4, dtype="float16", spike_sigma=0, **FIXED))
    assert "step 2: fp16 overflow, step skipped; loss scale 65536 -> 32768" in capsys.readouterr().out
    saved = load_checkpoint(latest_checkpoint(run))["tensors"]["scaler"]
    assert saved["scale"] == 32768.0
    monkeypatch.undo()
    train(tiny_config(char_data, run, max_iters=5, dtype="float16", spike_sigma=0, init_from="resume", **FIXED))
    assert load_checkpoint(latest_checkpoint(run))["tensors"]["scaler"]["scale"] == 32768.0  # restored, not reset


def test_config_round_trip_and_run_layout(tmp_path, char_data):
    run = tmp_path / "run"
    cfg = tiny_config(char_data, run, max_iters=6, sample_tokens=4, sample_prompts=["the cat"])
    train(cfg)
    stored = load_config(str(run / "config.toml")).flat()
    state = load_checkpoint(latest_checkpoint(run))["state"]
    assert stored == state["config"]
    expected = {**cfg.flat(), "vocab_size": 25}  # resolved from the dataset's tokenizer
    assert stored == expected
    assert (run / "tokenizer" / "tokenizer_meta.json").is_file()
    assert state["tokenizer"]["name"] == "char24"
    sample = (run / "samples" / "step_00000006.txt").read_text()
    assert sample.startswith("'the cat' -> '") and len(sample.split(" -> ")[1].strip()) == 6  # 4 chars + quotes
    start = events(run, "start")[0]
    assert start["params"] == GPT(load_config(str(run / "config.toml")).model).num_params()
    assert start["tokens_per_iter"] == 4 * 16 * 2 and start["max_iters"] == 6 and start["peak_flops"] is None
    logs = events(run, "log")
    assert [e["step"] for e in logs] == [1, 2, 3, 4, 5, 6] and all(e["mfu"] is None for e in logs)
    assert logs[-1]["tokens"] == 6 * 128
    assert [e["step"] for e in events(run, "eval")] == [0, 6]


def test_budget_from_tokens_per_param(tmp_path, char_data, capsys):
    cfg = tiny_config(char_data, tmp_path / "run", max_iters=0, tokens_per_param=0.01, n_embd=16)
    result = train(cfg)
    params = events(tmp_path / "run", "start")[0]["params"]
    assert result["step"] == -(-round(0.01 * params) // 128)
    assert "tokens/param" in capsys.readouterr().out


def test_grown_dataset_is_used_after_resume_and_logged(tmp_path):
    from gptforge.data.prepare import prepare

    data = make_char_data(tmp_path, tiny_text(400, seed=1))
    run = tmp_path / "run"
    train(tiny_config(data, run, max_iters=4, **FIXED))
    (tmp_path / "more.txt").write_text(tiny_text(400, seed=2))
    prepare([str(tmp_path / "more.txt")], data)
    train(tiny_config(data, run, max_iters=6, init_from="resume", **FIXED))
    grew = events(run, "data_grew")
    assert len(grew) == 1 and grew[0]["step"] == 4 and grew[0]["version"] == 2
    assert grew[0]["new_train_tokens"] > grew[0]["old_train_tokens"]
    assert events(run, "start")[-1]["dataset_version"] == 2


def test_resume_of_a_checkpoint_without_data_position_starts_a_fresh_order(tmp_path, char_data, capsys):
    """An imported nanoGPT run stores "loader": None: resuming it starts the data order afresh and says so."""
    from gptforge.data.dataset import open_dataset
    from gptforge.train.checkpoint import save_checkpoint
    from gptforge.train.loader import TrainLoader

    run = tmp_path / "run"
    train(tiny_config(char_data, run, max_iters=2, **FIXED))
    ck = load_checkpoint(latest_checkpoint(run))
    save_checkpoint(run, 2, model_state=ck["model"], optimizer_state=ck["optimizer"], extra_tensors=ck["tensors"],
                    state={**ck["state"], "loader": None}, keep_last=2, is_best=False)
    capsys.readouterr()
    train(tiny_config(char_data, run, max_iters=3, init_from="resume", **FIXED))
    assert "holds no data position (imported from nanoGPT?): the data order starts a fresh permutation" in \
        capsys.readouterr().out
    fresh = TrainLoader(open_dataset(char_data), 4, 16, seed=7)
    fresh.next_batch(), fresh.next_batch()  # the one step since the resume: 2 micro-batches from the start
    assert load_checkpoint(latest_checkpoint(run))["state"]["loader"] == fresh.state_dict()


def test_init_from_hugging_face_keeps_the_configured_dropout(tmp_path, char_data):
    pytest.importorskip("transformers")
    from helpers import tiny_hf

    _, hf_dir = tiny_hf(tmp_path)
    run = tmp_path / "run"
    from gptforge.commands.train import train_command

    train_command(tiny_config(char_data, run, max_iters=1, init_from=str(hf_dir), dropout=0.25, **FIXED))
    stored = load_config(str(run / "config.toml")).model
    assert (stored.dropout, stored.block_size, stored.n_head) == (0.25, 16, 4)  # dropout kept, context cropped


def test_label_smoothing_changes_the_training_loss_and_evals_report_plain_cross_entropy(tmp_path, char_data):
    plain, smoothed = tmp_path / "plain", tmp_path / "smoothed"
    train(tiny_config(char_data, plain, max_iters=2, eval_interval=2, dropout=0.0, **FIXED))
    train(tiny_config(char_data, smoothed, max_iters=2, eval_interval=2, dropout=0.0, label_smoothing=0.2, **FIXED))
    (e0, _), (s0, _) = events(plain, "eval"), events(smoothed, "eval")
    assert (e0["train_loss"], e0["val_loss"]) == (s0["train_loss"], s0["val_loss"])  # the same model at step 0
    first_plain, first_smoothed = events(plain, "log")[0]["loss"], events(smoothed, "log")[0]["loss"]
    assert first_smoothed != first_plain  # the same batch, another objective
    assert "label_smoothing = 0.2" in (smoothed / "config.toml").read_text()
