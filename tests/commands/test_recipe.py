"""The recipes in scripts/ run end to end, as written, on small local data: the shards come from an HTTP
server on 127.0.0.1 (a URL template instead of the Hugging Face dataset), the model is tiny and on the
CPU (extra --key=value overrides), and every step's output is checked."""

import functools
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from helpers import REPO, plays_dir, write_parquet

PNG = b"\x89PNG\r\n\x1a\n"
# a GPT-2-vocabulary head dominates a tiny model's time on a CPU: few, short sequences
TINY = ("--n_layer=2 --n_head=2 --n_embd=16 --block_size=32 --batch_size=4 --gradient_accumulation_steps=1 "
        "--max_iters=8 --warmup_iters=2 --eval_interval=4 --eval_iters=2 --log_interval=2 --dtype=float32 "
        "--compile=false --device=cpu --sample_tokens=0")
STEPS = 8


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def shard_server(tmp_path_factory):
    """Two parquet shards of Shakespeare's speeches (a `text` column, like FineWeb's; one play each), served
    over HTTP."""
    root = tmp_path_factory.mktemp("served")
    plays = sorted(plays_dir().glob("*/*.md"))
    for index in range(2):
        speeches = [s for s in plays[index].read_text(encoding="utf-8").split("\n\n") if len(s.strip()) > 40]
        write_parquet(root / f"shard_{index:05d}.parquet", speeches, row_group_size=500)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/shard_{{index:05d}}.parquet"
    httpd.shutdown()


def run_recipe(script, tmp_path, template, **env):
    """The script's stdout, its trace of commands (bash -x, on stderr) and the directories it used."""
    dirs = dict(RAW_DIR=tmp_path / "raw", DATA_DIR=tmp_path / "data", RUN_DIR=tmp_path / "run")
    bin_dir = str(Path(sys.executable).parent)  # gptforge and torchrun of this environment
    ours = ("LAUNCH", "TOKENIZER", "CONFIG", "GPU", "NPROC", "PROMPT")  # the scripts' other knobs: defaults
    full_env = {k: v for k, v in os.environ.items() if k not in ours}
    full_env.update(PATH=bin_dir + os.pathsep + os.environ["PATH"], DATASET=template, SHARDS="2", EXTRA=TINY,
                    SAMPLE_TOKENS="12", EVAL_BATCHES="20")
    full_env.update({k: str(v) for k, v in {**dirs, **env}.items()})
    result = subprocess.run(["bash", "-x", str(REPO / "scripts" / script)], env=full_env, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout, result.stderr, dirs


def check_outputs(out, dirs, served, card="RTX 4070", steps=STEPS):
    raw, data, run = dirs["RAW_DIR"], dirs["DATA_DIR"], dirs["RUN_DIR"]
    for name in ("shard_00000.parquet", "shard_00001.parquet"):  # downloaded byte for byte
        assert (raw / name).read_bytes() == (served / name).read_bytes()
    manifest = json.loads((data / "manifest.json").read_text())
    assert len(manifest["sources"]) == 2 and manifest["totals"]["train_tokens"] > 30_000
    assert f"fits {card} (" in out  # the plan step checked the memory against the card
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "end" and last["reason"] == "max_iters" and last["step"] == steps
    assert (run / "checkpoints" / f"step_{steps:08d}" / "COMPLETE").is_file()
    assert f"at step {steps} on {data} (20 batches" in out and "bits per byte" in out  # eval
    samples = (run / "samples" / "recipe.txt").read_text()
    assert samples.count("The most important thing to know about the ocean is") == 3
    assert "## Findings" in (run / "diagnosis.md").read_text()
    assert (run / "loss.png").read_bytes()[:8] == PNG and (run / "curves.png").read_bytes()[:8] == PNG
    assert out.rstrip().endswith(f"done: read {run}/diagnosis.md")
    return manifest


def test_rtx4070_recipe_with_the_gpt2_tokenizer(tmp_path, shard_server):
    served, template = shard_server
    out, trace, dirs = run_recipe("recipe_rtx4070.sh", tmp_path, template)
    manifest = check_outputs(out, dirs, served)
    assert manifest["tokenizer"]["name"] == "gpt2"
    assert f"+ gptforge train {REPO}/configs/gpt2_124m_rtx4070.toml --data={dirs['DATA_DIR']}" in trace


@pytest.mark.slow
def test_a_rerun_finds_everything_done(tmp_path, shard_server):
    served, template = shard_server
    _, _, dirs = run_recipe("recipe_rtx4070.sh", tmp_path, template)
    manifest = json.loads((dirs["DATA_DIR"] / "manifest.json").read_text())
    metrics = (dirs["RUN_DIR"] / "metrics.jsonl").read_text()
    out, trace, dirs = run_recipe("recipe_rtx4070.sh", tmp_path, template)
    assert "0 fetched, 2 already complete" in out and "training already finished" in out
    assert json.loads((dirs["DATA_DIR"] / "manifest.json").read_text()) == manifest
    assert (dirs["RUN_DIR"] / "metrics.jsonl").read_text() == metrics  # no second training
    check_outputs(out, dirs, served)


def test_8xh100_recipe_with_a_trained_tokenizer_through_torchrun(tmp_path, shard_server):
    """Two CPU processes (gloo) stand in for the eight GPUs."""
    served, template = shard_server
    if shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("torchrun is not installed next to this Python")
    two = TINY.replace("--gradient_accumulation_steps=1", "--gradient_accumulation_steps=2")
    out, trace, dirs = run_recipe("recipe_8xh100.sh", tmp_path, template, NPROC=2, TOKENIZER=512, EXTRA=two)
    manifest = check_outputs(out, dirs, served, card="H100")
    assert manifest["tokenizer"]["kind"] == "bpe" and manifest["tokenizer"]["vocab_size"] == 512
    assert (Path(f"{dirs['DATA_DIR']}.tokenizer")).is_dir()
    assert (f"+ torchrun --standalone --nproc_per_node=2 -m gptforge train {REPO}/configs/gpt2_124m_8xh100.toml "
            f"--data={dirs['DATA_DIR']}") in trace
    start = json.loads((dirs["RUN_DIR"] / "metrics.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start" and start["world_size"] == 2 and start["config"]["n_layer"] == 2
