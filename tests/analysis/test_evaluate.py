"""`gptforge eval`: loss, perplexity and bits per byte, checked against a direct computation."""

from __future__ import annotations

import math

import pytest
import torch

from gptforge.analysis.evaluate import evaluate_run, token_byte_lengths
from gptforge.cli import main
from gptforge.data.dataset import open_dataset
from gptforge.data.tokenizers import CharTokenizer, gpt2_tokenizer
from gptforge.train.loader import ValBatches
from gptforge.train.runs import load_run

from helpers import make_char_data, tiny_config, two_part_char_data


def test_values_match_a_direct_computation(tiny_run, char_data):
    r = evaluate_run(tiny_run, device="cpu")
    model, tok, _ = load_run(tiny_run, torch.device("cpu"))
    ds = open_dataset(char_data)
    nats = tokens = 0
    with torch.no_grad():
        for x, y in ValBatches(ds, 4, 16, None):
            nats += model(x, y)[1].item() * y.numel()
            tokens += y.numel()
    assert r["tokens"] == tokens == (ds.val_tokens - 1) // 16 * 16
    assert math.isclose(r["val_loss"], nats / tokens, rel_tol=1e-9)
    assert math.isclose(r["perplexity"], math.exp(r["val_loss"]))
    assert r["bytes"] == tokens  # ASCII characters: one byte each
    assert math.isclose(r["bits_per_byte"], r["val_loss"] / math.log(2), rel_tol=1e-9)


def test_byte_lengths_of_tokens():
    lengths = token_byte_lengths(CharTokenizer(["a", "é", "€"]))
    assert lengths.tolist() == [1, 2, 3, 0]
    gpt2 = token_byte_lengths(gpt2_tokenizer())
    assert len(gpt2) == 50257 and gpt2[50256] == 0
    text = "Hello wörld, ünïcode €!"
    assert gpt2[gpt2_tokenizer().encode(text)].sum() == len(text.encode("utf-8"))


def test_cli_prints_the_three_numbers_and_limits_batches(tiny_run, capsys):
    assert main(["eval", str(tiny_run), "--batches", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "(2 batches, 128 tokens, 128 bytes of text)" in out
    assert "val loss " in out and "perplexity " in out and "bits per byte " in out


def test_errors(tiny_run, tmp_path, capsys):
    assert main(["eval", str(tiny_run), "--batches", "0"]) == 1
    assert "--batches must be at least 1" in capsys.readouterr().err
    other = make_char_data(tmp_path, "completely different characters: XYZ 0123456789\n" * 50)
    assert main(["eval", str(tiny_run), "--data", str(other)]) == 1
    assert "was tokenized with char" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "none")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_a_dataset_of_several_parts_is_evaluated_part_by_part(tmp_path, capsys):
    from gptforge.train.loop import train

    data = two_part_char_data(tmp_path)
    run = tmp_path / "run"
    train(tiny_config(data, run, max_iters=4, eval_interval=4, dropout=0.0))
    r = evaluate_run(run, device="cpu")
    model, _, _ = load_run(run, torch.device("cpu"))
    ds = open_dataset(data)
    direct = {}
    with torch.no_grad():
        for name, stream in ds.val_part_streams():  # each part over all of its own val blocks
            losses = [(model(x, y)[1].item(), y.numel()) for x, y in ValBatches(ds, 4, 16, None, stream=stream)]
            direct[name] = (sum(a * n for a, n in losses) / sum(n for _, n in losses), len(stream))
    assert r["val_parts"] == {k: pytest.approx(v, rel=1e-9) for k, (v, _) in direct.items()}
    total = sum(t for _, t in direct.values())
    assert math.isclose(r["val_loss"], sum(v * t / total for v, t in direct.values()), rel_tol=1e-9)
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert (f"val loss by part: corpus {r['val_parts']['corpus']:.4f} | backwards {r['val_parts']['backwards']:.4f} "
            "(the val loss weighs them by their val tokens)") in out
    assert main(["eval", str(run), "--device", "cpu", "--batches", "3"]) == 0
    assert "(3 batches, " in capsys.readouterr().out  # shared between the parts: 2 + 1
