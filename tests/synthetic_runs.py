"""Run directories with synthetic metrics.jsonl files, one per classic case (healthy, data-limited plateau,
overfitting, LR too high, divergence, a dataset grown mid-run), for the diagnose and plot tests. The records
are built with the trainer's own schema (gptforge.train.events), so they have exactly its fields."""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

from gptforge.analysis.plan.sizing import param_counts
from gptforge.config import build_config, to_toml
from gptforge.train.events import Checkpoint, DataGrew, End, Eval, Event, Log, NanSkip, Spike, Start, to_line
from gptforge.train.hellaswag import Result, stderr
from gptforge.train.optim import lr_multiplier


def write_run(
    run_dir: Path,
    config: dict,
    *,
    dataset_train_tokens: int,
    train,
    val,
    eval_noise: float = 0.003,
    log_noise: float = 0.02,
    spikes: dict | None = None,
    nan_from: int | None = None,
    stop_at: int | None = None,
    end_reason: str | None = "max_iters",
    tok_per_s: float = 1e5,
    mfu: float | None = None,
    seed: int = 0,
    grow: dict | None = None,
    val_parts=None,
    hellaswag=None,
) -> Path:
    """Events as gptforge train writes them; train(step)/val(step) give the noiseless curves, `spikes`
    maps step -> extra loss (with a spike event), `nan_from` starts non-finite losses until the run stops.
    `grow` = {step, train_tokens, val_tokens}: the first launch ends at that step and a resume on the
    grown dataset (version 2) continues, as `gptforge prepare part2` + `--init_from=resume` do. `val_parts(step)`
    gives the eval's val loss per dataset part ({name: loss}, or None), logged as the eval's `val_parts`.
    `hellaswag(step)` gives the eval's HellaSwag (acc_norm, items), or None where it was not scored."""
    rng = random.Random(seed)
    cfg = build_config(config)
    m, tc = cfg.model, cfg.train
    params = param_counts(m, m.vocab_size)
    tokens_per_iter = tc.batch_size * tc.gradient_accumulation_steps * m.block_size
    max_iters = tc.max_iters
    stop_at = stop_at if stop_at is not None else max_iters
    start = Start(step=0, time=0.0, config=cfg.flat(), params=params.total, params_non_embedding=params.non_embedding,
                  tokens_per_iter=tokens_per_iter, max_iters=max_iters, planned_tokens=max_iters * tokens_per_iter,
                  tokens_per_param=max_iters * tokens_per_iter / params.total,
                  dataset_train_tokens=dataset_train_tokens, dataset_val_tokens=dataset_train_tokens // 100,
                  dataset_version=1, planned_epochs=max_iters * tokens_per_iter / dataset_train_tokens,
                  device="cuda" if mfu else "cpu", device_name="NVIDIA H100 80GB HBM3" if mfu else "CPU", world_size=1,
                  fsdp=False, peak_flops=989e12 if mfu else None, flops_per_token=1.0, resumed_from=None)
    events: list[Event] = [start]
    consecutive = 0
    for step in range(0, stop_at + 1):
        tokens = step * tokens_per_iter
        epoch = tokens / dataset_train_tokens
        if step % tc.eval_interval == 0 or step == max_iters:
            parts = val_parts(step) if val_parts else None
            extra = {"val_parts": {k: v + rng.gauss(0, eval_noise) for k, v in parts.items()}} if parts else {}
            swag = hellaswag(step) if hellaswag else None
            scored = Result(swag[0] - 0.01, swag[0], stderr(swag[0] - 0.01, swag[1]), stderr(swag[0], swag[1]),
                            swag[1], swag[1] * 220, 5.0).event_fields() if swag else {}
            events.append(Eval(step=step, time=step * 0.1, tokens=tokens, epoch=epoch,
                               train_loss=train(step) + rng.gauss(0, eval_noise),
                               val_loss=val(step) + rng.gauss(0, eval_noise), val_ppl=math.exp(min(val(step), 700)),
                               eval_batches=tc.eval_iters, seconds=1.0, extra=extra, **scored))
            if step and step < max_iters:
                events.append(Checkpoint(step=step, time=step * 0.1, path=f"step_{step:08d}", seconds=0.1))
        if grow and step == grow["step"]:
            events.append(End(step=step, time=step * 0.1, reason="max_iters"))
            events.append(dataclasses.replace(start, step=step, time=1.0, dataset_train_tokens=grow["train_tokens"],
                                              dataset_val_tokens=grow["val_tokens"], dataset_version=2,
                                              resumed_from=step))
            events.append(DataGrew(step=step, time=1.0, old_train_tokens=dataset_train_tokens,
                                   new_train_tokens=grow["train_tokens"], version=2))
        if step == stop_at:
            break
        done = step + 1
        loss = train(step) + rng.gauss(0, log_noise) + (spikes or {}).get(step, 0.0)
        if nan_from is not None and step >= nan_from:
            consecutive += 1
            events.append(NanSkip(step=step, time=step * 0.1, count=consecutive, consecutive=consecutive))
            continue
        if spikes and step in spikes:
            events.append(Spike(step=step, time=step * 0.1, loss=loss, mean=train(step), std=log_noise))
        if done % tc.log_interval == 0:
            lr = cfg.optim.learning_rate * lr_multiplier(step, cfg.optim, max_iters)
            speed = tok_per_s * (1 + rng.gauss(0, 0.02))
            events.append(Log(step=done, time=done * 0.1, tokens=done * tokens_per_iter,
                              epoch=done * tokens_per_iter / dataset_train_tokens, loss=loss, lr=lr,
                              dt_ms=tokens_per_iter / speed * 1000, tok_per_s=speed, mfu=mfu, grad_norm=0.5,
                              tok_per_s_per_gpu=speed, tflops_per_gpu=speed * start.flops_per_token / 1e12))
    if end_reason:
        events.append(End(step=stop_at, time=stop_at * 0.1, reason=end_reason))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(to_toml(cfg), encoding="utf-8")
    (run_dir / "metrics.jsonl").write_text("".join(to_line(e) + "\n" for e in events), encoding="utf-8")
    return run_dir


GPT2_124M = dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257)
SMALL_40M = dict(n_layer=4, n_head=8, n_embd=512, block_size=1024, vocab_size=50257)  # 38.9M parameters


def healthy(run_dir: Path, hellaswag=None, data: str = "") -> Path:
    """GPT-2 124M, 5,000 iterations of 491,520 tokens (2.46B) on a 10B-token dataset, loss still falling;
    `hellaswag` as write_run takes it, `data` the config's data directory."""
    cfg = dict(GPT2_124M, batch_size=12, gradient_accumulation_steps=40, max_iters=5000, warmup_iters=200,
               eval_interval=250, eval_iters=200, log_interval=10, learning_rate=6e-4, min_lr=6e-5, data=str(data))
    curve = lambda s: 3.0 + 4.0 / math.sqrt(1 + s / 200)  # noqa: E731
    return write_run(run_dir, cfg, dataset_train_tokens=10_000_000_000, train=curve, val=lambda s: curve(s) + 0.02,
                     mfu=0.41, tok_per_s=480_000, hellaswag=hellaswag)


def data_limited(run_dir: Path) -> Path:
    """The case seen in the wild: ~40M parameters, 524,288 tokens/iter, 14,500 iterations (7.6B tokens) on
    one parquet shard of 300M tokens; train and val within 0.1 around 3.6-3.7, barely moving."""
    cfg = dict(SMALL_40M, batch_size=16, gradient_accumulation_steps=32, max_iters=14500, warmup_iters=700,
               eval_interval=500, eval_iters=200, log_interval=50, learning_rate=6e-4, min_lr=6e-5)
    curve = lambda s: 3.62 + 7.0 * math.exp(-s / 300) + 0.02 * (1 - s / 14500)  # noqa: E731
    return write_run(run_dir, cfg, dataset_train_tokens=300_000_000, train=curve, val=lambda s: curve(s) + 0.04,
                     tok_per_s=900_000, mfu=0.38)


def overfitting(run_dir: Path) -> Path:
    """nanoGPT's shakespeare-char recipe: val bottoms out near step 1500, then rises while train falls."""
    cfg = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, dropout=0.2, batch_size=64,
               max_iters=5000, warmup_iters=100, eval_interval=250, eval_iters=200, log_interval=10,
               learning_rate=1e-3, min_lr=1e-4)
    train = lambda s: 0.95 + 3.2 * math.exp(-s / 300) - 0.04 * s / 1000  # noqa: E731
    val = lambda s: 1.40 + 2.8 * math.exp(-s / 300) + 6e-5 * max(0, s - 1500)  # noqa: E731
    return write_run(run_dir, cfg, dataset_train_tokens=1_003_854, train=train, val=val, log_noise=0.03)


def lr_too_high(run_dir: Path) -> Path:
    """LR 6e-3: the loss swings, spikes after warmup and climbs back up mid-run."""
    cfg = dict(GPT2_124M, batch_size=12, gradient_accumulation_steps=40, max_iters=3000, warmup_iters=100,
               eval_interval=250, eval_iters=200, log_interval=10, learning_rate=6e-3, min_lr=6e-4)

    def train(s):
        climb = 0.5 * min(1.0, max(0.0, (s - 1500) / 700))  # +0.5 between steps 1500 and 2200
        return 4.0 + 3.0 * math.exp(-s / 200) + 0.3 * math.sin(s / 37) + climb

    spikes = {s: 2.0 for s in (400, 800, 1300, 1700, 2100, 2500)}
    return write_run(run_dir, cfg, dataset_train_tokens=10_000_000_000, train=train, val=lambda s: train(s) + 0.03,
                     spikes=spikes, log_noise=0.15)


def small_batch_cpu(run_dir: Path, seed: int = 0) -> Path:
    """The demo's shape: a 1.3M-parameter model, 550 iterations of 16 x 128 tokens logged every 18, so each
    logged loss is one small batch's (±0.12 around a smoothly falling curve)."""
    cfg = dict(
        arch="modern",
        n_layer=4,
        n_head=4,
        n_embd=128,
        block_size=128,
        vocab_size=2048,
        batch_size=16,
        max_iters=550,
        warmup_iters=30,
        eval_interval=92,
        eval_iters=5,
        log_interval=18,
        learning_rate=6e-3,
        min_lr=6e-4,
        schedule="wsd",
    )
    curve = lambda s: 3.6 + 4.0 * math.exp(-s / 40) + 0.9 * math.exp(-s / 300)  # noqa: E731
    return write_run(run_dir, cfg, dataset_train_tokens=1_700_000, train=curve, val=lambda s: curve(s) + 0.25,
                     log_noise=0.12, eval_noise=0.02, seed=seed)


def diverged(run_dir: Path) -> Path:
    """Falls to ~3.5 by step 800, blows up to ~9 by step 1200, then five NaN losses in a row stop it."""
    cfg = dict(GPT2_124M, batch_size=12, gradient_accumulation_steps=40, max_iters=2000, warmup_iters=100,
               eval_interval=250, eval_iters=200, log_interval=10, learning_rate=3e-3, min_lr=3e-4)

    def train(s):
        return 3.5 + 4.0 * math.exp(-s / 150) + (0.0 if s < 800 else 5.5 * ((s - 800) / 400) ** 2)

    return write_run(run_dir, cfg, dataset_train_tokens=10_000_000_000, train=train, val=lambda s: train(s) + 0.03,
                     nan_from=1200, stop_at=1205, end_reason="nan")


def grown(run_dir: Path, after: str, *, parts: bool = False, val_tokens: int = 30_000_000,
          skip_spikes: bool = False) -> Path:
    """The ~40M model of data_limited on its 300M-token shard: plateaued by step 6,000 (10 epochs), the data
    grows tenfold at step 8,000 (with a resume), then:
    - "helped": the val loss falls 0.2; "flat": it stays;
    - "val_rises": the new text (another kind) lifts the train loss 0.5, which then falls, while the val loss of
      the old text rises 0.15 (with val_tokens unchanged, the issue's Wikipedia part that got no val);
    - "level_shift": like val_rises, and the spike guard reports 39 spikes in a row at steps 8,000-8,038.
    `parts`: evals also log val per part, fineweb (the old data) and, after the growth, wikipedia (new:
    falling 6.50 -> 5.62 when "helped", flat at 5.6 otherwise)."""
    cfg = dict(SMALL_40M, batch_size=16, gradient_accumulation_steps=32, max_iters=14000, warmup_iters=700,
               eval_interval=500, eval_iters=200, log_interval=50, learning_rate=6e-4, min_lr=6e-4, schedule="constant",
               skip_spikes=skip_spikes)
    shifted = after in ("val_rises", "level_shift")

    def since(s, scale):
        return 1 - math.exp(-(s - 8000) / scale) if s > 8000 else 0.0

    def curve(s):
        fresh = 0.2 * since(s, 1500) if after == "helped" else 0.0
        new_text = 0.5 * (1 - since(s, 2000)) if shifted and s >= 8000 else 0.0
        return 3.65 + 7.0 * math.exp(-s / 300) - fresh + new_text

    def val(s):
        return 3.65 + 7.0 * math.exp(-s / 300) + 0.04 + (0.15 * since(s, 2000) if shifted else
                                                         -0.2 * since(s, 1500) if after == "helped" else 0.0)

    def per_part(s):
        old = {"fineweb": val(s) if shifted else 3.69 + 7.0 * math.exp(-s / 300)}
        if s <= 8000:
            return old
        wiki = 5.62 + 0.88 * math.exp(-(s - 8500) / 1200) if after == "helped" else 5.6
        return {**old, "wikipedia": wiki}

    spikes = {s: 0.0 for s in range(8000, 8039)} if after == "level_shift" else None
    return write_run(run_dir, cfg, dataset_train_tokens=300_000_000, train=curve, val=val, tok_per_s=900_000, mfu=0.38,
                     grow=dict(step=8000, train_tokens=3_000_000_000, val_tokens=val_tokens), spikes=spikes,
                     val_parts=per_part if parts else None)


def widening_gap(run_dir: Path) -> Path:
    """The issue's case: nanoGPT's shakespeare-char model (10.7M parameters) for 1,262 iterations of 16,384 tokens
    on its 1,003,854 train tokens: 20.6 epochs at 1.9 tokens per parameter. Train and val still fall, but the
    gap between them widens from 0.02 to 0.21."""
    cfg = dict(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=65, dropout=0.2, batch_size=64,
               max_iters=1262, warmup_iters=100, eval_interval=100, eval_iters=200, log_interval=10,
               learning_rate=1e-3, min_lr=1e-4)
    train = lambda s: 1.0 + 3.2 * math.exp(-s / 400)  # noqa: E731
    return write_run(run_dir, cfg, dataset_train_tokens=1_003_854, train=train,
                     val=lambda s: train(s) + 0.02 + 0.19 * s / 1262, log_noise=0.03)


def blew_up(run_dir: Path) -> Path:
    """GPT-2 124M in fp16 without clipping, nanoGPT's 2,000 warmup iterations: the loss falls to ~6 by step 400,
    then climbs to 1.7e9 by step 600 and stays there until the run is stopped at step 1,000 (no end event)."""
    cfg = dict(GPT2_124M, batch_size=12, gradient_accumulation_steps=40, max_iters=5000, warmup_iters=2000,
               eval_interval=250, eval_iters=200, log_interval=10, learning_rate=6e-4, min_lr=6e-5, dtype="float16",
               grad_clip=0.0)

    def train(s):
        return 6.0 + 5.0 * math.exp(-s / 100) if s < 400 else 6.1 * (1.7e9 / 6.1) ** min(1.0, (s - 400) / 200)

    return write_run(run_dir, cfg, dataset_train_tokens=10_000_000_000, train=train, val=lambda s: train(s) + 0.05,
                     stop_at=1000, end_reason=None)
