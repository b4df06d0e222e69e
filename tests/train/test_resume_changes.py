"""Resuming after something changed: the data grew with text of another kind (the loss guard follows the new level
instead of skipping every step), a new learning rate (a new schedule segment), another dataset (refused, or allowed
with data_changed=ok)."""

from __future__ import annotations

import json

import pytest

from gptforge.data.prepare import prepare
from gptforge.train.loop import train

from helpers import backwards_text, make_char_data, tiny_config, tiny_text

FIXED = dict(block_size=32, batch_size=8, gradient_accumulation_steps=1, dropout=0.0, eval_iters=4, log_interval=1,
             warmup_iters=5, learning_rate=3e-3, min_lr=3e-4)


def records(run, kind):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["event"] == kind]


@pytest.fixture(scope="module")
def grown(tmp_path_factory):
    """A char-level run of 120 steps on tiny_text, then the DATA_DIR grown by 3x as much text of another kind."""
    root = tmp_path_factory.mktemp("other")
    data = make_char_data(root, tiny_text(1500, seed=0))
    run = root / "run"
    train(tiny_config(data, run, max_iters=120, eval_interval=60, lr_decay_iters=120, **FIXED))
    (root / "backwards.txt").write_text(backwards_text(4500, seed=5), encoding="utf-8")
    prepare([str(root / "backwards.txt")], data, val_fraction=0.1, split="tail")
    return root, data, run


def test_skip_spikes_after_growth_with_another_kind_of_text_keeps_learning(grown, tmp_path, capsys):
    import shutil

    root, data, base = grown
    run = tmp_path / "run"
    shutil.copytree(base, run)
    capsys.readouterr()
    train(tiny_config(data, run, max_iters=200, eval_interval=40, lr_decay_iters=200, init_from="resume",
                      skip_spikes=True, **FIXED))
    out = capsys.readouterr().out
    assert "the loss guard's window restarts (the data grew)" in out
    logs = [r for r in records(run, "log") if r["step"] > 120]
    skipped = {r["step"] for r in records(run, "spike")}
    # the new text is far above the old level at first, and the model learns it: the loss falls
    first, last = logs[:5], logs[-10:]
    assert sum(r["loss"] for r in last) / len(last) < sum(r["loss"] for r in first) / len(first) - 0.3
    # never more than a few steps skipped in a row
    longest, run_length = 0, 0
    for step in range(120, 200):
        run_length = run_length + 1 if step in skipped else 0
        longest = max(longest, run_length)
    assert longest <= 3
    evals = {r["step"]: r["val_loss"] for r in records(run, "eval")}
    assert evals[200] < evals[160]  # the model changed (the reported bug: identical evals, nothing learned)
    # the resume measured the checkpoint on the grown val split first (no save, no sample there), part by part
    at_growth = [r for r in records(run, "eval") if r["step"] == 120]
    assert len(at_growth) == 2 and set(at_growth[-1]["val_parts"]) == {"corpus", "backwards"}
    assert [r["step"] for r in records(run, "checkpoint")].count(120) == 1  # the first launch's only


# ---- another dataset ----------------------------------------------------------------------------------------

SMALL = dict(max_iters=4, eval_interval=4, log_interval=1)


def test_resume_on_another_dataset_is_refused_naming_what_differs(tmp_path):
    from gptforge.errors import UserError

    from helpers import tree_digest

    a = make_char_data(tmp_path / "a", tiny_text(600, seed=1))
    b = make_char_data(tmp_path / "b", tiny_text(900, seed=2))  # the same characters, more tokens, the same shard names
    run = tmp_path / "run"
    train(tiny_config(a, run, **SMALL))
    before = tree_digest(run)
    # (this was accepted as "the dataset grew (version 1 -> 1)")
    with pytest.raises(UserError, match=rf"cannot resume on {b}: it is neither the dataset the checkpoint was trained "
                                        rf"on \({a}\) nor a grown version of it \(its version 1 holds other data than "
                                        r"the checkpoint's version 1 \(the checkpoint's dataset: 1 version\(s\), "
                                        r"[\d,]+ train tokens; this one: 1 version\(s\), [\d,]+\)\); resume with that "
                                        r"--data, or pass --data_changed=ok"):
        train(tiny_config(b, run, **{**SMALL, "max_iters": 6}, init_from="resume"))
    assert tree_digest(run) == before  # nothing written


def test_data_changed_ok_trains_on_the_other_dataset_from_a_fresh_order_once(tmp_path, capsys):
    from gptforge.data.dataset import open_dataset
    from gptforge.errors import UserError
    from gptforge.train.checkpoint import latest_checkpoint, load_checkpoint
    from gptforge.train.loader import TrainLoader

    a = make_char_data(tmp_path / "a", tiny_text(600, seed=1))
    b = make_char_data(tmp_path / "b", tiny_text(900, seed=2))
    run = tmp_path / "run"
    train(tiny_config(a, run, **SMALL))
    capsys.readouterr()
    train(tiny_config(b, run, **{**SMALL, "max_iters": 6}, init_from="resume", data_changed="ok"))
    out = capsys.readouterr().out
    assert "training continues on another dataset (its version 1 holds other data than the checkpoint's" in out
    assert "the data order starts over at epoch 0 of it" in out
    assert "the loss guard's window restarts (another dataset)" in out
    fresh = TrainLoader(open_dataset(b), 4, 16, seed=7)
    for _ in range(2 * 2):  # 2 steps of 2 micro-batches since the resume
        fresh.next_batch()
    state = load_checkpoint(latest_checkpoint(run))["state"]
    assert state["loader"] == fresh.state_dict() and state["dataset"]["identity"] == open_dataset(b).identity
    # a permission for that launch only: the run now belongs to b, and a is another dataset again
    assert 'data_changed = "refuse"' in (run / "config.toml").read_text()
    with pytest.raises(UserError, match=f"cannot resume on {a}: "):
        train(tiny_config(a, run, **{**SMALL, "max_iters": 8}, init_from="resume"))


def test_a_checkpoint_without_the_identity_is_judged_by_its_shards_as_before(tmp_path):
    from gptforge.errors import UserError
    from gptforge.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

    a = make_char_data(tmp_path / "a", tiny_text(900, seed=1))
    smaller = make_char_data(tmp_path / "s", tiny_text(300, seed=1))
    run = tmp_path / "run"
    train(tiny_config(a, run, **SMALL))
    ck = load_checkpoint(latest_checkpoint(run))
    old_entry = {k: v for k, v in ck["state"]["dataset"].items() if k != "identity"}  # as earlier versions wrote it
    save_checkpoint(run, 4, model_state=ck["model"], optimizer_state=ck["optimizer"], extra_tensors=ck["tensors"],
                    state={**ck["state"], "dataset": old_entry}, keep_last=2, is_best=False)
    with pytest.raises(UserError, match=rf"cannot resume on {smaller}: .*\(the train data is not the one the "
                                        r"checkpoint was trained on or an extension of it \(checkpoint: \d+ tokens "
                                        r"in 1 shards, now \d+ in 1\)\)"):
        train(tiny_config(smaller, run, **{**SMALL, "max_iters": 6}, init_from="resume"))
    assert train(tiny_config(a, run, **{**SMALL, "max_iters": 6}, init_from="resume"))["step"] == 6


def test_an_imported_nanogpt_run_moves_to_its_data_re_prepared_and_grown_with_data_changed_ok(tmp_path, capsys):
    """nanoGPT trained on a GPT-2-tokenized train.bin; the user re-prepares that text with gptforge, adds more, and
    continues the imported run on it."""
    import numpy as np
    import torch

    from gptforge.config import build_config, load_config
    from gptforge.data.tokenizers import load_tokenizer
    from gptforge.errors import UserError
    from gptforge.interop.nanogpt import import_nanogpt_command
    from gptforge.model.gpt import GPT

    gpt2 = load_tokenizer("gpt2")
    texts = [tiny_text(300, seed=1), tiny_text(300, seed=2)]
    folder = tmp_path / "nanoGPT" / "data" / "mytext"  # nanoGPT's openwebtext layout: uint16 GPT-2 ids, no meta.pkl
    folder.mkdir(parents=True)
    ids = np.concatenate([np.append(gpt2.encode(t), gpt2.eot_id) for t in texts]).astype(np.uint16)
    ids[: len(ids) * 9 // 10].tofile(folder / "train.bin")
    ids[len(ids) * 9 // 10:].tofile(folder / "val.bin")
    args = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, bias=True, vocab_size=50304, dropout=0.0)
    torch.manual_seed(0)
    model = GPT(build_config({k: v for k, v in args.items()}).model)
    ckpt = {"model": model.state_dict(), "model_args": args, "iter_num": 4, "best_val_loss": 9.0,
            "config": {"dataset": "mytext", "batch_size": 4, "block_size": 16, "learning_rate": 1e-3, "min_lr": 1e-4,
                       "max_iters": 100, "lr_decay_iters": 100, "warmup_iters": 2}}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    run = import_nanogpt_command(tmp_path / "ckpt.pt", tmp_path / "run", data=folder)

    for i, text in enumerate(texts + [tiny_text(600, seed=3)]):  # the same text re-prepared, and more
        (tmp_path / f"doc{i}.txt").write_text(text, encoding="utf-8")
    prepared = tmp_path / "prepared"
    prepare([str(tmp_path / "doc0.txt"), str(tmp_path / "doc1.txt")], prepared, tokenizer="gpt2")
    prepare([str(tmp_path / "doc2.txt")], prepared)
    launch = ["--max_iters=6", "--eval_interval=2", "--eval_iters=1", "--sample_tokens=0", "--device=cpu",
              f"--data={prepared}"]
    with pytest.raises(UserError, match=r"cannot resume on .*prepared: it is neither the dataset the checkpoint was "
                                        r"trained on \(.*mytext\) nor a grown version of it \(the checkpoint's is a "
                                        r"nanogpt dataset of [\d,]+ train tokens, this is a gptforge one of [\d,]+\)"):
        train(load_config(str(run / "config.toml"), overrides=launch))
    capsys.readouterr()
    assert train(load_config(str(run / "config.toml"), overrides=launch + ["--data_changed=ok"]))["step"] == 6
    assert "training continues on another dataset (the checkpoint's is a nanogpt dataset" in capsys.readouterr().out
