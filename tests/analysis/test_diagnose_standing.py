"""diagnose beyond the loss (issue 15): HellaSwag through the run (at chance after N tokens, rising, flat since
step N) and where the val loss stands against published runs of the same size, tokenizer and data family,
the family read from the dataset's manifest (source paths, kinds and download records)."""

from __future__ import annotations

import json
import math

import pytest

from gptforge.analysis import references as refs
from gptforge.analysis.diagnose.findings import analyse
from gptforge.analysis.diagnose.report import diagnose_command, load_config
from gptforge.analysis.diagnose.standing import dataset_family, hellaswag_trend, run_identity
from gptforge.analysis.runlog import read_run
from gptforge.data.prepare import prepare
from gptforge.data.tokenizers import gpt2_tokenizer

import synthetic_runs as runs
from helpers import nanogpt_char_folder, play_texts, write_parquet

FINEWEB_URL = "https://huggingface.co/datasets/HuggingFaceFW/fineweb/resolve/main/sample/10BT/000_00000.parquet"
GPT2_124M_SWAG = "OpenAI's GPT-2 124M scores 0.2955 (karpathy/llm.c dev/data/hellaswag.py)"


def row(printed: str, name: str) -> str:
    """A row of diagnose's printed summary."""
    return next(line.strip()[len(name):].strip() for line in printed.splitlines() if line.strip().startswith(name))


def diagnosis(run_dir, identity=(None, None)):
    run = read_run(run_dir)
    return analyse(run, load_config(run_dir, run), identity=identity)


def test_at_chance_after_n_tokens(tmp_path):
    d = diagnosis(runs.healthy(tmp_path / "r", lambda s: (0.25 + 0.01 * math.sin(s), 1000)))
    assert d.facts.hellaswag.status == "at chance"
    f = d.finding("hellaswag")
    assert f.title == "HellaSwag is at chance after 2.46B tokens"
    acc = 0.25 + 0.01 * math.sin(5000)
    assert f.evidence[0] == f"acc_norm {acc:.4f} ± {math.sqrt(acc * (1 - acc) / 999):.4f} on 1,000 items at step " \
                            "5,000 (2.46B tokens)"
    assert f.evidence[1] == "chance is 0.25: the score is within 2 standard errors of it"
    assert GPT2_124M_SWAG in f.evidence
    assert f.advice[1] == ("score more items to see smaller changes: 1,000 items measure ±0.014; all 10,042 "
                           "(hellaswag_limit=0) ±0.004")


def test_rising(tmp_path):
    d = diagnosis(runs.healthy(tmp_path / "r", lambda s: (0.25 + 0.06 * s / 5000, 10042)))
    t = d.facts.hellaswag
    assert (t.status, t.since.step) == ("rising", 3500)  # the recent window: the last 30% of the steps
    assert t.change == pytest.approx(0.06 * 1500 / 5000)
    f = d.finding("hellaswag")
    assert f.title == "HellaSwag is rising: 0.292 -> 0.310 since step 3,500" and f.score == 10
    assert f.advice == ["nothing to fix: the model keeps learning what HellaSwag measures"]


def test_flat_since_step_n(tmp_path, capsys):
    run_dir = runs.healthy(tmp_path / "r", lambda s: (0.26 if s <= 2000 else 0.30, 10042))
    d = diagnose_command(run_dir)
    t = d.facts.hellaswag
    assert (t.status, t.since.step) == ("flat", 2250)  # the jump at 2,000 -> 2,250 ends the flat stretch
    f = d.finding("hellaswag")
    assert f.title == "HellaSwag has been flat since step 2,250" and f.score == 30
    assert f.evidence[1].startswith("12 scores since step 2,250 (0.3000-0.3000) changed +0.0000 ± ")
    assert f.advice == ["the val loss is still falling: HellaSwag often moves later than the loss; keep training"]
    assert row(capsys.readouterr().out, "hellaswag") == ("acc_norm 0.3000 ± 0.0046 on 10,042 items at step 5,000 "
                                                         f"(2.46B tokens): flat since step 2,250; {GPT2_124M_SWAG}")
    assert "HellaSwag has been flat since step 2,250" in (run_dir / "diagnosis.md").read_text()


def test_rising_over_the_run_when_the_recent_scores_are_too_noisy_to_tell(tmp_path):
    d = diagnosis(runs.healthy(tmp_path / "r", lambda s: (0.25 + 0.05 * s / 5000, 1000) if s % 500 == 0 else None))
    t = d.facts.hellaswag
    assert (t.status, t.since.step, len(t.scores)) == ("rising", 0, 11)  # the last 4 scores alone cannot tell
    assert d.finding("hellaswag").title == "HellaSwag is rising: 0.250 -> 0.300 since step 0"


def test_falling_and_too_noisy_to_tell(tmp_path):
    d = diagnosis(runs.healthy(tmp_path / "f", lambda s: (0.32 - 0.04 * max(0, s - 3500) / 1500, 10042)))
    assert d.facts.hellaswag.status == "falling" and d.finding("hellaswag").score == 40
    assert d.finding("hellaswag").title == "HellaSwag is falling: 0.320 -> 0.280 since step 3,500"
    noisy = diagnosis(runs.healthy(tmp_path / "n", lambda s: (0.35 + 0.03 * math.sin(s / 300), 200)))
    assert noisy.facts.hellaswag.status == "unclear" and noisy.finding("hellaswag") is None
    sparse = diagnosis(runs.healthy(tmp_path / "s", lambda s: (0.33, 10042) if s == 5000 else None))
    assert sparse.facts.hellaswag.status == "one score" and sparse.finding("hellaswag") is None


def test_a_run_without_hellaswag_has_no_such_line(tmp_path):
    d = diagnosis(runs.healthy(tmp_path / "r", None))
    assert d.facts.hellaswag is None and d.finding("hellaswag") is None
    assert hellaswag_trend(read_run(tmp_path / "r")) is None


def _gpt2_data(folder, sources):
    prepare([str(s) for s in sources], folder / "data", tokenizer="gpt2", val_fraction=0.1)
    return folder / "data"


def test_where_the_run_stands_against_llmc_on_fineweb_from_the_download_record(tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_parquet(raw / "000_00000.parquet", play_texts(4, 3000))  # a name that says nothing of FineWeb
    (raw / ".gptforge-download.json").write_text(json.dumps(
        {"files": {"000_00000.parquet": {"source": FINEWEB_URL, "size": 1, "role": "train"}}}))
    data = _gpt2_data(tmp_path, [raw / "000_00000.parquet"])
    run_dir = runs.healthy(tmp_path / "run", None, data=data)
    assert run_identity(run_dir, load_config(run_dir, read_run(run_dir)), None) == ("gpt2", "fineweb")
    d = diagnose_command(run_dir)
    last = read_run(run_dir).evals[-1]
    expected = refs.where_run_stands(d.facts.params, "gpt2", "fineweb", last.tokens, last.val_loss)
    assert d.facts.standing == expected
    assert expected.startswith(f"val {last.val_loss:.2f} after 2.46B tokens; llm.c's GPT-2 124M on FineWeb was at "
                               f"{refs.value_at(refs.REFERENCES['llmc-gpt2-124m-fineweb'], last.tokens):.2f} after "
                               "as many tokens (it ended at 3.27 after 10.3B) (KellerJordan/modded-nanogpt "
                               "records/2024-10-13_llmc/main.log)")
    assert row(capsys.readouterr().out, "published runs") == expected
    assert f"| published runs | {expected} |" in (run_dir / "diagnosis.md").read_text()


def test_no_reference_matches_other_data_or_size(tmp_path, char_data):
    wiki = tmp_path / "enwiki-articles.txt"
    wiki.write_text("\n\n".join(play_texts(3, 2000)))
    data = _gpt2_data(tmp_path / "w", [wiki])
    d = diagnosis(runs.healthy(tmp_path / "run", None, data=data), ("gpt2", "wikipedia"))
    assert d.facts.standing.startswith("no reference matches a 124.5M-parameter model with the gpt2 tokenizer on "
                                       "wikipedia data; the references are 124.0M (gpt2, fineweb), ")
    run_dir = runs.healthy(tmp_path / "run2", None, data=data)
    assert run_identity(run_dir, load_config(run_dir, read_run(run_dir)), None) == ("gpt2", "wikipedia")
    small = read_run(runs.small_batch_cpu(tmp_path / "small"))
    line = analyse(small, load_config(small.run_dir, small), identity=("gpt2", "fineweb")).facts.standing
    assert line.startswith("no reference matches a ") and "with the gpt2 tokenizer on fineweb data" in line


def test_dataset_family_from_paths_kinds_and_records(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / ".gptforge-download.json").write_text(json.dumps({"files": {"shard_00001.parquet": {
        "source": "https://huggingface.co/datasets/karpathy/climbmix-400b-shuffle/resolve/main/shard_00001.parquet"}}}))
    assert dataset_family([{"path": str(raw / "shard_00001.parquet"), "kind": "parquet"}]) == "climbmix"
    assert dataset_family([{"path": "/d/dump.xml.bz2", "kind": "wikipedia"}]) == "wikipedia"
    assert dataset_family([{"path": "/d/fineweb-edu/a.parquet"}, {"path": "/d/fineweb-edu/b.parquet"}]) == \
        "fineweb-edu"
    assert dataset_family([{"path": "/d/fineweb/a.parquet"}, {"path": "/w/enwiki.xml", "kind": "wikipedia"}]) == \
        "a mix of fineweb and wikipedia"
    assert dataset_family([{"path": "/d/fineweb/a.parquet"}, {"path": "/d/my_notes.txt", "kind": "text"}]) is None
    assert dataset_family([]) is None


def test_identity_without_the_dataset_and_of_a_nanogpt_folder(tmp_path):
    run_dir = tmp_path / "run"
    gpt2_tokenizer().save(run_dir / "tokenizer")  # the data directory is gone: the run's own copy names it
    assert run_identity(run_dir, {"data": str(tmp_path / "gone")}, None) == ("gpt2", None)
    folder, _, _ = nanogpt_char_folder(tmp_path / "shakespeare_char", "to be or not to be")
    assert run_identity(tmp_path / "other", {}, str(folder)) == ("char", "shakespeare")  # meta.pkl: its own vocabulary
