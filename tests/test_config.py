import dataclasses
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gptforge.config import (
    HELP_GROUPS,
    KEY_FIELDS,
    KEY_OWNERS,
    build_config,
    config_help,
    load_config,
    parse_overrides,
    read_toml,
    to_toml,
)
from gptforge.errors import UserError

from helpers import FIXTURES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


def test_defaults_overrides_and_types(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('n_layer = 6\n[optim]\nlearning_rate = 1e-3\n[train]\nmax_iters = 5_000\ncompile = "false"\n')
    cfg = load_config(str(toml), ["--n_head=3", "--dropout=0.2", "--bias=false", "--max_tokens=2e6", "--data=d"])
    assert cfg.model.n_layer == 6 and cfg.model.n_head == 3 and cfg.model.dropout == 0.2 and cfg.model.bias is False
    assert cfg.optim.learning_rate == 1e-3
    assert cfg.train.max_iters == 5000 and cfg.train.max_tokens == 2_000_000 and cfg.train.compile == "false"
    assert cfg.data.data == "d"


def test_unknown_key_names_the_closest_known_key(tmp_path):
    with pytest.raises(UserError, match=r"unknown config key 'n_layers'.*did you mean 'n_layer'"):
        parse_overrides(["--n_layers=4"])
    toml = tmp_path / "c.toml"
    toml.write_text("learning_rat = 0.1\n")
    with pytest.raises(UserError, match=r"'learning_rat' in .*c.toml.*did you mean 'learning_rate'"):
        read_toml(toml)


def test_bad_values_and_files_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match=r"config key 'n_layer'.*'six' is not a valid int"):
        load_config(None, ["--n_layer=six"])
    with pytest.raises(UserError, match=r"'keep_last' must be in \[2, .*got 1: the newest checkpoint may"):
        load_config(None, ["--keep_last=1"])
    with pytest.raises(UserError, match="divisible by n_head"):
        load_config(None, ["--n_embd=100", "--n_head=3"])
    with pytest.raises(UserError, match="does not exist"):
        load_config(str(tmp_path / "missing.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("n_layer = = 3")
    with pytest.raises(UserError, match="not valid TOML"):
        load_config(str(bad))
    with pytest.raises(UserError, match=r"unknown config section \[modle\]"):
        bad.write_text("[modle]\nn_layer = 3\n")
        load_config(str(bad))


def test_resolved_config_round_trips_through_toml(tmp_path):
    cfg = load_config(None, ["--n_layer=3", "--sample_prompts=Hello|World", "--learning_rate=3e-4", "--out=runs/x y"])
    path = tmp_path / "config.toml"
    path.write_text(to_toml(cfg))
    again = build_config(read_toml(path))
    assert again == cfg
    assert again.train.sample_prompts == ["Hello", "World"]


# ---- the help: every key, its type, default and meaning, generated from the dataclasses

def test_help_shows_every_key_with_type_default_and_meaning():
    text = config_help(width=200)
    lines = text.splitlines()
    for name, f in KEY_FIELDS.items():
        at = next((i for i, ln in enumerate(lines) if ln.split()[:1] == [name]), None)
        assert at is not None, f"{name} missing from the help"
        assert lines[at].split()[1] in ("bool", "int", "float", "str", "list")
        entry = " ".join([lines[at]] + [ln for ln in lines[at + 1:at + 2] if ln.startswith(" " * 42)])
        assert f.metadata["help"] in entry
    assert "  n_layer                 int   12        transformer blocks; [1, 1024]" in text
    assert "  compile                 str   auto      torch.compile the model" in text
    assert "one of auto, true, false" in text
    assert "  gradient_accumulation_steps int   1\n" + " " * 42 + "micro-batches per optimizer step" in text
    assert "(default: The capital of France is|If yesterday was Friday, then tomorrow will be)" in text
    headings = [ln[:-1] for ln in lines if ln.endswith(":") and not ln.startswith(" ")]
    assert headings == ["model", "optimizer", "schedule", "training", "data", "logging"] == list(HELP_GROUPS)
    assert sum(1 for ln in lines if ln.split()[:1] and ln.split()[0] in KEY_OWNERS) == len(KEY_OWNERS)


def test_every_field_is_documented():
    undocumented = [name for name, f in KEY_FIELDS.items() if len(f.metadata.get("help", "")) < 10]
    assert undocumented == []


# ---- sections: the old ones (saved RUN_DIR/config.toml files) and the help's groups

def test_a_config_saved_by_an_earlier_version_still_loads():
    old = FIXTURES / "config_saved_before_help_groups.toml"
    assert "[train]" in old.read_text() and "[optim]" in old.read_text()
    cfg = load_config(str(old))
    assert cfg == load_config(None, ["--n_layer=3", "--compile=false", "--out=runs/x", "--data=data/sc",
                                     "--sample_prompts=ROMEO:|JULIET:"])


def test_the_help_groups_are_sections_too_and_config_toml_uses_them(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[model]\nn_layer = 2\n[optimizer]\nbeta2 = 0.99\n[schedule]\nwarmup_iters = 7\n"
                    "[training]\nbatch_size = 3\n[data]\ndata = 'd'\n[logging]\nlog_interval = 4\n")
    cfg = load_config(str(toml))
    assert (cfg.model.n_layer, cfg.optim.beta2, cfg.optim.warmup_iters, cfg.train.batch_size, cfg.data.data,
            cfg.train.log_interval) == (2, 0.99, 7, 3, "d", 4)
    written = tomllib.loads(to_toml(cfg))
    assert list(written) == list(HELP_GROUPS)
    assert written["schedule"]["warmup_iters"] == 7 and written["logging"]["log_interval"] == 4
    assert sorted(k for section in written.values() for k in section) == sorted(KEY_OWNERS)


# ---- spellings and booleans

@pytest.mark.parametrize("spelling, expected", [
    ("--compile=False", "false"), ("--compile=True", "true"), ("--compile=0", "false"), ("--compile=1", "true"),
    ("--compile=false", "false"), ("--compile", "true"), ("--compile=auto", "auto"), ("--compile=AUTO", "auto"),
])
def test_compile_takes_every_boolean_spelling(spelling, expected):
    assert load_config(None, [spelling]).train.compile == expected


@pytest.mark.parametrize("spelling, expected", [
    ("--bias=False", False), ("--bias=True", True), ("--bias=0", False), ("--bias=1", True), ("--bias", True),
    ("--bias=no", False),
])
def test_bool_keys_take_every_spelling(spelling, expected):
    assert load_config(None, [spelling]).model.bias is expected


def test_compile_false_in_toml_is_a_bool_or_a_string(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("compile = false\n")
    assert load_config(str(toml)).train.compile == "false"
    toml.write_text('compile = "False"\n')
    assert load_config(str(toml)).train.compile == "false"


def test_dashes_and_underscores_and_a_separate_value():
    cfg = load_config(None, ["--max-iters=5", "--gradient-accumulation-steps", "4", "--n_layer", "2",
                             "--always-save-checkpoint"])
    assert cfg.train.max_iters == 5 and cfg.train.gradient_accumulation_steps == 4 and cfg.model.n_layer == 2
    assert cfg.train.always_save_checkpoint is True
    cfg = load_config(None, ["--compile", "False", "--bias", "0", "--skip_spikes", "--fsdp", "no", "--compile", "auto"])
    assert (cfg.train.compile, cfg.model.bias, cfg.train.skip_spikes, cfg.train.fsdp) == ("auto", False, True, False)
    with pytest.raises(UserError, match=r"^config key 'n_layer' needs a value: --n_layer=VALUE$"):
        parse_overrides(["--n_layer"])
    with pytest.raises(UserError, match=r"^config key 'max_iters' needs a value"):
        parse_overrides(["--max-iters", "--n_layer=2"])


# ---- ranges: every numeric key finite and in its range

@pytest.mark.parametrize("arg, message", [
    ("--min_lr=nan", "config key 'min_lr' must be a finite number, got nan"),
    ("--learning_rate=inf", "config key 'learning_rate' must be a finite number, got inf"),
    ("--learning_rate=-1e-3", "config key 'learning_rate' must be in [0, 10], got -0.001"),
    ("--beta1=2", "config key 'beta1' must be in [0, 1), got 2.0"),
    ("--beta2=1", "config key 'beta2' must be in [0, 1), got 1.0"),
    ("--seed=-1", "config key 'seed' must be in [0, 2^63), got -1"),
    ("--max_iters=-5", "config key 'max_iters' must be in [0, 1e12], got -5"),
    ("--batch_size=12345678901234567890",
     "config key 'batch_size' must be in [1, 65536], got 12345678901234567890"),
    ("--batch_size=0", "config key 'batch_size' must be in [1, 65536], got 0"),
    ("--eval_interval=0", "config key 'eval_interval' must be in [1, 1e12], got 0"),
    ("--log_interval=-1", "config key 'log_interval' must be in [1, 1e12], got -1"),
    ("--dropout=1", "config key 'dropout' must be in [0, 1), got 1.0"),
    ("--n_layer=1e9", "config key 'n_layer' must be in [1, 1024], got 1000000000"),
    ("--warmup_iters=-1", "config key 'warmup_iters' must be in [0, 1e12], got -1"),
    ("--grad_clip=nan", "config key 'grad_clip' must be a finite number, got nan"),
    ("--muon_momentum=1", "config key 'muon_momentum' must be in [0, 1), got 1.0"),
    ("--max_seconds=-1", "config key 'max_seconds' must be in [0, 1e9], got -1.0"),
    ("--rope_base=0", "config key 'rope_base' must be in (0, 1e12], got 0.0"),
    ("--max_iters=inf", "config key 'max_iters' in the command line: 'inf' is not a valid int"),
    ("--max_iters=2.5", "config key 'max_iters' in the command line: '2.5' is not a valid int"),
    ("--compile=maybe", "config key 'compile': 'maybe' is not one of auto, true, false"),
    ("--bias=maybe", "config key 'bias' in the command line: 'maybe' is not a valid true/false"),
    ("--min_lr=0.01", "config key 'min_lr' (0.01) must not exceed learning_rate (0.0006)"),
])
def test_out_of_range_values_are_one_line_errors(arg, message):
    with pytest.raises(UserError) as e:
        load_config(None, [arg])
    assert str(e.value) == message


def test_learning_rate_zero_is_allowed_with_min_lr_zero():
    cfg = load_config(None, ["--learning_rate=0", "--min_lr=0"])
    assert cfg.optim.learning_rate == 0.0 and cfg.optim.min_lr == 0.0


def test_non_finite_numbers_in_toml(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("eval_interval = 1e400\n")
    with pytest.raises(UserError) as e:
        load_config(str(toml))
    assert str(e.value) == f"config key 'eval_interval' in {toml}: inf is not a valid int"
    toml.write_text("[optim]\nlearning_rate = nan\n")
    with pytest.raises(UserError, match=r"^config key 'learning_rate' must be a finite number, got nan$"):
        load_config(str(toml))
    toml.write_text(f"batch_size = {10**30}\n")
    with pytest.raises(UserError, match=r"^config key 'batch_size' must be in \[1, 65536\], got 1000"):
        load_config(str(toml))


def test_every_numeric_key_has_a_range():
    numeric = [n for n, f in KEY_FIELDS.items() if f.type in ("int", "float", int, float)]
    assert len(numeric) > 30
    assert [n for n in numeric if KEY_FIELDS[n].metadata["range"] is None] == []


# ---- written TOML round-trips any string

text = st.text(max_size=40)  # every code point but surrogates, control characters included


@settings(max_examples=300, deadline=None)
@given(out=text, data=text, name=text, prompts=st.lists(text, max_size=4))
def test_to_toml_round_trips_any_string(out, data, name, prompts):
    cfg = build_config({})
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data=data),
                              train=dataclasses.replace(cfg.train, out=out, wandb_run_name=name,
                                                        sample_prompts=prompts))
    doc = tomllib.loads(to_toml(cfg))  # valid TOML
    assert build_config({k: v for section in doc.values() for k, v in section.items()}) == cfg


@pytest.mark.parametrize("value", ["ROMEO:\nJULIET:", "tab\there", 'quote " and \\ backslash', "\x00\x01\x1f\x7f",
                                   "§ é 中文 🙂", "\r\n\b\f", "\\u0041 not an escape"])
def test_saved_config_with_awkward_strings_reads_back_from_disk(tmp_path, value):
    cfg = build_config({"sample_prompts": [value, "second"], "out": value})
    path = tmp_path / "config.toml"
    path.write_text(to_toml(cfg), encoding="utf-8")
    assert load_config(str(path)) == cfg


def test_undecodable_command_line_bytes_are_refused():
    with pytest.raises(UserError) as e:
        load_config(None, ["--out=runs/\udcff"])
    assert str(e.value) == "config key 'out' in the command line: 'runs/\\udcff' holds bytes that are not UTF-8 text"
