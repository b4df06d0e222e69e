"""nanoGPT's config .py files read as data (never run), mapped to gptforge's keys: `gptforge train` and
`gptforge plan` take them; code in them is a one-line error naming the file and the line."""

import os

import pytest

from gptforge.cli import main
from gptforge.config import read_toml
from gptforge.errors import UserError
from gptforge.interop.nanogpt_config import (
    NANOGPT_DEFAULTS,
    literal_assignments,
    load_nanogpt_config,
    read_config_file,
)
from gptforge.interop.nanogpt_log import split_launches

from helpers import FIXTURES, nanogpt_char_folder, tiny_text

NANO = FIXTURES / "nanogpt"


def test_train_shakespeare_char_maps_to_gptforge_keys():
    assert read_config_file(NANO / "train_shakespeare_char.py") == dict(
        out_dir="out-shakespeare-char", eval_interval=250, eval_iters=200, log_interval=10,
        always_save_checkpoint=False, wandb_log=False, wandb_project="shakespeare-char", wandb_run_name="mini-gpt",
        dataset="shakespeare_char", gradient_accumulation_steps=1, batch_size=64, block_size=256, n_layer=6,
        n_head=6, n_embd=384, dropout=0.2, learning_rate=1e-3, max_iters=5000, lr_decay_iters=5000, min_lr=1e-4,
        beta2=0.99, warmup_iters=100)
    cfg, mapped = load_nanogpt_config(NANO / "train_shakespeare_char.py", ["--device=cpu", "--compile=False"])
    flat = cfg.flat()
    assert (flat["out"], flat["data"]) == ("out-shakespeare-char", os.path.join("data", "shakespeare_char"))
    assert (flat["n_layer"], flat["n_embd"], flat["block_size"], flat["dropout"]) == (6, 384, 256, 0.2)
    assert (flat["learning_rate"], flat["min_lr"], flat["beta2"], flat["max_iters"]) == (1e-3, 1e-4, 0.99, 5000)
    assert flat["bias"] is False and flat["weight_decay"] == 0.1  # nanoGPT's train.py defaults, not gptforge's
    assert (flat["device"], flat["compile"], flat["dtype"], flat["arch"]) == ("cpu", "false", "auto", "gpt2")
    assert flat["wandb_project"] == "shakespeare-char" and flat["always_save_checkpoint"] is False
    assert mapped.not_used == [] and mapped.unknown == []


def test_the_real_logs_echo_is_the_same_file(shared_data):
    """The shared log echoes config/train_shakespeare_char.py; reading the echo gives the file's settings."""
    (launch,) = split_launches((shared_data / "nanogpt-logs" / "shakespeare-char-cpu.log").read_text().splitlines())
    echoed, skipped = literal_assignments("\n".join(launch.echo), "echo", first_line=launch.echo_line, strict=False)
    assert echoed == read_config_file(NANO / "train_shakespeare_char.py") and skipped == []


def test_values_arithmetic_and_earlier_names_but_no_code(tmp_path):
    values, _ = literal_assignments("a = 5 * 8\nb = -2 ** 3\nc = a / 4\nd = 'x' + 'y'\ne = True\n'doc'\n", "f.py")
    assert values == {"a": 40, "b": -8, "c": 10.0, "d": "xy", "e": True}
    assert literal_assignments("lr_decay_iters = max_iters\n", "f.py", known=NANOGPT_DEFAULTS)[0] == {
        "lr_decay_iters": 600000}
    for source, line, message in [
        ("x = 1\nimport os\n", 2, "`import os` is code, not a `name = value` setting"),
        ("x = 1\n\ny = open('f').read()\n", 3, "`open('f').read()` is code, not a literal value"),
        ("y = unknown_name\n", 1, "`unknown_name` is not a setting assigned before this line"),
        ("for i in range(3):\n    x = i\n", 1, "`for i in range(3):` is code"),
        ("x = 'a' * 10 ** 9\n", 1, "`'a'` is code" if False else "is code, not a literal value"),
        ("x = 2 ** 1000\n", 1, "an exponent above 64"),
        ("x = 1 / 0\n", 1, "arithmetic that fails"),
        ("a.b = 1\n", 1, "`a.b = 1` is code"),
    ]:
        with pytest.raises(UserError, match=f"^f.py: line {line}: .*{message.replace('(', '.').replace(')', '.')}"):
            literal_assignments(source, "f.py")
    with pytest.raises(UserError, match=r"^f.py: line 2 is not valid Python"):
        literal_assignments("x = 1\nx = = 2\n", "f.py")


def test_code_in_a_config_is_refused_before_anything_runs(tmp_path, capsys):
    marker = tmp_path / "ran"
    cfg = tmp_path / "train_evil.py"
    cfg.write_text(f"batch_size = 4\nimport os\nos.system('touch {marker}')\n")
    assert main(["train", str(cfg), "--device=cpu"]) == 1
    err = capsys.readouterr().err
    assert err == (f"gptforge train: error: {cfg}: line 2: `import os` is code, not a `name = value` setting; "
                   "gptforge reads nanoGPT configs as data and never runs them: write the value itself "
                   "(e.g. `batch_size = 12`)\n")
    assert not marker.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["train_evil.py"]
    assert main(["plan", str(tmp_path / "missing.py")]) == 1
    assert "config file" in capsys.readouterr().err


def test_plan_train_gpt2(capsys):
    assert main(["plan", str(NANO / "train_gpt2.py"), "--gpu", "A100"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (f"{NANO / 'train_gpt2.py'}: a nanoGPT config, read as data (not run); "
                                   "nanoGPT's train.py defaults fill in what it does not set")
    assert "dataset='openwebtext' -> data=data/openwebtext" in out
    assert "tokens per iteration  491,520 = 12 batch x 40 accumulation x 1024 block" in out
    assert "iterations            600,000" in out and "total                   124,373,760" in out  # no biases
    assert "claims" not in out  # "GPT-2 (124M)" is right; "~0.5M" (batch) and "300B" (tokens) are not sizes


def test_nanogpt_overrides_unknown_keys_and_init_from(tmp_path):
    cfg = tmp_path / "c.py"
    cfg.write_text("n_layers = 8\nuse_rmsnorm = True\neval_only = True\ndecay_lr = False\nwarmup_iters = 50\n")
    config, mapped = load_nanogpt_config(cfg, ["--out_dir=runs/x", "--dataset=wiki", "--compile=True",
                                               "--batch_size=3", "--arch=modern"])
    flat = config.flat()
    assert (flat["out"], flat["data"], flat["compile"], flat["batch_size"]) == ("runs/x", "data/wiki", "true", 3)
    assert (flat["schedule"], flat["warmup_iters"], flat["arch"]) == ("constant", 0, "modern")  # decay_lr=False
    assert mapped.unknown == ["n_layers (did you mean n_layer?)", "use_rmsnorm"]
    assert mapped.not_used == ["eval_only (gptforge evaluates a run with `gptforge eval RUN_DIR`)"]
    cfg.write_text("init_from = 'gpt2-xl'\n")
    with pytest.raises(UserError, match=r"c\.py: init_from='gpt2-xl': gptforge does not download OpenAI's weights"):
        load_nanogpt_config(cfg)
    with pytest.raises(UserError, match=r"config key 'dropout' in .*c\.py: 'a lot' is not a valid float"):
        load_nanogpt_config(cfg, ["--init_from=scratch", "--dropout=a lot"])


def test_train_from_train_shakespeare_char(tmp_path, monkeypatch, capsys):
    """`gptforge train config/train_shakespeare_char.py` in a nanoGPT checkout: data/shakespeare_char is
    found where nanoGPT keeps it, the run lands in out-shakespeare-char with the mapped config."""
    _, _, vocab = nanogpt_char_folder(tmp_path / "data" / "shakespeare_char", tiny_text(400))
    monkeypatch.chdir(tmp_path)
    args = ["train", str(NANO / "train_shakespeare_char.py"), "--device=cpu", "--compile=False", "--max_iters=3",
            "--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=2", "--eval_iters=1",
            "--eval_interval=3", "--log_interval=1", "--sample_tokens=0", "--warmup_iters=1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "out_dir='out-shakespeare-char' -> out=out-shakespeare-char" in out
    saved = read_toml(tmp_path / "out-shakespeare-char" / "config.toml")
    assert saved["beta2"] == 0.99 and saved["dropout"] == 0.2 and saved["bias"] is False
    assert saved["data"] == os.path.join("data", "shakespeare_char") and saved["vocab_size"] == vocab
    assert (tmp_path / "out-shakespeare-char" / "metrics.jsonl").is_file()
