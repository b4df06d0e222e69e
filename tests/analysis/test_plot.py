"""gptforge plot: a real PNG of the runs' curves, several runs overlaid, errors in one line."""

import struct

import pytest

from gptforge.analysis.plot import draw, loss_limits, unique_labels
from gptforge.analysis.runlog import read_run
from gptforge.cli import main
from gptforge.commands.runs import plot_command
from gptforge.errors import UserError

import synthetic_runs as runs


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_one_run_png(tmp_path):
    run_dir = runs.diverged(tmp_path / "a")
    out = plot_command([run_dir], tmp_path / "plots" / "loss.png")
    width, height = png_size(out)
    assert (width, height) == (1430, 935) and 40_000 < out.stat().st_size < 2_000_000
    assert [p.name for p in out.parent.iterdir()] == ["loss.png"]  # no temporary file left behind


def test_several_runs_overlaid_with_a_legend(tmp_path):
    dirs = [runs.healthy(tmp_path / "x" / "run"), runs.lr_too_high(tmp_path / "y" / "run")]
    loaded = [read_run(d) for d in dirs]
    assert unique_labels(loaded) == ["x/run", "y/run"]
    fig = draw(loaded, log_scale=True)
    ax_step, ax_tok, ax_lr, ax_speed = fig.axes[:4]
    labels = ax_step.get_legend().get_texts()
    assert [t.get_text() for t in labels] == [
        "x/run: train (smoothed)",
        "x/run: val",
        "y/run: train (smoothed)",
        "y/run: val",
    ]
    assert ax_step.get_yscale() == "log" and ax_tok.get_xlabel() == "tokens seen"
    assert ax_lr.get_title() == "learning rate" and ax_speed.get_ylabel() == "tokens / second"
    assert [t.get_text() for t in ax_lr.get_legend().get_texts()] == ["x/run", "y/run"]
    out = tmp_path / "both.svg"
    assert main(["plot", str(dirs[0]), str(dirs[1]), "--out", str(out), "--log"]) == 0
    assert out.read_text().lstrip().startswith("<?xml")


def test_loss_limits_keep_the_start_from_flattening_the_curve():
    values = [11.0, 9.0, 7.0] + [3.0 + 0.01 * i for i in range(97)]
    low, high = loss_limits(values)
    assert low < 3.0 and 3.9 < high < 5.0
    assert loss_limits([3.0, 3.1, 3.2, 3.3, 3.4])[1] == pytest.approx(3.4 + 0.03 * 0.4)


def test_errors(tmp_path, capsys):
    run_dir = runs.healthy(tmp_path / "h")
    with pytest.raises(UserError, match="must end in .png, .svg, .pdf"):
        plot_command([run_dir], tmp_path / "loss.jpeg")
    assert main(["plot", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")]) == 1
    assert capsys.readouterr().err.strip() == f"gptforge plot: error: run directory {tmp_path / 'nope'} does not exist"
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text('{"event": "start", "step": 0, "resumed_from": null}\n')
    with pytest.raises(UserError, match="logged no loss yet"):
        plot_command([empty], tmp_path / "e.png")


def test_growth_points_are_marked_on_both_loss_axes(tmp_path):
    run = read_run(runs.grown(tmp_path / "g", after="helped"))
    fig = draw([run])
    ax_step, ax_tok = fig.axes[:2]
    for ax, x in ((ax_step, 8000), (ax_tok, 8000 * 524_288)):
        marks = [line for line in ax.get_lines() if line.get_label() == "data grew"]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [x, x]
        assert [t.get_text() for t in ax.texts] == [" v2: 300.0M -> 3.00B train tokens"]
