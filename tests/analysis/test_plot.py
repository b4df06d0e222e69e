"""gptforge plot: a real PNG of the runs' curves, several runs overlaid, errors in one line."""

import math
import struct

import pytest

from gptforge.analysis import references as refs
from gptforge.analysis.plot import draw, loss_limits, split_at, unique_labels
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
        # the val loss before and after the growth are measured on different val splits: no line joins them
        val = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert len(val) == 2 and max(val[0].get_xdata()) < x <= min(val[1].get_xdata())
        assert [line.get_label() for line in val][0] == "val"


def test_split_at():
    assert split_at([1, 2, 3, 4], [5, 6, 7, 8], [3]) == [([1, 2], [5, 6]), ([3, 4], [7, 8])]
    assert split_at([1, 2], [5, 6], []) == [([1, 2], [5, 6])]
    assert split_at([1, 2], [5, 6], [0, 9]) == [([1, 2], [5, 6])]


def test_a_hellaswag_panel_when_a_run_scored_it(tmp_path):
    scores = lambda s: (0.25 + 0.05 * s / 5000, 1000) if s % 1000 == 0 else None  # noqa: E731
    run = read_run(runs.healthy(tmp_path / "h", hellaswag=scores))
    fig = draw([run])
    assert len(fig.axes) == 5
    ax = fig.axes[4]
    assert ax.get_title() == "HellaSwag (completion style, acc_norm)" and ax.get_xlabel() == "tokens seen"
    bars = next(c for c in ax.containers if c.get_label() == "acc_norm (1000 items)")
    line = bars.lines[0]
    last = bars.lines[2][0].get_segments()[-1]  # the last score's error bar: ± its standard error
    se = math.sqrt(0.3 * 0.7 / 999)
    assert [last[0][1], last[1][1]] == pytest.approx([0.3 - se, 0.3 + se])
    assert list(line.get_xdata()) == [s * 491_520 for s in range(0, 5001, 1000)]
    assert list(line.get_ydata()) == pytest.approx([0.25 + 0.05 * s / 5000 for s in range(0, 5001, 1000)])
    chance = next(x for x in ax.get_lines() if x.get_label() == "chance (0.25)")
    assert list(chance.get_ydata()) == [0.25, 0.25]
    out = plot_command([tmp_path / "h"], tmp_path / "swag.png")
    assert png_size(out) == (1430, 1375)  # a third row; without scores the figure stays 1430 x 935


def test_reference_overlays_on_the_tokens_panel_and_the_hellaswag_panel(tmp_path, capsys):
    run_dir = runs.healthy(tmp_path / "h")  # 2.46B tokens, no HellaSwag
    fig = draw([read_run(run_dir)], reference_names=("llmc-gpt2-124m-fineweb", "openai-gpt2-124m-fineweb",
                                                     "openai-gpt2-124m-hellaswag"))
    ax_tok, ax_swag = fig.axes[1], fig.axes[4]
    by_label = {x.get_label().split("\n")[0]: x for x in ax_tok.get_lines()}
    curve = by_label["llm.c's GPT-2 124M on FineWeb"]
    assert curve.get_label() == ("llm.c's GPT-2 124M on FineWeb\n(KellerJordan/modded-nanogpt records/2024-10-13_llmc/"
                                 "main.log)\nshown to 2.46B of its 10.3B tokens (ends at 3.27)")
    xs, ys = list(curve.get_xdata()), list(curve.get_ydata())
    assert xs[0] == 0 and xs[-1] == 5000 * 491_520  # cut at the run's last token
    ref = refs.REFERENCES["llmc-gpt2-124m-fineweb"]
    assert ys == pytest.approx([refs.value_at(ref, x) for x in xs])
    assert 5000 * 524_288 > xs[-1] and 250 * 524_288 in xs  # the logged points inside the range are drawn
    level = by_label["OpenAI's GPT-2 124M checkpoint"]
    assert list(level.get_ydata()) == [3.424958, 3.424958]
    assert ax_tok.get_ylim()[0] < 3.4 < 3.8 < ax_tok.get_ylim()[1]  # the reference is in view, not clipped
    swag = next(x for x in ax_swag.get_lines() if x.get_label().startswith("OpenAI's GPT-2 124M: 0.2955\n"))
    assert list(swag.get_ydata()) == [0.2955, 0.2955]
    out = tmp_path / "ref.png"
    assert main(["plot", str(run_dir), "--out", str(out), "--reference", "llmc-gpt2-124m-fineweb"]) == 0
    assert png_size(out) == (1430, 935)  # a val-loss reference adds no panel


def test_an_unknown_reference_lists_the_known_ones_before_reading_the_runs(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png"), "--reference", "llmc-124m"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("gptforge plot: error: unknown reference 'llmc-124m'; did you mean 'llmc-gpt2-124m-fineweb'?"
                          " (known: llmc-gpt2-124m-fineweb, llmc-gpt2-350m-fineweb, ")
    assert err.endswith("openai-gpt2-1558m-hellaswag)") and "\n" not in err
    assert not (tmp_path / "x.png").exists()
