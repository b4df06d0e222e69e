"""`eval` and `sample` take any complete checkpoint: RUN_DIR (the latest), RUN_DIR --step N, or
RUN_DIR/checkpoints/step_N; an incomplete or missing one is one line naming it and the complete ones."""

from __future__ import annotations

import pytest
import torch

from gptforge.cli import main
from gptforge.errors import UserError
from gptforge.train.checkpoint import MARKER
from gptforge.train.loop import train
from gptforge.train.runs import find_checkpoint, load_run

from helpers import tiny_config


@pytest.fixture(scope="module")
def run(char_data, tmp_path_factory):
    """A tiny run with checkpoints at steps 2, 4 and 6."""
    out = tmp_path_factory.mktemp("steps") / "run"
    train(tiny_config(char_data, out, max_iters=6, eval_interval=2, keep_last=3, dropout=0.0))
    return out


def test_a_checkpoint_is_found_by_directory_or_step(run):
    ckpts = run / "checkpoints"
    assert find_checkpoint(run) == (run, ckpts / "step_00000006")
    assert find_checkpoint(run, 2) == (run, ckpts / "step_00000002")
    assert find_checkpoint(ckpts / "step_00000004") == (run, ckpts / "step_00000004")
    assert find_checkpoint(ckpts / "step_00000004", 4) == (run, ckpts / "step_00000004")
    early, _, state = load_run(ckpts / "step_00000002", torch.device("cpu"))
    late, _, _ = load_run(run, torch.device("cpu"))
    assert state["step"] == 2 and not torch.equal(early.lm_head.weight, late.lm_head.weight)


def test_eval_and_sample_take_a_checkpoint_directory_or_step(run, capsys):
    step2 = run / "checkpoints" / "step_00000002"
    assert main(["eval", str(step2), "--device", "cpu"]) == 0
    by_dir = capsys.readouterr().out
    assert main(["eval", str(run), "--step", "2", "--device", "cpu"]) == 0
    by_step = capsys.readouterr().out
    assert f"{step2} at step 2 on " in by_dir and f"{run} at step 2 on " in by_step
    assert by_dir.splitlines()[1] == by_step.splitlines()[1]  # the same val loss, perplexity, bits per byte
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines()[1] != by_step.splitlines()[1]  # the latest is another model

    args = ["--prompt", "the ", "--max-new-tokens", "12", "--temperature", "0", "--device", "cpu"]
    assert main(["sample", str(step2), *args]) == 0
    from_dir = capsys.readouterr().out
    assert main(["sample", str(run), "--step", "2", *args]) == 0
    assert capsys.readouterr().out == from_dir and from_dir.startswith("the ")


def test_incomplete_missing_and_mismatched_checkpoints_are_one_line_each(run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "checkpoints" / "step_00000002" / MARKER).unlink()  # as a save killed before its marker
    with pytest.raises(UserError, match=r"checkpoint .*step_00000002 is incomplete \(no valid COMPLETE marker: its "
                                        r"save was interrupted\); complete ones: --step 4, 6$"):
        find_checkpoint(copy / "checkpoints" / "step_00000002")
    with pytest.raises(UserError, match=r"has no checkpoint at step 3; complete ones: --step 4, 6$"):
        find_checkpoint(copy, 3)
    with pytest.raises(UserError, match=r"--step 6 does not match the checkpoint given"):
        find_checkpoint(copy / "checkpoints" / "step_00000004", 6)
    assert main(["sample", str(copy), "--step", "2", "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "step_00000002 is incomplete" in err and len(err.strip().splitlines()) == 1
    assert main(["eval", str(tmp_path / "nothing" / "checkpoints" / "step_00000002")]) == 1
    assert "does not exist" in capsys.readouterr().err
    # a checkpoint keep_last deleted: named, with the ones there are (before: "run directory ... does not exist")
    with pytest.raises(UserError, match=r"checkpoint .*step_00000003 does not exist; complete ones: --step 4, 6$"):
        find_checkpoint(copy / "checkpoints" / "step_00000003")
