"""Every user error of `gptforge train` is one clear line and exit code 1."""

from __future__ import annotations

import pytest

from gptforge.cli import main

from helpers import REPO, tiny_config

TINY = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=8", "--batch_size=2", "--max_iters=2",
        "--eval_iters=1", "--sample_tokens=0", "--gradient_accumulation_steps=1"]


def run_cli(capsys, *args):
    code = main(["train", *args])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("args, message", [
    (["--data=/nonexistent/data"], "data directory '/nonexistent/data' does not exist"),
    ([], "no dataset given: set --data=DATA_DIR"),
    (["--n_layerz=2"], "unknown config key 'n_layerz' in the command line; did you mean 'n_layer'?"),
    (["--device=cuda"], "device 'cuda': CUDA is not available"),
    (["--device=tpu"], "device 'tpu' is not one of auto, cuda, cuda:N, mps, cpu"),
    (["--init_from=/nonexistent/hf"], "'init_from': '/nonexistent/hf' is not 'scratch', 'resume' or a Hugging Face"),
    (["--vocab_size=3"], "config key 'vocab_size' (3) is smaller than the dataset's vocabulary (25)"),
    (["--block_size=100000"], "fewer than block_size + 1 (100001)"),
    (["--max_iters=0", "--tokens_per_param=0"], "no training budget"),
])
def test_bad_input_is_one_line(tmp_path, capsys, char_data, args, message):
    base = [f"--data={char_data}", f"--out={tmp_path / 'run'}", "--device=cpu", *TINY]
    if any(a.startswith("--data") for a in args) or not args:
        base = [a for a in base if not a.startswith("--data")]
    if any(a.startswith("--device") for a in args):
        base = [a for a in base if not a.startswith("--device")]
    code, err = run_cli(capsys, *base, *args)
    assert code == 1
    assert message in err and err.startswith("gptforge train: error: ") and "\n" not in err


def test_resume_errors(tmp_path, capsys, char_data):
    run = tmp_path / "run"
    common = [f"--data={char_data}", f"--out={run}", *TINY]
    code, err = run_cli(capsys, *common, "--init_from=resume")
    assert code == 1 and f"init_from=resume: {run} has no complete checkpoint (checkpoints/step_*/ with a " in err
    assert main(["train", *common]) == 0
    capsys.readouterr()
    code, err = run_cli(capsys, *common)
    assert code == 1 and "already holds a run (checkpoint step_00000002); continue it with --init_from=resume" in err
    assert main(["train", *common, "--init_from=resume"]) == 0  # a finished run: nothing to do is no error
    assert "nothing to do: the checkpoint is at step 2 and max_iters is 2" in capsys.readouterr().out
    code, err = run_cli(capsys, *common, "--init_from=resume", "--max_iters=4", "--n_layer=2", "--n_embd=32")
    assert code == 1
    assert "cannot resume: the model differs from the checkpoint's (n_layer: 1 -> 2; n_embd: 16 -> 32)" in err


def test_resume_reports_what_changed(tmp_path, capsys, char_data):
    from gptforge.train.loop import train

    run = tmp_path / "run"
    train(tiny_config(char_data, run, max_iters=2))
    capsys.readouterr()
    train(tiny_config(char_data, run, max_iters=3, init_from="resume", learning_rate=1e-3))
    out = capsys.readouterr().out
    assert "changed: learning_rate: 0.003 -> 0.001; max_iters: 2 -> 3" in out


def test_the_shipped_cpu_config_trains_from_the_command_line(tmp_path, capsys, char_data):
    """configs/shakespeare_char_cpu.toml (the CPU benchmark's recipe) runs as its header says, Muon included."""

    config = REPO / "configs" / "shakespeare_char_cpu.toml"
    run = tmp_path / "sc_cpu"
    assert main(["train", str(config), f"--data={char_data}", f"--out={run}", "--max_iters=3"]) == 0
    out = capsys.readouterr().out
    assert "done: max_iters at step 3" in out
    saved = (run / "config.toml").read_text()
    assert 'optimizer = "muon"' in saved and "muon_lr = 0.04" in saved and "max_iters = 3" in saved


def test_what_nanogpt_users_type_trains_without_a_config_file(tmp_path, capsys, char_data):
    """--compile=False, dashed keys, a --sample_prompts value with spaces (once taken for a config file)."""
    run = tmp_path / "run"
    args = [f"--data={char_data}", f"--out={run}", "--device=cpu", *TINY, "--compile=False", "--max-iters=2",
            "--sample_prompts=the cat|a dog sees", "--sample-tokens", "3"]
    assert main(["train", *args]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "sample 'a dog sees' -> " in out
    saved = (run / "config.toml").read_text()
    assert 'compile = "false"' in saved and 'sample_prompts = ["the cat", "a dog sees"]' in saved


def test_the_resume_command_works_with_a_prompt_holding_a_newline(tmp_path, capsys, char_data):
    """RUN_DIR/config.toml was invalid TOML for such a prompt, so the documented resume command failed."""
    run = tmp_path / "run"
    prompt = "the cat sees the moon.\nmy king"  # (a tab is not in this character vocabulary)
    assert main(["train", f"--data={char_data}", f"--out={run}", "--device=cpu", *TINY, f"--sample_prompts={prompt}",
                 "--sample_tokens=2"]) == 0
    capsys.readouterr()
    assert main(["train", str(run / "config.toml"), "--init_from=resume", "--max_iters=3"]) == 0
    out = capsys.readouterr().out
    assert "done: max_iters at step 3" in out and f"sample {prompt!r} -> " in out
