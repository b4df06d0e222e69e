"""lm-evaluation-harness on exported runs of both archs (`lm_eval --model hf`), offline: a multiple-choice task
from a local jsonl. Its accuracies must equal the ones computed from gptforge's own model. Slow: lm_eval is a
fresh process that imports a lot; skipped where lm-eval (and accelerate, which its hf model needs) is missing."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gptforge.interop.export import export_command
from gptforge.train.runs import load_run

from helpers import tiny_config

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (importlib.util.find_spec("lm_eval") and importlib.util.find_spec("accelerate")),
    reason="lm-eval (pip install lm-eval accelerate) is not installed")]

# (context, choices, answer) in the tiny dataset's characters; the first two follow its grammar
DOCS = [("the cat sees", ["the moon.", "a rose.", "knows knows knows"], 0),
        ("my king fears", ["his crown.", "the sea.", "sees sees"], 1),
        ("a dog", ["loves the night.", "the the the the", "crown crown"], 0),
        ("our lord calls", ["her hand.", "moon moon moon", "a a a"], 0)]


def task_dir(tmp_path: Path) -> Path:
    root = tmp_path / "tasks"
    root.mkdir()
    data = root / "tiny_mc.jsonl"
    data.write_text("".join(json.dumps({"ctx": c, "endings": e, "label": a}) + "\n" for c, e, a in DOCS))
    (root / "tiny_mc.yaml").write_text(
        "task: tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\ndoc_to_text: \"{{{{ctx}}}}\"\n"
        "doc_to_choice: \"{{endings}}\"\ndoc_to_target: \"{{label}}\"\n"
        "metric_list:\n  - metric: acc\n  - metric: acc_norm\n")
    return root


def expected_accuracies(run: Path) -> tuple[float, float]:
    """acc and acc_norm as lm-eval defines them (continuation ' ' + choice; acc_norm divides by the choice's
    length), from gptforge's own model."""
    model, tok, _ = load_run(run, torch.device("cpu"))
    right = right_norm = 0
    for context, choices, answer in DOCS:
        scores = []
        for choice in choices:
            ctx, cont = tok.encode(context).tolist(), tok.encode(" " + choice).tolist()
            with torch.no_grad():
                logits = model(torch.tensor([ctx + cont[:-1]]))[0][0, len(ctx) - 1:].float()
            scores.append(torch.log_softmax(logits[:, :model.vocab_size], -1)[range(len(cont)), cont].sum().item())
        right += max(range(len(choices)), key=lambda i: scores[i]) == answer
        right_norm += max(range(len(choices)), key=lambda i: scores[i] / len(choices[i])) == answer
    return right / len(DOCS), right_norm / len(DOCS)


@pytest.mark.parametrize("arch", ["modern", "gpt2"])
def test_lm_eval_runs_on_an_exported_run(arch, char_data, tmp_path):
    from gptforge.train.loop import train

    run = tmp_path / "run"
    train(tiny_config(char_data, run, arch=arch, block_size=64, max_iters=30, dropout=0.0, eval_interval=10))
    export_command(run, "hf", tmp_path / "hf")
    args = f"pretrained={tmp_path / 'hf'},dtype=float32" + (",trust_remote_code=True" if arch == "modern" else "")
    command = [str(Path(sys.executable).parent / "lm_eval"), "--model", "hf", "--model_args", args, "--tasks",
               "tiny_mc", "--include_path", str(task_dir(tmp_path)), "--device", "cpu", "--batch_size", "2",
               "--output_path", str(tmp_path / "results")]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    print(" ".join(command) + "\n" + done.stdout)  # the table, for the record (-s shows it)
    results = json.loads(next((tmp_path / "results").rglob("results_*.json")).read_text())["results"]["tiny_mc"]
    acc, acc_norm = expected_accuracies(run)
    assert (results["acc,none"], results["acc_norm,none"]) == (acc, acc_norm)
    assert "|tiny_mc|" in done.stdout
