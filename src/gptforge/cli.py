"""The `gptforge` command: parse arguments, call one function, print. No logic lives here."""

from __future__ import annotations

import argparse
import os
import sys

from gptforge.errors import UserError


def _prepare(a):
    from gptforge.data.prepare import prepare
    from gptforge.data.sources import SourceOptions

    options = SourceOptions(
        text_column=a.text_column, doc_separator=_unescape(a.doc_separator), keep_partial=a.keep_partial
    )
    prepare(a.sources, a.out, tokenizer=a.tokenizer, val_fraction=a.val_fraction, split=a.split,
            shard_tokens=a.shard_tokens, min_chars=a.min_chars, workers=a.workers, options=options, part=a.part)


def _tokenizer_train(a):
    from gptforge.data.prepare import train_tokenizer

    train_tokenizer(a.sources, a.out, vocab_size=a.vocab_size, max_chars=a.max_chars, options=_source_options(a))


def _download(a):
    from gptforge.data.download import download

    download(a.name, a.out, shards=a.shards, workers=a.workers, mirror=a.mirror, start=a.start)


def _train(a):
    from gptforge.commands.train import train_command
    from gptforge.config import load_config

    train_command(load_config(a.config, a.overrides))


def _sample(a):
    from gptforge.commands.sample import sample_command

    sample_command(a.run_dir, prompt=a.prompt, num_samples=a.num_samples, max_new_tokens=a.max_new_tokens,
                   temperature=a.temperature, top_k=a.top_k, top_p=a.top_p, seed=a.seed, device=a.device)


def _eval(a):
    from gptforge.analysis.evaluate import eval_command

    eval_command(a.run_dir, data=a.data, device=a.device, max_batches=a.batches)


def _diagnose(a):
    from gptforge.analysis.diagnose.report import diagnose_command

    diagnose_command(a.run_dir, data=a.data)


def _plan(a):
    from gptforge.analysis.plan.report import plan_command
    from gptforge.config import load_config

    plan_command(load_config(a.config, a.overrides), data=a.data, gpu=a.gpu, vocab_size=a.vocab_size,
                 mfu=a.mfu, processes=a.processes, config_path=a.config)


def _plot(a):
    from gptforge.analysis.plot import plot_command

    plot_command(a.run_dirs, a.out, log_scale=a.log)


def _inspect(a):
    from gptforge.commands.inspection import inspect_command

    return inspect_command(a.path)


def _export(a):
    from gptforge.interop.export import export_command

    export_command(a.run_dir, fmt=a.format, out=a.out)


def _import_nanogpt(a):
    from gptforge.interop.nanogpt import import_nanogpt_command

    import_nanogpt_command(a.checkpoint, a.out, data=a.data)


def _bench(a):
    from gptforge.analysis.bench import bench_command
    from gptforge.config import load_config

    bench_command(load_config(a.config, a.overrides), steps=a.steps, warmup=a.warmup)


def _demo(a):
    from gptforge.commands.demo import run_demo

    run_demo(out=a.out, seconds=a.seconds)


def _unescape(text: str | None) -> str | None:
    # lets users type --doc-separator '\n\n' in a shell
    return text.encode().decode("unicode_escape") if text else text


def _source_options(a):
    from gptforge.data.sources import SourceOptions

    return SourceOptions(text_column=a.text_column, doc_separator=_unescape(a.doc_separator),
                         keep_partial=getattr(a, "keep_partial", False))


def _add_source_flags(p) -> None:
    p.add_argument("--text-column", default="text", help="parquet column / jsonl field with the text (default: text)")
    p.add_argument(
        "--doc-separator", default=None, help=r"split .txt files into documents on this string, e.g. '\n\n\n'"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gptforge", description="From raw text to a trained GPT, and what the run is doing."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", help="tokenize sources into shards + manifest (appends to an existing DATA_DIR)")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="files, directories or globs: .parquet .txt .md .jsonl .xml[.bz2]")
    p.add_argument("--out", required=True, metavar="DATA_DIR")
    p.add_argument("--tokenizer", default=None, help="gpt2 (default), char, or a directory from `tokenizer train`")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="share of documents (or of the stream, with --split tail) for validation")
    p.add_argument("--split", choices=["hash", "tail"], default=None,
                   help="hash: per document (default); tail: the end of the stream")
    p.add_argument("--shard-tokens", type=int, default=100_000_000)
    p.add_argument("--min-chars", type=int, default=0, help="drop documents shorter than this")
    p.add_argument("--workers", type=int, default=None, help="tokenizer threads (default: all cores)")
    p.add_argument("--keep-partial", action="store_true", help="keep the articles read before a corrupt part of a dump")
    p.add_argument("--part", default=None, metavar="NAME",
                   help="name of the dataset part this run adds, for val loss per part (default: from the sources)")
    _add_source_flags(p)
    p.set_defaults(func=_prepare)

    p = sub.add_parser("tokenizer", help="tokenizer tools")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    t = tsub.add_parser("train", help="train a byte-level BPE on your sources")
    t.add_argument("sources", nargs="+", metavar="SOURCE")
    t.add_argument("--vocab-size", type=int, required=True)
    t.add_argument("--out", required=True, metavar="TOK_DIR")
    t.add_argument("--max-chars", type=int, default=2_000_000_000, help="train on at most this many characters")
    _add_source_flags(t)
    t.set_defaults(func=_tokenizer_train)

    p = sub.add_parser("download", help="download dataset shards (parallel, resumable, verified)")
    p.add_argument("name", metavar="NAME|URL_TEMPLATE")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--shards", type=int, required=True)
    p.add_argument("--start", type=int, default=0, help="first shard index")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--mirror", default=None, help="base URL replacing the dataset's host (e.g. an HF mirror)")
    p.set_defaults(func=_download)

    for name, func, help_text in (("train", _train, "train a GPT (config keys as --key=value)"),
                                  ("bench", _bench, "measure training throughput on synthetic tokens"),
                                  ("plan", _plan, "size a run before starting it")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("config", nargs="?", default=None, metavar="CONFIG.toml")
        if name == "plan":
            p.add_argument("--data", default=None, metavar="DATA_DIR")
            p.add_argument("--gpu", default=None, help="e.g. 'RTX 4070', 'H100'")
            p.add_argument("--vocab-size", type=int, default=None)
            p.add_argument("--mfu", type=float, default=None, help="assumed MFU for the time estimate")
            p.add_argument("--processes", type=int, default=1, help="GPUs the run will use")
        if name == "bench":
            p.add_argument("--steps", type=int, default=20)
            p.add_argument("--warmup", type=int, default=5)
        p.set_defaults(func=func)

    p = sub.add_parser("sample", help="generate text from a run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--prompt", default="", help="text, or FILE:path")
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=200)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_sample)

    p = sub.add_parser("eval", help="val loss, perplexity and bits per byte of a run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", default=None, metavar="DATA_DIR")
    p.add_argument("--batches", type=int, default=None,
                   help="evaluate at most this many batches (default: the whole val split)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_eval)

    p = sub.add_parser("diagnose", help="what the run is doing and what to change")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", default=None, metavar="DATA_DIR")
    p.set_defaults(func=_diagnose)

    p = sub.add_parser("plot", help="loss curves of one or more runs")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, metavar="FILE.png")
    p.add_argument("--log", action="store_true", help="log scale for the loss axis")
    p.set_defaults(func=_plot)

    p = sub.add_parser("inspect", help="summarise and verify a DATA_DIR or RUN_DIR")
    p.add_argument("path", metavar="DATA_DIR|RUN_DIR")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("export", help="export a run for other tools")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--format", default="hf", choices=["hf"])
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=_export)

    p = sub.add_parser("import-nanogpt", help="turn a nanoGPT ckpt.pt into a gptforge run")
    p.add_argument("checkpoint", metavar="ckpt.pt")
    p.add_argument("--out", required=True, metavar="RUN_DIR")
    p.add_argument("--data", default=None, metavar="DATA_DIR", help="the data folder the checkpoint was trained on")
    p.set_defaults(func=_import_nanogpt)

    p = sub.add_parser("demo", help="the whole pipeline offline on Shakespeare's plays, on CPU, in minutes")
    p.add_argument("--out", default="runs/demo", metavar="DIR")
    p.add_argument("--seconds", type=float, default=None, help="training time budget")
    p.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command in ("train", "bench", "plan"):
        args.overrides = unknown  # --key=value config overrides
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        code = args.func(args)
    except UserError as e:
        print(f"gptforge {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"gptforge {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gptforge sample ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
