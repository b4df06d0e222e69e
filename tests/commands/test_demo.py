"""The demo's corpus step (the full demo is a few CPU minutes: run it with `gptforge demo`)."""

from __future__ import annotations

from gptforge.commands.demo import markdown_to_script, play_files


def test_the_38_plays_are_found():
    plays = play_files()
    assert len(plays) == 38
    assert {"hamlet", "othello", "romeo-and-juliet"} <= {p.stem for p in plays}


def test_markdown_becomes_script_text():
    md = "# Othello\n\n## ACT I\n\n_Enter RODERIGO and IAGO_\n\n**RODERIGO**  \nTush! never tell me;  \nI take it.\n"
    assert markdown_to_script(md) == ("Othello\n\nACT I\n\n[Enter RODERIGO and IAGO]\n\n"
                                      "RODERIGO:\nTush! never tell me;\nI take it.\n")
