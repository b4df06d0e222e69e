"""The exported model's card, and `export --push-to-hub` against a local fake Hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from gptforge.errors import UserError
from gptforge.interop.export import export_command
from gptforge.interop.model_card import hellaswag, last_eval

from fake_hub import FakeHub
from helpers import REPO, make_run, tree_digest

transformers = pytest.importorskip("transformers")


def write_metrics(run, *events):
    (run / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + '{"event": "ev', "utf-8")


def test_the_card_says_what_the_run_did(tmp_path, char_data):
    run, _ = make_run(tmp_path, arch="modern", vocab_size=65, data=str(char_data), tokens_seen=1_234_567,
                      val_loss=2.25, best_val_loss=2.2)
    write_metrics(run, {"event": "eval", "step": 5, "val_loss": 2.5},
                  {"event": "eval", "step": 7, "val_loss": 2.25, "hellaswag_acc": 0.29, "hellaswag_acc_norm": 0.3125},
                  {"event": "eval", "step": 9, "val_loss": 2.0, "hellaswag_acc_norm": 0.5})  # after the checkpoint
    export_command(run, "hf", tmp_path / "hf")
    card = (tmp_path / "hf" / "README.md").read_text()
    for line in ("library_name: transformers", "| tokens seen | 1,234,567 |", "| step | 7 |", "| val loss | 2.2500 |",
                 "| best val loss | 2.2000 |", "| HellaSwag (hellaswag_acc_norm) | 0.3125 (eval at step 7) |",
                 f"- `{char_data}`", "- tokenizer: char", "trust_remote_code=True", "lm_eval --model hf",
                 "arch = \"modern\"", "n_layer = 2"):
        assert line in card, line
    # no HellaSwag measured: no line about it
    write_metrics(run, {"event": "eval", "step": 7, "val_loss": 2.25})
    export_command(run, "hf", tmp_path / "hf2")
    card = (tmp_path / "hf2" / "README.md").read_text()
    assert "HellaSwag" not in card.split("## Use")[0] and "| val loss | 2.2500 |" in card


def test_eval_events_are_read_as_written():
    assert hellaswag({"hellaswag_acc": 0.2, "hellaswag_acc_norm": 0.3}) == ("hellaswag_acc_norm", 0.3)
    assert hellaswag({"hellaswag": 0.25, "val_loss": 3.0}) == ("hellaswag", 0.25)
    assert hellaswag({"val_loss": 3.0}) is None


def test_last_eval_merges_events_of_one_step(tmp_path):
    write_metrics(tmp_path, {"event": "eval", "step": 4, "val_loss": 3.0}, {"event": "log", "step": 4, "loss": 1},
                  {"event": "eval", "step": 4, "hellaswag_acc_norm": 0.27})
    assert last_eval(tmp_path, 10) == {"event": "eval", "step": 4, "val_loss": 3.0, "hellaswag_acc_norm": 0.27}
    assert last_eval(tmp_path, 3) == {}


@pytest.fixture
def fake(monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    server = FakeHub().start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_TOKEN", "hf_write_token")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    yield server
    server.stop()


def test_push_to_hub_uploads_the_export(fake, tmp_path):
    from huggingface_hub import snapshot_download

    from gptforge.data.tokenizers import gpt2_tokenizer

    run, model = make_run(tmp_path, arch="modern", vocab_size=50257, tokenizer=gpt2_tokenizer())
    out = tmp_path / "hf"
    # a fresh process, as users run it: huggingface_hub reads HF_ENDPOINT when it is imported
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "gptforge.cli", "export", str(run), "--out", str(out),
                           "--push-to-hub", "me/tiny-gpt"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout
    repo = fake.repos[("model", "me/tiny-gpt")]
    head = repo.refs["main"]
    assert f"pushed to {fake.url}/me/tiny-gpt/" in said  # (the commit's URL; huggingface_hub 0.x: the tree's)
    assert {name: data for name, data in repo.commits[head].items()} == {
        p.name: p.read_bytes() for p in out.iterdir()}
    writes = [r for r in fake.requests("hub", "POST") if r["path"] != "/api/validate-yaml"]  # (the card's metadata)
    assert [r["path"] for r in writes] == ["/api/repos/create", "/api/models/me/tiny-gpt/preupload/main",
                                           "/api/models/me/tiny-gpt/commit/main"]
    assert {r["auth"] for r in writes} == {"Bearer hf_write_token"}
    assert "me/tiny-gpt" in (out / "README.md").read_text()  # the card names the repository
    # what was pushed loads from the Hub and computes the model's logits
    local = snapshot_download("me/tiny-gpt", endpoint=fake.url, cache_dir=tmp_path / "dl")
    hf = transformers.AutoModelForCausalLM.from_pretrained(local, trust_remote_code=True).eval()
    import torch

    idx = torch.arange(16)[None]
    with torch.no_grad():
        assert (hf(idx).logits - model(idx)[0][..., :50257]).abs().max().item() <= 1e-5


def test_push_to_hub_errors(fake, tmp_path):
    run, _ = make_run(tmp_path, vocab_size=65)
    with pytest.raises(UserError, match="--push-to-hub 'no-owner': expected OWNER/NAME"):
        export_command(run, "hf", tmp_path / "a", push_to_hub="no-owner")
    assert not (tmp_path / "a").exists()  # refused before any work
    fake.script[("POST", "/api/repos/create")] += [401]
    with pytest.raises(UserError, match=r"--push-to-hub me/x: .*401.*\(log in with `hf auth login` or set HF_TOKEN "
                                        r"to a token with write access\); the export stays in "):
        export_command(run, "hf", tmp_path / "b", push_to_hub="me/x")
    assert (tmp_path / "b" / "model.safetensors").is_file() and tree_digest(tmp_path / "b")
