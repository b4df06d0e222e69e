"""The reference table: lookups, matching by size, tokenizer and data family, interpolation, where a run stands."""

from __future__ import annotations

import math

import pytest

from gptforge.analysis import references as refs
from gptforge.errors import UserError


def test_every_reference_is_sourced_and_ordered():
    for ref in refs.REFERENCES.values():
        assert ref.source and "/" in ref.source.split()[0], ref.name  # owner/repository, then the file
        assert ref.metric in ("val_loss", "hellaswag_acc_norm") and ref.data_family and ref.tokenizer == "gpt2"
        if ref.is_curve:
            tokens = [t for t, _ in ref.points]
            assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens), ref.name
        if ref.metric == "hellaswag_acc_norm":
            assert 0.25 < ref.points[0][1] < 1


def test_find_names_the_closest_on_a_typo():
    assert refs.find("llmc-gpt2-124m-fineweb").params == 124e6
    with pytest.raises(UserError, match="unknown reference 'llmc-gpt2-124m-finweb'; did you mean "
                                        "'llmc-gpt2-124m-fineweb'"):
        refs.find("llmc-gpt2-124m-finweb")
    with pytest.raises(UserError, match="known: llmc-gpt2-124m-fineweb, "):
        refs.find("zzz")


def test_the_llmc_curves_are_the_logged_points():
    curve = refs.reference_curve("llmc-gpt2-124m-fineweb")
    assert curve[0] == (0.0, 11.0092) and curve[-1] == (19560 * 524_288.0, 3.2722)
    assert (5000 * 524_288.0, 3.5535) in curve
    assert refs.reference_curve("llmc-gpt2-350m-fineweb")[-1] == (60000 * 524_288.0, 2.9282)
    with pytest.raises(UserError, match="score of a finished model, not a curve"):
        refs.reference_curve("openai-gpt2-124m-hellaswag")


def test_matching_by_size_tokenizer_and_data_family():
    names = [r.name for r in refs.matching(124_475_904, "gpt2", "fineweb")]
    assert names == ["llmc-gpt2-124m-fineweb", "modded-nanogpt-record-124m-fineweb", "openai-gpt2-124m-fineweb"]
    assert [r.name for r in refs.matching(354_823_168, "gpt2", "fineweb")] == ["llmc-gpt2-350m-fineweb",
                                                                               "openai-gpt2-350m-fineweb"]
    assert refs.matching(124e6, "gpt2", "fineweb-edu")[0].name == "openai-gpt2-124m-fineweb-edu"
    assert refs.matching(124e6, "char", "fineweb") == [] and refs.matching(124e6, "gpt2", None) == []
    assert refs.matching(60e6, "gpt2", "fineweb") == [] and refs.matching(200e6, "gpt2", "fineweb") == []
    assert [r.name for r in refs.matching(124e6, "gpt2", "webtext", metric="hellaswag_acc_norm")] == [
        "openai-gpt2-124m-hellaswag"]
    assert len(refs.matching(124e6, "gpt2", "fineweb", metric=None)) == 3


def test_values_between_points_follow_log_tokens():
    ref = refs.find("llmc-gpt2-124m-fineweb")
    step = 524_288
    assert refs.value_at(ref, 5000 * step) == 3.5535  # a logged point
    # halfway in log(tokens) between steps 5000 and 10000 (= step 7071): halfway in value
    assert refs.value_at(ref, math.sqrt(5000 * 10000) * step) == pytest.approx((3.5535 + 3.3924) / 2)
    assert refs.value_at(ref, 125 * step) == pytest.approx((11.0092 + 6.1710) / 2)  # linear from 0 tokens
    assert refs.value_at(ref, 20000 * step) is None  # past the end of the run


def test_where_a_run_stands():
    line = refs.where_run_stands(124_475_904, "gpt2", "fineweb", 5000 * 524_288, 3.45)
    assert line.startswith("val 3.45 after 2.62B tokens; llm.c's GPT-2 124M on FineWeb was at 3.55 after as many "
                           "tokens (it ended at 3.27 after 10.3B) (KellerJordan/modded-nanogpt "
                           "records/2024-10-13_llmc/main.log)")
    assert "the modded-nanogpt speedrun record (124M, 2025-01-04) reached 3.28 after 730.0M tokens" in line
    assert "OpenAI's GPT-2 124M checkpoint scores 3.42 (trained on WebText; scored on llm.c's FineWeb val" in line
    late = refs.where_run_stands(124e6, "gpt2", "fineweb", 20e9, 3.20)
    assert "llm.c's GPT-2 124M on FineWeb ended at 3.27 after 10.3B tokens" in late


def test_no_reference_matches_says_what_the_table_has():
    line = refs.where_run_stands(10.7e6, "char65", "shakespeare", 5e6, 1.47)
    assert line == ("no reference matches a 10.7M-parameter model with the char65 tokenizer on shakespeare data; "
                    "the references are 124.0M (gpt2, fineweb), 124.0M (gpt2, fineweb-edu), 350.0M (gpt2, fineweb), "
                    "774.0M (gpt2, fineweb), 1.56B (gpt2, fineweb)")
    assert refs.where_run_stands(124e6, "gpt2", None, 1e9, 3.5).startswith("no reference matches a 124.0M-parameter "
                                                                           "model with the gpt2 tokenizer on unknown")
    assert refs.where_run_stands(124e6, "gpt2", "fineweb", None, 3.5) is None
    assert refs.where_run_stands(124e6, "gpt2", "fineweb", 1e9, float("nan")) is None


def test_data_family_from_names():
    assert refs.data_family("/data/fineweb-edu-100b-shuffle/shard_00000.parquet") == "fineweb-edu"
    assert refs.data_family("edu_fineweb10B/edufineweb_train_000001.npy") == "fineweb-edu"
    assert refs.data_family("~/data/fineweb/000_00000.parquet", "fineweb-sample-10BT") == "fineweb"
    assert refs.data_family("enwiki-20240601-pages-articles1.xml.bz2") == "wikipedia"
    assert refs.data_family("/data/climbmix-400b-shuffle/shard_00000.parquet") == "climbmix"
    assert refs.data_family("notes.txt", "text") is None
