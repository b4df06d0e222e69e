"""The `gptforge` command: parse the arguments (one spelling rule and one error line for every command), call one
function, print. No command logic lives here."""

from __future__ import annotations

import argparse
import errno
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from gptforge.config import BOOL_WORDS, Range, check_number, config_help, to_int, value_follows
from gptforge.errors import UserError


def _prepare(a):
    from gptforge.data.prepare import prepare

    prepare(a.sources, a.out, tokenizer=a.tokenizer, val_fraction=a.val_fraction, split=a.split,
            shard_tokens=a.shard_tokens, min_chars=a.min_chars, workers=a.workers, options=_source_options(a),
            part=a.part)


def _tokenizer_train(a):
    from gptforge.data.prepare import train_tokenizer

    specials = [t.strip() for t in a.special_tokens.split(",")] if a.special_tokens else []
    train_tokenizer(a.sources, a.out, vocab_size=a.vocab_size, max_chars=a.max_chars, options=_source_options(a),
                    pattern=a.pattern, special_tokens=specials)


def _download(a):
    from gptforge.data.download import download

    download(a.name, a.out, shards=a.shards, workers=a.workers, mirror=a.mirror, start=a.start)


def _train(a):
    from gptforge.commands.configs import load_any_config
    from gptforge.commands.train import exit_code, train_command

    return exit_code(train_command(load_any_config(a.config, a.overrides)))


def _sample(a):
    from gptforge.commands.sample import sample_command

    sample_command(a.run_dir, prompt=a.prompt, num_samples=a.num_samples, max_new_tokens=a.max_new_tokens,
                   temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, seed=a.seed, device=a.device, step=a.step)


def _eval(a):
    from gptforge.analysis.evaluate import eval_command

    eval_command(a.run_dir, data=a.data, device=a.device, max_batches=a.batches, hellaswag_file=a.hellaswag,
                 limit=a.limit, step=a.step)


def _diagnose(a):
    from gptforge.commands.runs import diagnose_command

    diagnose_command(a.run_dir, data=a.data, config=a.config, gpu=a.gpu, out=a.out)


def _plan(a):
    from gptforge.analysis.plan.report import plan_command
    from gptforge.commands.configs import load_any_config

    plan_command(load_any_config(a.config, a.overrides), data=a.data, gpu=a.gpu, vocab_size=a.vocab_size,
                 mfu=a.mfu, processes=a.processes, config_path=a.config)


def _plot(a):
    from gptforge.commands.runs import plot_command

    plot_command(a.run_dirs, a.out, log_scale=a.log, reference_names=tuple(a.reference or ()))


def _inspect(a):
    from gptforge.commands.inspection import inspect_command

    return inspect_command(a.path)


def _export(a):
    from gptforge.interop.export import export_command

    export_command(a.run_dir, fmt=a.format, out=a.out, push_to_hub=a.push_to_hub, private=a.private)


def _import_nanogpt(a):
    from gptforge.interop.nanogpt import import_nanogpt_command

    import_nanogpt_command(a.checkpoint, a.out, data=a.data)


def _bench(a):
    from gptforge.analysis.bench import bench_command
    from gptforge.commands.configs import load_any_config

    bench_command(load_any_config(a.config, a.overrides), steps=a.steps, warmup=a.warmup)


def _demo(a):
    from gptforge.commands.demo import run_demo

    run_demo(out=a.out, seconds=a.seconds)


def _unescape(text: str | None) -> str | None:
    """The text as given, with only `\\n` and `\\t` read as newline and tab (so a shell user can type '\\n\\n')."""
    return re.sub(r"\\[nt]", lambda m: "\n" if m.group() == "\\n" else "\t", text) if text else text


def _source_options(a):
    from gptforge.data.sources import SourceOptions

    return SourceOptions(text_column=a.text_column, doc_separator=_unescape(a.doc_separator),
                         keep_partial=getattr(a, "keep_partial", False))


CONFIG_COMMANDS = ("train", "bench", "plan")
PATH_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EISDIR,
               errno.ENAMETOOLONG}


class UsageError(UserError):
    """A command line argparse cannot parse: exit 2, as argparse's own errors."""


class _Parser(argparse.ArgumentParser):
    """Errors in one line; remembers its flags and switches (boolean flags) for the spellings main() accepts."""

    def __init__(self, *args, **kwargs):
        self.flags, self.switches = set(), set()  # before super(): it adds --help through add_argument
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        self.flags.update(action.option_strings)
        if kwargs.get("action") == "store_true":
            self.switches.update(action.option_strings)
        return action

    def error(self, message):  # main() prints it as one line instead of argparse's usage block
        raise UsageError(f"{message} (see {self.prog} --help)")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action):  # the hook ArgumentDefaultsHelpFormatter uses; this one skips None
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, "", argparse.SUPPRESS):
            text += f" (default: {action.default})"
        return text


def _number(p, flag: str, kind: type, allowed: str, help_text: str = "", **kwargs) -> None:
    """A numeric flag whose value must lie in `allowed` (e.g. "[1, inf)"), else one line naming the flag."""

    def parse(text: str):
        try:
            value = to_int(text) if kind is int else float(text)
        except (ValueError, OverflowError):
            raise UserError(f"{flag}: {text!r} is not a valid {kind.__name__}") from None
        check_number(flag, value, Range(allowed), integer=kind is int)
        return value

    kwargs.setdefault("metavar", "N" if kind is int else "X")
    p.add_argument(flag, type=parse, help=f"{help_text}; {allowed}" if help_text else allowed, **kwargs)


def _add_source_flags(p) -> None:
    p.add_argument("--text-column", default="text", help="parquet column / jsonl field with the text")
    p.add_argument("--doc-separator", default=None,
                   help=r"split .txt files into documents on this text (default: <|endoftext|>), taken as given "
                        r"except \n and \t, e.g. '\n\n\n'")


def _add_config_command(sub, name: str, func, help_text: str, add_flags=None):
    width = min(max(shutil.get_terminal_size(fallback=(100, 24)).columns, 80), 120) - 2
    p = sub.add_parser(name, help=help_text, description=f"{help_text}. Config keys as --key=value (listed below), "
                       "after or instead of a TOML file.", epilog=config_help(width))
    p.add_argument("config", nargs="?", default=None, metavar="CONFIG.toml|nanoGPT.py",
                   help="a TOML file of config keys, or a nanoGPT config .py (read, never executed)")
    if add_flags:
        add_flags(p)
    p.usage = p.format_usage().removeprefix("usage: ").strip() + " [--key=value ...]"
    p.set_defaults(func=func)


def _bench_flags(p) -> None:
    _number(p, "--steps", int, "[1, 1000000]", "timed steps", default=20)
    _number(p, "--warmup", int, "[0, 1000000]", "untimed steps first (compilation, allocator)", default=5)


def _plan_flags(p) -> None:
    p.add_argument("--data", default=None, metavar="DATA_DIR", help="the dataset (default: the config's data)")
    p.add_argument("--gpu", default=None, help="e.g. 'RTX 4070', 'H100'")
    _number(p, "--vocab-size", int, "[1, 2^32]", "vocabulary size when there is no dataset")
    p.add_argument("--mfu", default=None, help="assumed MFU for the time estimate: 0.4, 40%%, or what nanoGPT "
                   "printed, e.g. 10%%@A100 (nanoGPT measures against an A100 whatever the GPU)")
    _number(p, "--processes", int, "[1, 1000000]", "GPUs the run will use", default=1)


def _add_data_commands(sub) -> None:
    """prepare, tokenizer train, download: from files to a dataset."""
    p = sub.add_parser("prepare", help="tokenize sources into shards + manifest (appends to an existing DATA_DIR)")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="files, directories or globs: .parquet .txt .md .jsonl .json .xml[.bz2], wikiextractor's "
                        "wiki_NN; text, jsonl and wiki_NN also as .gz .bz2 .zst")
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="the dataset directory (created or appended to)")
    p.add_argument("--tokenizer", default=None, help="gpt2 (default), char, or a directory from `tokenizer train`")
    _number(p, "--val-fraction", float, "[0, 1)",
            "share of documents (or of the stream, with --split tail) for validation (default: 0.01)")
    p.add_argument("--split", choices=["hash", "tail"], default=None,
                   help="hash: per document (default); tail: the end of the stream")
    _number(p, "--shard-tokens", int, "[1, 2^31)", "tokens per shard", default=100_000_000)
    _number(p, "--min-chars", int, "[0, inf)", "drop documents shorter than this", default=0)
    _number(p, "--workers", int, "[1, 1024]", "tokenizer threads (default: all cores)")
    p.add_argument("--keep-partial", action="store_true", help="keep the articles read before a corrupt part of a dump")
    p.add_argument("--part", default=None, metavar="NAME",
                   help="name of the dataset part this run adds, for val loss per part (default: from the sources)")
    _add_source_flags(p)
    p.set_defaults(func=_prepare)

    p = sub.add_parser("tokenizer", help="tokenizer tools")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    t = tsub.add_parser("train", help="train a byte-level BPE on your sources")
    t.add_argument("sources", nargs="+", metavar="SOURCE", help="files, directories or globs")
    _number(t, "--vocab-size", int, "[1, 2^32]", "tokens in the vocabulary", required=True)
    t.add_argument("--out", required=True, metavar="TOK_DIR", help="where the tokenizer is written")
    _number(t, "--max-chars", int, "[1, inf)", "train on at most this many characters", default=2_000_000_000)
    t.add_argument("--pattern", choices=["gpt2", "gpt4", "nanochat"], default="gpt2",
                   help="how text is split before BPE: GPT-2's regex, GPT-4's (cl100k), or nanochat's (GPT-4's "
                        "with numbers in runs of at most 2 digits)")
    t.add_argument("--special-tokens", default="", metavar="TOK,TOK,...",
                   help="extra special tokens after <|endoftext|> (id 0), e.g. '<|bos|>,<|user_start|>,<|user_end|>'")
    _add_source_flags(t)
    t.set_defaults(func=_tokenizer_train)

    p = sub.add_parser("download", help="download dataset shards or the HellaSwag val set (resumable, verified)")
    p.add_argument("name", metavar="NAME|URL_TEMPLATE|hf://datasets/OWNER/REPO[@REV]/GLOB",
                   help="a known dataset name, a URL with {index}, an hf:// glob, or hellaswag")
    p.add_argument("--out", default=None, metavar="DIR", help="where the files are written (hellaswag: the cache)")
    _number(p, "--shards", int, "[1, 1000000]",
            "train shards to fetch (required but for hellaswag and hf:// URLs, which default to every match)")
    _number(p, "--start", int, "[0, inf)", "first shard index (hf://: first match to take)", default=0)
    _number(p, "--workers", int, "[1, 64]", "parallel downloads", default=4)
    p.add_argument("--mirror", default=None, help="base URL replacing the dataset's host (e.g. an HF mirror); "
                   "without it, named datasets and hf:// use huggingface_hub, which follows HF_ENDPOINT")
    p.set_defaults(func=_download)


def _checkpoint_flags(p) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, or one of its checkpoints/step_N")
    _number(p, "--step", int, "[0, inf)", "the checkpoint of this step (default: the latest complete one)")


def _add_run_commands(sub) -> None:
    """sample, eval, diagnose, plot, inspect, export, import-nanogpt, demo: what reads or makes runs."""
    p = sub.add_parser("sample", help="generate text from a run")
    _checkpoint_flags(p)
    p.add_argument("--prompt", default="", help="text, or FILE:path")
    _number(p, "--num-samples", int, "[1, inf)", "samples to generate", default=1)
    _number(p, "--max-new-tokens", int, "[1, inf)", "tokens per sample", default=200)
    _number(p, "--temperature", float, "[0, inf)", "0 = greedy", default=0.8)
    _number(p, "--top-k", int, "[0, inf)", "sample among the k likeliest tokens; 0 = all", default=200)
    _number(p, "--top-p", float, "(0, 1]", "nucleus sampling; 1 = off", default=1.0)
    _number(p, "--seed", int, "[0, 2^63)", "random seed", default=1337)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=_sample)

    p = sub.add_parser("eval", help="val loss, perplexity and bits per byte of a run, or its HellaSwag score")
    _checkpoint_flags(p)
    p.add_argument("--data", default=None, metavar="DATA_DIR", help="the dataset (default: the run's)")
    _number(p, "--batches", int, "[1, inf)", "evaluate at most this many batches (default: the whole val split)")
    p.add_argument("--hellaswag", nargs="?", const="", default=None, metavar="FILE",
                   help="score HellaSwag instead (default file: the one `gptforge download hellaswag` fetched)")
    _number(p, "--limit", int, "[1, inf)", "--hellaswag: score only the first N items")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(func=_eval)

    p = sub.add_parser("diagnose", help="what the run is doing and what to change")
    p.add_argument("run_dir", metavar="RUN_DIR|nanoGPT.log", help="a run directory, or nanoGPT train.py's console log")
    p.add_argument("--data", default=None, metavar="DATA_DIR", help="the dataset (default: the run's)")
    p.add_argument("--config", default=None, metavar="CONFIG.py", help="a nanoGPT log's config, if it does not echo it")
    p.add_argument("--gpu", default=None, help="the GPU a nanoGPT log ran on, for MFU against its real peak")
    p.add_argument("--out", default=None, metavar="DIR", help="where to write the report (default: beside the run)")
    p.set_defaults(func=_diagnose)

    p = sub.add_parser("plot", help="loss curves of one or more runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR|nanoGPT.log", help="run directories or nanoGPT logs")
    p.add_argument("--out", required=True, metavar="FILE.png", help="the image written")
    p.add_argument("--log", action="store_true", help="log scale for the loss axis")
    p.add_argument("--reference", action="append", metavar="NAME",
                   help="overlay a published run (repeatable): its val loss on the loss-vs-tokens panel, a "
                        "HellaSwag score on the HellaSwag panel; an unknown NAME lists the known ones")
    p.set_defaults(func=_plot)

    p = sub.add_parser("inspect", help="summarise and verify a DATA_DIR, RUN_DIR, shard folder or shard")
    p.add_argument("path", metavar="DATA_DIR|RUN_DIR", help="what to inspect")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("export", help="export a run for other tools")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory")
    p.add_argument("--format", default="hf", choices=["hf"],
                   help="hf: a transformers model directory (GPT2LMHeadModel, or its own code for the modern arch)")
    p.add_argument("--out", required=True, metavar="DIR", help="the directory written (absent or empty)")
    p.add_argument("--push-to-hub", default=None, metavar="OWNER/NAME",
                   help="then upload DIR to this Hub model repository (created if missing; HF_TOKEN or hf auth login)")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repository private")
    p.set_defaults(func=_export)

    p = sub.add_parser("import-nanogpt", help="turn a nanoGPT ckpt.pt into a gptforge run")
    p.add_argument("checkpoint", metavar="ckpt.pt", help="nanoGPT's checkpoint file")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="the run directory written")
    p.add_argument("--data", default=None, metavar="DATA_DIR", help="the data folder the checkpoint was trained on")
    p.set_defaults(func=_import_nanogpt)

    p = sub.add_parser("demo", help="the whole pipeline offline on Shakespeare's plays, on CPU, in minutes")
    p.add_argument("--out", default="runs/demo", metavar="DIR", help="where the demo writes")
    _number(p, "--seconds", float, "(0, 1e6]", "training time budget")
    p.set_defaults(func=_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gptforge", description="From raw text to a trained GPT, and what the run is doing.",
                     epilog="Every flag takes - or _ in its name (--max-new-tokens or --max_new_tokens); "
                            "boolean flags take true/false/1/0. `gptforge COMMAND --help` explains a command.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_data_commands(sub)
    _add_config_command(sub, "train", _train, "train a GPT")
    _add_config_command(sub, "bench", _bench, "measure training throughput on synthetic tokens", _bench_flags)
    _add_config_command(sub, "plan", _plan, "size a run before starting it", _plan_flags)
    _add_run_commands(sub)
    parser.commands = sub.choices
    return parser


def _spelled(argv: list[str]) -> list[str]:
    """`--max_new_tokens=5` -> `--max-new-tokens=5`: flags are declared with dashes and either spelling works."""
    out = list(argv)
    for i, token in enumerate(out):
        if token == "--":
            break
        if token.startswith("--"):
            name, sep, value = token.partition("=")
            out[i] = name.replace("_", "-") + sep + value
    return out


def _split_overrides(sub: _Parser, tokens: list[str]) -> tuple[list[str], list[str]]:
    """A config command's own arguments, and its config overrides (--key=value, --key value, --flag).

    Done here, not by argparse, which takes an unknown `--key=a b` (a space in it) for a positional."""
    own, overrides = [], []
    rest = list(tokens)
    while rest:
        token = rest.pop(0)
        name = token.partition("=")[0]
        if token == "--" or not token.startswith("--") or name in sub.flags:
            own.append(token)
            continue
        overrides.append(token)
        if "=" not in token and value_follows(name[2:].replace("-", "_"), rest[0] if rest else None):
            overrides.append(rest.pop(0))  # --key value
    return own, overrides


def _switch_values(sub: _Parser, tokens: list[str]) -> list[str]:
    """`--log=false` -> nothing, `--log=True` -> `--log`: a switch takes any boolean spelling."""
    out = []
    for token in tokens:
        name, sep, value = token.partition("=")
        if not sep or name not in sub.switches:
            out.append(token)
        elif value.strip().lower() not in BOOL_WORDS:
            raise UserError(f"{name}: {value!r} is not one of true, false, 1, 0")
        elif BOOL_WORDS[value.strip().lower()]:
            out.append(name)
    return out


def parse_command_line(parser: _Parser, argv: list[str]) -> argparse.Namespace:
    argv = _spelled(argv)
    command = argv[0] if argv else None
    if command not in parser.commands:
        return parser.parse_args(argv)
    sub = parser.commands[command]
    own, overrides = _split_overrides(sub, argv[1:]) if command in CONFIG_COMMANDS else (argv[1:], [])
    args = sub.parse_args(_switch_values(sub, own))  # the subcommand's parser: its errors name it
    args.command, args.overrides = command, overrides
    return args


def _check_out(path: str) -> None:
    """An --out that cannot be written fails now, in one line, rather than after the work."""
    target = Path(path).absolute()
    existing = next(p for p in [target, *target.parents] if p.exists())
    if existing != target and not existing.is_dir():
        raise UserError(f"--out {path}: {existing} is not a directory")
    if existing.is_dir():
        try:  # a real write: permissions alone say nothing for root or a read-only filesystem
            with tempfile.TemporaryFile(dir=existing):
                pass
        except OSError as e:
            raise UserError(f"--out {path}: cannot write in {existing} ({e.strerror})") from None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    name = f"gptforge {argv[0]}" if argv and argv[0] in parser.commands else "gptforge"
    try:
        args = parse_command_line(parser, argv)
        if isinstance(getattr(args, "out", None), str):
            _check_out(args.out)
        code = args.func(args)
    except UsageError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    except UserError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gptforge sample ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # the machine refused a path (permissions, read-only, full): one line, not a traceback
        if e.filename is None or e.errno not in PATH_ERRNOS:
            raise
        print(f"{name}: error: {e.filename}: {e.strerror}", file=sys.stderr)
        return 1
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
