"""The demo's corpus step (the full demo is a few CPU minutes: run it with `gptforge demo`)."""

from __future__ import annotations

import pytest

from gptforge.commands.demo import markdown_to_script, play_files, training_length


def test_the_38_plays_are_found():
    plays = play_files()
    assert len(plays) == 38
    assert {"hamlet", "othello", "romeo-and-juliet"} <= {p.stem for p in plays}


def test_markdown_becomes_script_text():
    md = "# Othello\n\n## ACT I\n\n_Enter RODERIGO and IAGO_\n\n**RODERIGO**  \nTush! never tell me;  \nI take it.\n"
    assert markdown_to_script(md) == ("Othello\n\nACT I\n\n[Enter RODERIGO and IAGO]\n\n"
                                      "RODERIGO:\nTush! never tell me;\nI take it.\n")


@pytest.mark.parametrize("seconds, per_iter", [(150, 0.378), (150, 0.01), (150, 5.0), (100, 0.2)])
def test_the_demo_ends_on_a_regular_eval(seconds, per_iter):
    """Before: 337 iterations every 56 evaluated and saved at step 336, then again at 337."""
    max_iters, eval_interval = training_length(seconds, per_iter)
    assert max_iters % eval_interval == 0 and max_iters // eval_interval in (5, 6)
    assert 50 <= max_iters <= max(50, seconds / per_iter)
