"""The training loop, readable top to bottom: setup, model, optimizer, data, then one `while` loop that
evaluates, samples, saves, checks whether to stop, accumulates gradients and steps the optimizer.

Single process here, but rank-aware: the loader splits global micro-batches by rank, evals are
all-reduced, and only rank 0 prints and writes, so DDP/FSDP slot in without reshaping the loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path

import torch

from gptforge import dist
from gptforge.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from gptforge.config import Config, diff_configs, to_toml
from gptforge.errors import UserError
from gptforge.fsutil import atomic_write_text
from gptforge.loader import TrainLoader, ValBatches, open_dataset
from gptforge.metrics import Console, MetricsLog, eval_line, format_seconds, iter_line, mfu, peak_flops, perplexity
from gptforge.model import GPT
from gptforge.optim import apply_lr, build_optimizer, lr_multiplier
from gptforge.train_guard import LossGuard, StopFlag
from gptforge.train_io import dataset_tokenizer, write_samples

# keys that fix the shapes (or the function) of the weights: changing them on resume is an error
MODEL_KEYS = ["arch", "n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias", "logit_softcap", "rope_base"]


def plan_iters(cfg: Config, params: int, tokens_per_iter: int) -> int:
    """max_iters, else max_tokens, else tokens_per_param x parameters (Chinchilla's 20 by default)."""
    tc = cfg.train
    if tc.max_iters > 0:
        return tc.max_iters
    tokens = tc.max_tokens if tc.max_tokens > 0 else tc.tokens_per_param * params
    if tokens <= 0:
        raise UserError("no training budget: set max_iters, max_tokens or tokens_per_param to a positive value")
    return max(1, math.ceil(tokens / tokens_per_iter))


def _resolve_model_config(cfg: Config, dataset) -> Config:
    vocab = cfg.model.vocab_size or dataset.vocab_size
    if vocab < dataset.vocab_size:
        raise UserError(f"config key 'vocab_size' ({vocab}) is smaller than the dataset's vocabulary ({dataset.vocab_size})")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab))


def _build_model(cfg: Config, dataset) -> tuple[GPT, Config]:
    init = cfg.train.init_from
    if init in ("scratch", "resume"):
        return GPT(cfg.model), cfg
    if not Path(init).is_dir():
        raise UserError(f"config key 'init_from': {init!r} is not 'scratch', 'resume' or a Hugging Face GPT-2 directory")
    from gptforge.hf import load_hf_gpt2

    model = load_hf_gpt2(init)
    if dataset.vocab_size > model.cfg.vocab_size:
        raise UserError(f"init_from {init}: the model's vocabulary ({model.cfg.vocab_size}) is smaller than the dataset's "
                        f"({dataset.vocab_size}); prepare the data with the gpt2 tokenizer")
    if cfg.model.block_size < model.cfg.block_size:
        model.crop_block_size(cfg.model.block_size)  # a shorter context than GPT-2's 1024 to save memory
    return model, dataclasses.replace(cfg, model=dataclasses.replace(model.cfg))


def _check_resume(saved: dict, cfg: Config, tokenizer_identity: dict | None, saved_tok: dict | None) -> list[str]:
    """Refuse a changed model; return the other changed keys so the user sees what this resume alters."""
    changed = diff_configs(saved, cfg.flat(), MODEL_KEYS)
    if changed:
        raise UserError("cannot resume: the model differs from the checkpoint's (" + "; ".join(changed) +
                        "); restore these keys or start a new run with another --out")
    if saved_tok and tokenizer_identity and saved_tok.get("hash") != tokenizer_identity.get("hash"):
        raise UserError(f"cannot resume: the dataset's tokenizer ({tokenizer_identity.get('name')}) is not the one the "
                        f"checkpoint was trained with ({saved_tok.get('name')})")
    ignore = set(MODEL_KEYS) | {"init_from"}
    return diff_configs(saved, cfg.flat(), [k for k in sorted(saved) if k not in ignore])


def train(cfg: Config) -> dict:
    tc, oc = cfg.train, cfg.optim
    launch = time.time()
    # ---------------------------------------------------------------- setup
    rank, world = dist.rank(), dist.world_size()
    main = rank == 0
    device = dist.resolve_device(tc.device)
    dtype = dist.resolve_dtype(tc.dtype, device)
    torch.manual_seed(tc.seed)
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere and newer
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = True
    autocast = (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext())
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    if tc.gradient_accumulation_steps % world:
        raise UserError(f"gradient_accumulation_steps ({tc.gradient_accumulation_steps}) must be divisible by the "
                        f"number of processes ({world})")
    accum = tc.gradient_accumulation_steps // world  # micro-batches per process per step
    run_dir = Path(tc.out)
    console = Console(enabled=main)

    dataset = open_dataset(cfg.data.data)
    tokenizer, tokenizer_identity = dataset_tokenizer(dataset)
    cfg = _resolve_model_config(cfg, dataset)
    resume = None
    if tc.init_from != "resume" and latest_checkpoint(run_dir) is not None:
        raise UserError(f"{run_dir} already holds a run (checkpoint {latest_checkpoint(run_dir).name}); continue it with "
                        "--init_from=resume, or choose another --out")
    if tc.init_from == "resume":
        path = latest_checkpoint(run_dir)
        if path is None:
            raise UserError(f"init_from=resume: no complete checkpoint in {run_dir / 'checkpoints'}")
        resume = load_checkpoint(path)
        changes = _check_resume(resume["state"]["config"], cfg, tokenizer_identity, resume["state"].get("tokenizer"))
        console.print(f"resuming from {path}" + (f"; changed: {'; '.join(changes)}" if changes else ""))

    # ---------------------------------------------------------------- model and optimizer
    model, cfg = _build_model(cfg, dataset)
    model.to(device)
    optimizer = build_optimizer(model, oc, device.type)
    if resume:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if "scaler" in resume["tensors"] and scaler.is_enabled():
            scaler.load_state_dict(resume["tensors"]["scaler"])
    use_compile = tc.compile == "true" or (tc.compile == "auto" and device.type == "cuda")
    step_model = torch.compile(model) if use_compile else model  # `model` keeps plain state_dict keys

    # ---------------------------------------------------------------- data
    loader = TrainLoader(dataset, tc.batch_size, cfg.model.block_size, tc.seed, rank=rank, world_size=world)
    val_batches = ValBatches(dataset, tc.batch_size, cfg.model.block_size, tc.eval_iters, rank=rank, world_size=world)
    train_batches = ValBatches(dataset, tc.batch_size, cfg.model.block_size, tc.eval_iters, rank, world, split="train")
    tokens_per_iter = tc.batch_size * cfg.model.block_size * tc.gradient_accumulation_steps
    params, params_ne = model.num_params(), model.num_params(non_embedding=True)
    max_iters = plan_iters(cfg, params, tokens_per_iter)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_iters=max_iters))
    guard = LossGuard(tc.spike_sigma, tc.max_nan_skips, after_step=oc.warmup_iters)
    step, tokens_seen, best_val, last_val = 0, 0, float("inf"), None
    if resume:
        st = resume["state"]
        step, tokens_seen, best_val, last_val = st["step"], st["tokens_seen"], st["best_val_loss"], st.get("val_loss")
        loader.load_state_dict(st["loader"])
        guard.load_state_dict(st["guard"])
        dist.set_rng_state(resume["tensors"], device)  # dropout continues exactly where it stopped
        if step >= max_iters:
            raise UserError(f"nothing to do: the checkpoint is at step {step} and max_iters is {max_iters}; "
                            "pass a larger --max_iters (or --max_tokens) to continue")
    resumed_at = step if resume else None

    # ---------------------------------------------------------------- run directory and the start report
    peak = peak_flops(dist.device_name(device), tc.peak_flops)
    flops_per_token = model.flops_per_token()
    planned_tokens = max_iters * tokens_per_iter
    log = None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.toml", to_toml(cfg))
        if tokenizer is not None:
            tokenizer.save(run_dir / "tokenizer")
        log = MetricsLog(run_dir, wandb_log=tc.wandb_log, wandb_project=tc.wandb_project,
                         wandb_run_name=tc.wandb_run_name, tensorboard=tc.tensorboard, config=cfg.flat(), t0=launch,
                         fresh=resume is None)
    planned_epochs = planned_tokens / dataset.train_tokens
    console.print(f"device {dist.device_name(device)}, {str(dtype).replace('torch.', '')}, compile {use_compile}, "
                  f"{world} process(es)")
    console.print(f"parameters {params:,} total, {params_ne:,} non-embedding; {flops_per_token:,.0f} FLOPs/token")
    console.print(f"tokens per iteration {tokens_per_iter:,} ({tc.batch_size} x {cfg.model.block_size} x "
                  f"{tc.gradient_accumulation_steps}); max_iters {max_iters:,}; planned tokens {planned_tokens:,} "
                  f"({planned_tokens / params:.1f} tokens/param); {planned_epochs:.2f} epochs over "
                  f"{dataset.train_tokens:,} train tokens")
    if loader.grew:
        console.print(f"the dataset grew since the checkpoint: {loader.grew['old_train_tokens']:,} -> "
                      f"{loader.grew['new_train_tokens']:,} train tokens (version {loader.grew['version']}); "
                      "training continues on the larger dataset")
    if log:
        log.write("start", step, config=cfg.flat(), params=params, params_non_embedding=params_ne,
                  tokens_per_iter=tokens_per_iter, max_iters=max_iters, planned_tokens=planned_tokens,
                  tokens_per_param=planned_tokens / params, dataset_train_tokens=dataset.train_tokens,
                  dataset_val_tokens=dataset.val_tokens, dataset_version=dataset.version,
                  planned_epochs=planned_epochs, device=device.type, device_name=dist.device_name(device),
                  world_size=world, peak_flops=peak, flops_per_token=flops_per_token, resumed_from=resumed_at)
        if loader.grew:
            log.write("data_grew", step, **loader.grew)

    def evaluate() -> tuple[float, float]:
        model.eval()
        losses = []
        with torch.no_grad():
            for batches in (train_batches, val_batches):
                total = torch.zeros(2, device=device)
                for x, y in batches:
                    with autocast:
                        _, loss = step_model(x.to(device), y.to(device))
                    total += torch.stack([loss.detach().float(), torch.ones((), device=device)])
                total = dist.all_reduce_sum(total)
                losses.append((total[0] / total[1]).item())
        model.train()
        return losses[0], losses[1]

    def save(is_best: bool) -> None:
        t0 = time.time()
        state = {"step": step, "tokens_seen": tokens_seen, "epoch": loader.epoch_float, "config": cfg.flat(),
                 "tokenizer": tokenizer_identity, "loader": loader.state_dict(), "guard": guard.state_dict(),
                 "best_val_loss": best_val, "val_loss": last_val,
                 "dataset": {"path": str(dataset.path), "version": dataset.version, "train_tokens": dataset.train_tokens}}
        extra = dist.rng_state(device)
        if scaler.is_enabled():
            extra["scaler"] = scaler.state_dict()
        if main:
            path = save_checkpoint(run_dir, step, model_state=model.state_dict(), optimizer_state=optimizer.state_dict(),
                                   extra_tensors=extra, state=state, keep_last=tc.keep_last, is_best=is_best)
            seconds = time.time() - t0
            console.print(f"saved checkpoint {path} in {seconds:.2f}s (not counted in iteration time)")
            log.write("checkpoint", step, path=str(path), seconds=round(seconds, 3))
        dist.barrier()

    # ---------------------------------------------------------------- the loop
    stop = StopFlag()
    model.train()
    reason, step_times, train_seconds = None, [], 0.0
    with stop.installed():
        while True:
            last_step, is_best = step == max_iters, False
            # eval (and sample, and save) every eval_interval steps, except the step a resume starts at
            if (step % tc.eval_interval == 0 or last_step) and step != resumed_at:
                t0 = time.time()
                train_loss, last_val = evaluate()
                seconds = time.time() - t0
                console.print(eval_line(step, train_loss, last_val, seconds))
                if log:
                    log.write("eval", step, tokens=tokens_seen, epoch=loader.epoch_float, train_loss=train_loss,
                              val_loss=last_val, val_ppl=perplexity(last_val), eval_batches=len(val_batches),
                              seconds=round(seconds, 3))
                if main and tokenizer is not None and tc.sample_tokens > 0 and tc.sample_prompts:
                    write_samples(model, tokenizer, tc.sample_prompts, tc.sample_tokens, step, run_dir, device,
                                  autocast, console)
                is_best = last_val < best_val
                best_val = min(best_val, last_val)
                if step > 0 and (tc.always_save_checkpoint or is_best) and not last_step:
                    save(is_best)
            if last_step:
                reason = "max_iters"
            elif stop.requested:
                reason = f"signal {stop.signal_name}"
            elif tc.max_seconds and train_seconds >= tc.max_seconds:
                reason = "max_seconds"
            if reason:
                if step != resumed_at:  # (a resume that stops at once already has this checkpoint)
                    save(is_best)
                break

            # one optimizer step: accum micro-batches, then the update (or a skip on a bad loss)
            t0 = time.time()
            lr_mult = lr_multiplier(step, oc, max_iters)
            apply_lr(optimizer, lr_mult)
            batches = [loader.next_batch() for _ in range(accum)]
            loss_sum = torch.zeros((), device=device)
            for x, y in batches:
                if device.type == "cuda":  # pinned memory lets the copy overlap the previous micro-step
                    x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
                else:
                    x, y = x.to(device), y.to(device)
                with autocast:
                    _, loss = step_model(x, y)
                loss = loss / accum
                loss_sum += loss.detach()
                scaler.scale(loss).backward()
            loss_value = dist.all_reduce_mean(loss_sum).item()  # .item() is a CPU-GPU sync point
            verdict = guard.check(step, loss_value)
            grad_norm = None
            if verdict == "ok" or (verdict == "spike" and not tc.skip_spikes):
                if scaler.is_enabled():
                    scaler.unscale_(optimizer)
                clip = oc.grad_clip if oc.grad_clip > 0 else float("inf")
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip).item()
                if scaler.is_enabled():  # fp16: the scaler skips steps with inf grads and lowers the scale
                    scale = scaler.get_scale()
                    scaler.step(optimizer)
                    scaler.update()
                    if scaler.get_scale() < scale:
                        console.print(f"step {step}: fp16 overflow, step skipped; loss scale {scale:g} -> "
                                      f"{scaler.get_scale():g}")
                elif math.isfinite(grad_norm):
                    optimizer.step()
                else:
                    verdict = guard.non_finite(step)
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += tokens_per_iter
            dt = time.time() - t0
            train_seconds += dt
            step_times = (step_times + [dt])[-20:]

            if verdict == "nan":
                console.print(f"step {step - 1}: non-finite loss ({loss_value}), step skipped "
                              f"({guard.consecutive} in a row, {guard.nan_skips} in total)")
                if log:
                    log.write("nan_skip", step - 1, count=guard.nan_skips, consecutive=guard.consecutive)
                if guard.consecutive >= tc.max_nan_skips:
                    save(is_best=False)
                    if log:
                        log.write("end", step, reason="nan")
                        log.close()
                    raise UserError(
                        f"stopped at step {step}: {guard.consecutive} non-finite losses in a row. Likely causes: the "
                        f"learning rate is too high (now {oc.learning_rate:g}; try half), fp16 overflow (use "
                        "--dtype=bfloat16 or float32), no gradient clipping (--grad_clip=1.0), or bad data. The "
                        f"parameters from before the bad steps are in {run_dir / 'checkpoints'}; resume with "
                        "--init_from=resume after the change"
                    )
            elif verdict == "spike":
                action = "optimizer step skipped" if tc.skip_spikes else "kept (set --skip_spikes=true to skip)"
                console.print(f"step {step - 1}: loss spike {loss_value:.4f} vs recent mean {guard.last_mean:.4f} "
                              f"± {guard.last_std:.4f}; {action}")
                if log:
                    log.write("spike", step - 1, loss=loss_value, mean=guard.last_mean, std=guard.last_std)
            if step % tc.log_interval == 0 and verdict != "nan":
                lr = optimizer.param_groups[0]["lr"]
                tok_per_s = tokens_per_iter / dt
                fraction = mfu(flops_per_token, tok_per_s, peak * world if peak else None)
                console.print(iter_line(step, loss_value, dt * 1000, fraction, tok_per_s, lr))
                if log:
                    log.write("log", step, tokens=tokens_seen, epoch=loader.epoch_float, loss=loss_value, lr=lr,
                              dt_ms=round(dt * 1000, 3), tok_per_s=round(tok_per_s, 1), mfu=fraction, grad_norm=grad_norm)
            console.progress(step, max_iters, sum(step_times) / len(step_times))

    console.close()
    console.print(f"done: {reason} at step {step}, {tokens_seen:,} tokens, best val loss {best_val:.4f}, "
                  f"{format_seconds(time.time() - launch)} in all; run directory {run_dir}")
    if log:
        log.write("end", step, reason=reason)
        log.close()
    return {"step": step, "reason": reason, "best_val_loss": best_val, "val_loss": last_val, "run_dir": run_dir}
