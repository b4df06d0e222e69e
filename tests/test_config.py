import pytest

from gptforge.config import build_config, load_config, parse_overrides, read_toml, to_toml
from gptforge.errors import UserError


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
    with pytest.raises(UserError, match="must be at least 2"):
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
