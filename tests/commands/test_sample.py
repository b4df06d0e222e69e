"""`gptforge sample`: prompts, determinism, end-of-text, and its error paths."""

from __future__ import annotations

import io

import pytest

from gptforge.cli import main
from gptforge.commands.sample import sample_command
from gptforge.model.gpt import GPT


def test_greedy_is_deterministic_and_streams_the_prompt(tiny_run):
    out = io.StringIO()
    a = sample_command(tiny_run, prompt="the cat", max_new_tokens=20, temperature=0, device="cpu", out=out)
    b = sample_command(tiny_run, prompt="the cat", max_new_tokens=20, temperature=0, device="cpu", out=io.StringIO())
    assert a == b and len(a[0]) == 20
    assert out.getvalue() == "the cat" + a[0] + "\n"


def test_seeded_sampling_and_several_samples(tiny_run, tmp_path):
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("a dog")
    out = io.StringIO()
    first = sample_command(tiny_run, prompt=f"FILE:{prompt_file}", num_samples=2, max_new_tokens=15, seed=3,
                           device="cpu", out=out)
    again = sample_command(tiny_run, prompt="a dog", num_samples=2, max_new_tokens=15, seed=3, device="cpu",
                           out=io.StringIO())
    assert first == again and len(first) == 2
    assert out.getvalue().count("---------------\n") == 1 and out.getvalue().startswith("a dog")


def test_stops_at_end_of_text(tiny_run, monkeypatch):
    def fake_generate(self, idx, max_new_tokens, **kw):
        yield from [4, 5, kw["eot_id"], 6]  # ids of three characters, then end-of-text, then more

    monkeypatch.setattr(GPT, "generate", fake_generate)
    samples = sample_command(tiny_run, prompt="t", max_new_tokens=10, device="cpu", out=io.StringIO())
    assert len(samples[0]) == 2


@pytest.mark.parametrize("args, message", [
    (["--num-samples", "0"], "--num-samples must be at least 1, got 0"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--temperature", "-1"], "--temperature must be >= 0"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--prompt", "FILE:/nonexistent/prompt.txt"], "--prompt FILE:/nonexistent/prompt.txt: cannot read it"),
    (["--device", "cuda"], "CUDA is not available"),
    (["--prompt", "xyz"], "--prompt has characters this run's vocabulary does not have: 'xz'"),
])
def test_errors(tiny_run, capsys, args, message):
    assert main(["sample", str(tiny_run), *args]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_missing_run_and_missing_checkpoint(tmp_path, capsys):
    assert main(["sample", str(tmp_path / "nope")]) == 1
    assert f"run directory {tmp_path / 'nope'} does not exist" in capsys.readouterr().err
    assert main(["sample", str(tmp_path)]) == 1
    assert "has no complete checkpoint" in capsys.readouterr().err
