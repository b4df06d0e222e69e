"""The command line explains itself and takes what users type: every key in --help, - or _ in every flag,
every boolean spelling, numbers checked at the edge, one line for every mistake."""

from __future__ import annotations

import pytest

from gptforge.cli import _unescape, build_parser, main, parse_command_line
from gptforge.config import KEY_OWNERS, load_config
from gptforge.data.manifest import load_manifest


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", ["train", "plan", "bench"])
def test_help_lists_every_config_key(capsys, command):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("  ") and line.split()}
    assert set(KEY_OWNERS) <= listed, sorted(set(KEY_OWNERS) - listed)
    for group in ("model:", "optimizer:", "schedule:", "training:", "data:", "logging:"):
        assert f"\n{group}\n" in out
    assert "[CONFIG.toml|nanoGPT.py] [--key=value ...]" in out
    assert "learning_rate           float 0.0006    peak AdamW learning rate; [0, 10]" in out


# every flag of every command, as a user may type it: the underscore spelling must parse like the dashed one
EVERY_FLAG = {
    "prepare": ["s.txt", "--out", "d", "--tokenizer", "char", "--val-fraction", "0.1", "--split", "tail",
                "--shard-tokens", "1000", "--min-chars", "3", "--workers", "2", "--keep-partial",
                "--text-column", "body", "--doc-separator", "§", "--part", "books"],
    "download": ["fineweb10B", "--out", "d", "--shards", "2", "--start", "1", "--workers", "3", "--mirror", "http://m"],
    "bench": ["c.toml", "--steps", "3", "--warmup", "1"],
    "plan": ["c.toml", "--data", "d", "--gpu", "H100", "--vocab-size", "100", "--mfu", "0.4", "--processes", "8"],
    "sample": ["r", "--prompt", "Hi", "--num-samples", "2", "--max-new-tokens", "5", "--temperature", "0.5",
               "--top-k", "5", "--top-p", "0.9", "--seed", "3", "--device", "cpu", "--step", "4"],
    "eval": ["r", "--data", "d", "--batches", "2", "--device", "cpu", "--hellaswag", "h.jsonl", "--limit", "5",
             "--step", "4"],
    "diagnose": ["r", "--data", "d", "--config", "c.py", "--gpu", "A100", "--out", "o"],
    "plot": ["r", "--out", "x.png", "--log", "--reference", "llmc-gpt2-124m-fineweb"],
    "inspect": ["d"],
    "export": ["r", "--format", "hf", "--out", "o", "--push-to-hub", "me/m", "--private"],
    "import-nanogpt": ["ckpt.pt", "--out", "o", "--data", "d"],
    "demo": ["--out", "o", "--seconds", "10"],
    "train": ["c.toml"],
}


def test_every_flag_of_every_command_takes_dashes_or_underscores():
    parser = build_parser()
    assert set(EVERY_FLAG) | {"tokenizer"} == set(parser.commands)
    for command, args in EVERY_FLAG.items():
        flags = {a for a in args if a.startswith("--")}
        assert flags == parser.commands[command].flags - {"-h", "--help"}, command  # the list covers them all
        dashed = vars(parse_command_line(parser, [command, *args]))
        underscored = ["--" + a[2:].replace("-", "_") if a.startswith("--") else a for a in args]
        assert vars(parse_command_line(parser, [command, *underscored])) == dashed, command
    tok = ["tokenizer", "train", "s.txt", "--vocab_size", "300", "--out", "t", "--max_chars", "10",
           "--text_column", "x", "--doc_separator", "|"]
    args = parse_command_line(parser, tok)
    assert (args.vocab_size, args.max_chars, args.text_column, args.doc_separator) == (300, 10, "x", "|")


@pytest.mark.parametrize("spelling, expected", [("--log", True), ("--log=true", True), ("--log=True", True),
                                                ("--log=1", True), ("--log=false", False), ("--log=False", False),
                                                ("--log=0", False)])
def test_switches_take_every_boolean_spelling(spelling, expected):
    assert parse_command_line(build_parser(), ["plot", "r", "--out", "x.png", spelling]).log is expected
    args = parse_command_line(build_parser(), ["prepare", "s", "--out", "d", spelling.replace("log", "keep_partial")])
    assert args.keep_partial is expected


def test_config_overrides_with_or_without_a_config_file(tmp_path):
    parser = build_parser()
    args = parse_command_line(parser, ["train", "--sample_prompts=Hello world|To be", "--compile=False",
                                       "--max-iters", "5", "--bias"])
    assert args.config is None
    cfg = load_config(args.config, args.overrides)
    assert cfg.train.sample_prompts == ["Hello world", "To be"] and cfg.train.compile == "false"
    assert cfg.train.max_iters == 5 and cfg.model.bias is True
    args = parse_command_line(parser, ["train", "--compile", "false", "c.toml", "--bias", "--n_layer", "3"])
    assert args.config == "c.toml" and args.overrides == ["--compile", "false", "--bias", "--n-layer", "3"]
    toml = tmp_path / "c.toml"
    toml.write_text("n_layer = 2\n")
    args = parse_command_line(parser, ["plan", "--gpu", "RTX 4070", "--sample_prompts=a b", str(toml), "--n-head=2",
                                       "--processes=2"])
    assert (args.config, args.gpu, args.processes) == (str(toml), "RTX 4070", 2)
    cfg = load_config(args.config, args.overrides)
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.train.sample_prompts) == (2, 2, ["a b"])


@pytest.mark.parametrize("args, message", [
    (["prepare", "s.txt", "--out", "{tmp}/d", "--workers", "-1"], "--workers must be in [1, 1024], got -1"),
    (["prepare", "s.txt", "--out", "{tmp}/d", "--val-fraction", "1"], "--val-fraction must be in [0, 1), got 1.0"),
    (["prepare", "s.txt", "--out", "{tmp}/d", "--val_fraction", "nan"], "--val-fraction must be a finite number"),
    (["prepare", "s.txt", "--out", "{tmp}/d", "--shard-tokens", "3e9"], "--shard-tokens must be in [1, 2^31)"),
    (["prepare", "s.txt", "--out", "{tmp}/d", "--min-chars", "-1"], "--min-chars must be at least 0, got -1"),
    (["prepare", "s.txt", "--out", "{tmp}/d", "--workers", "two"], "--workers: 'two' is not a valid int"),
    (["tokenizer", "train", "s.txt", "--out", "{tmp}/t", "--vocab-size", "0"], "--vocab-size must be in [1, 2^32]"),
    (["download", "fineweb10B", "--out", "{tmp}/d", "--shards", "0"], "--shards must be in [1, 1000000], got 0"),
    (["download", "fineweb10B", "--out", "{tmp}/d", "--shards", "1", "--workers", "0"], "--workers must be in"),
    (["download", "fineweb10B", "--out", "{tmp}/d", "--shards", "1", "--start", "-2"], "--start must be at least 0"),
    (["sample", "{tmp}/r", "--temperature", "nan"], "--temperature must be a finite number, got nan"),
    (["sample", "{tmp}/r", "--temperature", "inf"], "--temperature must be a finite number, got inf"),
    (["sample", "{tmp}/r", "--top-k", "-1"], "--top-k must be at least 0, got -1"),
    (["sample", "{tmp}/r", "--top_p", "1.5"], "--top-p must be in (0, 1], got 1.5"),
    (["sample", "{tmp}/r", "--seed", "-1"], "--seed must be in [0, 2^63), got -1"),
    (["sample", "{tmp}/r", "--max-new-tokens", "0"], "--max-new-tokens must be at least 1, got 0"),
    (["eval", "{tmp}/r", "--batches", "0"], "--batches must be at least 1, got 0"),
    (["plan", "--mfu", "0"], "--mfu 0: give a fraction between 0 and 1 (e.g. 0.4 for 40%)"),
    (["plan", "--mfu", "nan"], "--mfu 'nan': give a fraction (0.4), a percentage (40%) or a figure against"),
    (["plan", "--processes", "0"], "--processes must be in [1, 1000000], got 0"),
    (["plan", "--vocab-size", "-3"], "--vocab-size must be in [1, 2^32], got -3"),
    (["bench", "--steps", "0"], "--steps must be in [1, 1000000], got 0"),
    (["demo", "--out", "{tmp}/demo", "--seconds", "nan"], "--seconds must be a finite number, got nan"),
    (["demo", "--out", "{tmp}/demo", "--seconds", "-5"], "--seconds must be in (0, 1e6], got -5.0"),
    (["train", "--min_lr=nan"], "config key 'min_lr' must be a finite number, got nan"),
    (["train", "--beta1=2"], "config key 'beta1' must be in [0, 1), got 2.0"),
    (["train", "--seed=-1"], "config key 'seed' must be in [0, 2^63), got -1"),
    (["train", "--max_iters=-5"], "config key 'max_iters' must be in [0, 1e12], got -5"),
    (["train", "--batch_size=12345678901234567890"], "config key 'batch_size' must be in [1, 65536]"),
    (["train", "{tmp}/missing.toml", "--n_layerz=2"], "unknown config key 'n_layerz' in the command line"),
    (["train", "--n_layer"], "config key 'n_layer' needs a value: --n_layer=VALUE"),
    (["plot", "r", "--out", "{tmp}/x.png", "--log=maybe"], "--log: 'maybe' is not one of true, false, 1, 0"),
])
def test_bad_numbers_and_values_are_one_line_errors(tmp_path, capsys, args, message):
    code, out, err = run(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert code == 1 and out == ""
    command = args[0]
    assert err.startswith(f"gptforge {command}: error: {message}") and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []  # nothing was written


@pytest.mark.parametrize("args, message", [
    (["sample", "r", "--bogus"],
     "gptforge sample: error: unrecognized arguments: --bogus (see gptforge sample --help)"),
    (["prepare", "s.txt"], "gptforge prepare: error: the following arguments are required: --out"),
    (["trian"], "gptforge: error: argument COMMAND: invalid choice: 'trian'"),
])
def test_usage_errors_are_one_line_with_exit_2(capsys, args, message):
    code, out, err = run(capsys, *args)
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err


def test_doc_separator_is_taken_as_given_except_newline_and_tab():
    assert _unescape(r"\n\n") == "\n\n" and _unescape(r"a\tb") == "a\tb"
    assert _unescape(r"\x") == r"\x"  # unicode_escape raised on this
    assert _unescape("§") == "§"  # ... and garbled this into 'Â§'
    assert _unescape(r"\u00e9 \\ \r") == r"\u00e9 \\ \r"
    assert _unescape("===") == "===" and _unescape(None) is None


def test_prepare_splits_on_a_unicode_separator(tmp_path, capsys):
    src = tmp_path / "book.txt"
    src.write_text("one\n§\ntwo\\xmore\n§\nthree", encoding="utf-8")
    code, out, err = run(capsys, "prepare", src, "--out", tmp_path / "d", "--tokenizer", "char", "--doc_separator",
                         "\n§\n", "--val-fraction", "0")
    assert code == 0, err
    assert load_manifest(tmp_path / "d")["totals"]["documents"] == 3
    code, out, err = run(capsys, "prepare", src, "--out", tmp_path / "e", "--tokenizer", "char", "--doc-separator",
                         r"\x")
    assert code == 0, err
    assert load_manifest(tmp_path / "e")["totals"]["documents"] == 2  # split on the two characters \ and x


def test_export_to_an_unwritable_place_is_one_line(tiny_run, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, out, err = run(capsys, "export", tiny_run, "--out", blocker / "hf")
    assert code == 1 and err == f"gptforge export: error: --out {blocker / 'hf'}: {blocker} is not a directory\n"
    code, out, err = run(capsys, "export", tiny_run, "--out", "/proc/gptforge_export_test")
    assert code == 1 and err.startswith("gptforge export: error: --out /proc/gptforge_export_test: cannot write in ")
    assert err.count("\n") == 1
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o500)
    try:
        code, out, err = run(capsys, "export", tiny_run, "--out", readonly / "hf")
        writable = code == 0  # root writes anywhere; everyone else gets the one line
        assert writable or err == f"gptforge export: error: --out {readonly / 'hf'}: cannot write in {readonly} " \
                                  "(Permission denied)\n"
    finally:
        readonly.chmod(0o700)


class _LoadingInterrupted:
    """Stands in for gptforge.cli while it is still being imported when Ctrl-C arrives."""

    def __getattr__(self, name):
        raise KeyboardInterrupt


@pytest.mark.parametrize("argv, line", [(["gptforge", "prepare", "x.txt"], "gptforge prepare: interrupted"),
                                        (["gptforge"], "gptforge: interrupted")])
def test_ctrl_c_while_the_modules_load_is_the_interrupted_line_and_exit_130(monkeypatch, capsys, argv, line):
    """Before: a Ctrl-C in the first ~second of a command (torch importing) printed a KeyboardInterrupt traceback."""
    import sys

    from gptforge import entry

    monkeypatch.setitem(sys.modules, "gptforge.cli", _LoadingInterrupted())
    monkeypatch.setattr(sys, "argv", argv)
    assert entry.main() == 130
    assert capsys.readouterr().err == line + "\n"
