"""The training loop, readable top to bottom: setup, model, optimizer, data, then one `while` loop that
evaluates, samples, saves, checks whether to stop, accumulates gradients and steps the optimizer.

One process, or many under torchrun (DDP, or FSDP2 with fsdp=true; see parallel.py and
docs/distributed.md): the loader splits the global micro-batches by rank, evaluation is split and
all-reduced, every decision that ends or skips a step is taken from all-reduced values so all ranks take
it together, and only rank 0 prints and writes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import torch

from gptforge.config import Config, diff_configs, to_toml
from gptforge.data.dataset import dataset_tokenizer, open_dataset
from gptforge.errors import UserError
from gptforge.fmt import clock
from gptforge.fsutil import atomic_write_text
from gptforge.model.gpt import GPT
from gptforge.train import devices, dist, parallel
from gptforge.train.budget import plan_iters
from gptforge.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from gptforge.train.console import Console, eval_line, iter_line, perplexity
from gptforge.train.devices import mfu, peak_flops
from gptforge.train.events import Checkpoint, DataGrew, End, Eval, Log, MetricsLog, NanSkip, Spike, Start
from gptforge.train.guard import LossGuard, StopFlag
from gptforge.train.loader import TrainLoader, ValBatches
from gptforge.train.optim import apply_lr, build_optimizer, lr_multiplier
from gptforge.train.samples import write_samples

# keys that fix the shapes (or the function) of the weights: changing them on resume is an error
MODEL_KEYS = ["arch", "n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias", "logit_softcap", "rope_base"]


def _resolve_model_config(cfg: Config, dataset) -> Config:
    vocab = cfg.model.vocab_size or dataset.vocab_size
    if vocab < dataset.vocab_size:
        raise UserError(
            f"config key 'vocab_size' ({vocab}) is smaller than the dataset's vocabulary ({dataset.vocab_size})"
        )
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab))


def _build_model(cfg: Config, dataset, pretrained: GPT | None) -> tuple[GPT, Config]:
    init = cfg.train.init_from
    if init in ("scratch", "resume"):
        return GPT(cfg.model), cfg
    if pretrained is None:
        raise UserError(
            f"config key 'init_from': {init!r} is not 'scratch', 'resume' or a Hugging Face GPT-2 directory"
        )
    model = pretrained
    if dataset.vocab_size > model.cfg.vocab_size:
        raise UserError(
            f"init_from {init}: the model's vocabulary ({model.cfg.vocab_size}) is smaller than the dataset's "
            f"({dataset.vocab_size}); prepare the data with the gpt2 tokenizer"
        )
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


def _restore_rng(tensors: dict, saved_world: int, device, seed: int, step: int, console: Console) -> None:
    """Dropout continues exactly where it stopped when the world size is the same; after a change, the
    ranks other than 0 start fresh streams (the data order is still exact; dropout is then statistical)."""
    rank, world = dist.rank(), dist.world_size()
    per_rank = tensors.get("rank_rng")
    if per_rank and len(per_rank) == world:
        dist.set_rng_state(per_rank[rank], device)
        return
    dist.set_rng_state(tensors, device)  # rank 0's streams
    if rank:
        torch.manual_seed(seed + 1_000_003 * rank + step)
    if saved_world != world:
        console.print(f"the checkpoint was written by {saved_world} process(es), this run has {world}: the data "
                      "order continues exactly; dropout draws other random masks from here on")


def train(cfg: Config, pretrained: GPT | None = None) -> dict:
    """Train (joining torchrun's process group when launched by torchrun, and leaving it at the end)."""
    device = devices.resolve_device(cfg.train.device)
    created = dist.setup(device)
    try:
        result = _train(cfg, device, pretrained)
    except RuntimeError as e:
        lost = dist.lost_peer_error(e)
        if lost is None:
            raise
        created = False  # the group is broken; tearing it down could wait on the dead peer
        raise lost from None
    finally:
        dist.cleanup(created)
    return result


def _train(cfg: Config, device: torch.device, pretrained: GPT | None) -> dict:
    tc, oc = cfg.train, cfg.optim
    launch = time.time()
    # ---------------------------------------------------------------- setup
    rank, world = dist.rank(), dist.world_size()
    main = rank == 0
    dtype = devices.resolve_dtype(tc.dtype, device)
    fsdp = parallel.use_fsdp(tc.fsdp, world, oc.optimizer, dtype)
    torch.manual_seed(tc.seed)  # the same on every rank: FSDP shards one identical initial model
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere and newer
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = True
    autocast = devices.autocast(device, dtype)
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
    path = dist.broadcast_object(latest_checkpoint(run_dir) if main else None)  # every rank loads rank 0's choice
    if tc.init_from != "resume" and path is not None:
        raise UserError(f"{run_dir} already holds a run (checkpoint {path.name}); continue it with "
                        "--init_from=resume, or choose another --out")
    if tc.init_from == "resume":
        if path is None:
            raise UserError(f"init_from=resume: no complete checkpoint in {run_dir / 'checkpoints'}")
        if not path.is_dir():
            raise UserError(f"rank {rank} cannot see {path}, the checkpoint rank 0 resumes from: a multi-machine run "
                            "needs --out on a filesystem that every machine shares")
        resume = load_checkpoint(path, weights=main or not fsdp)  # FSDP: rank 0 reads, then broadcasts
        changes = _check_resume(resume["state"]["config"], cfg, tokenizer_identity, resume["state"].get("tokenizer"))
        console.print(f"resuming from {path}" + (f"; changed: {'; '.join(changes)}" if changes else ""))

    # ---------------------------------------------------------------- model and optimizer
    model, cfg = _build_model(cfg, dataset, pretrained)
    params, params_ne = model.num_params(), model.num_params(non_embedding=True)
    flops_per_token = model.flops_per_token()
    if rank:
        torch.manual_seed(tc.seed + rank)  # each rank its own dropout stream (rank 0 keeps a single process's)
    use_compile = tc.compile == "true" or (tc.compile == "auto" and device.type == "cuda")
    # DDP / FSDP / plain; `model` keeps plain state_dict keys, step_model is what the step runs through
    step_model, eval_model = parallel.wrap(model, fsdp=fsdp, device=device, dtype=dtype, compile_model=use_compile)
    optimizer = build_optimizer(model, oc, device.type)
    if resume:
        parallel.load_model_state(model, resume["model"], fsdp)
        parallel.load_optimizer_state(model, optimizer, resume["optimizer"], fsdp)
        if "scaler" in resume["tensors"] and scaler.is_enabled():
            scaler.load_state_dict(resume["tensors"]["scaler"])

    # ---------------------------------------------------------------- data
    loader = TrainLoader(dataset, tc.batch_size, cfg.model.block_size, tc.seed, rank=rank, world_size=world)
    val_batches = ValBatches(dataset, tc.batch_size, cfg.model.block_size, tc.eval_iters, rank=rank, world_size=world)
    train_batches = ValBatches(dataset, tc.batch_size, cfg.model.block_size, tc.eval_iters, rank, world, split="train")
    tokens_per_iter = cfg.tokens_per_iter
    max_iters = plan_iters(cfg, params)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_iters=max_iters))
    guard = LossGuard(tc.spike_sigma, tc.max_nan_skips, after_step=oc.warmup_iters)
    step, tokens_seen, best_val, last_val = 0, 0, float("inf"), None
    if resume:
        st = resume["state"]
        step, tokens_seen, best_val, last_val = st["step"], st["tokens_seen"], st["best_val_loss"], st.get("val_loss")
        if st.get("loader") is None:  # e.g. imported from nanoGPT, whose random batches cannot be replayed
            console.print("the checkpoint holds no data position (imported from nanoGPT?): the data order starts a "
                          "fresh permutation at epoch 0")
        else:
            loader.load_state_dict(st["loader"])  # a global position: valid at any number of processes
        guard.load_state_dict(st["guard"])
        _restore_rng(resume["tensors"], st.get("world_size", 1), device, tc.seed, step, console)
        if step >= max_iters:
            raise UserError(f"nothing to do: the checkpoint is at step {step} and max_iters is {max_iters}; "
                            "pass a larger --max_iters (or --max_tokens) to continue")
    resumed_at = step if resume else None

    # ---------------------------------------------------------------- run directory and the start report
    peak = peak_flops(devices.device_name(device), tc.peak_flops)
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
    console.print(f"device {devices.device_name(device)}, {str(dtype).replace('torch.', '')}, compile {use_compile}, "
                  f"{world} process(es)" + (", FSDP (parameters, gradients and optimizer state sharded)" if fsdp
                                            else ", DDP" if world > 1 else ""))
    if tc.fsdp and not fsdp:
        console.print("fsdp=true with one process: nothing to shard, training unsharded")
    if world > 1:
        console.print(f"gradient_accumulation_steps {tc.gradient_accumulation_steps} is global: "
                      f"{accum} micro-batch(es) of {tc.batch_size} per process per step")
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
        log.write(Start(step=step, config=cfg.flat(), params=params, params_non_embedding=params_ne,
                  tokens_per_iter=tokens_per_iter, max_iters=max_iters, planned_tokens=planned_tokens,
                  tokens_per_param=planned_tokens / params, dataset_train_tokens=dataset.train_tokens,
                  dataset_val_tokens=dataset.val_tokens, dataset_version=dataset.version,
                  planned_epochs=planned_epochs, device=device.type, device_name=devices.device_name(device),
                  world_size=world, fsdp=fsdp, peak_flops=peak, flops_per_token=flops_per_token,
                  resumed_from=resumed_at))
        if loader.grew:
            log.write(DataGrew(step=step, **loader.grew))

    def evaluate() -> tuple[float, float]:
        """Each rank evaluates its share of the fixed batches; the sums are all-reduced."""
        model.eval()
        losses = []
        with torch.no_grad():
            for batches in (train_batches, val_batches):
                total = torch.zeros(2, device=device)
                for x, y, counted in batches.lockstep():
                    with autocast:
                        _, loss = eval_model(x.to(device), y.to(device))
                    if counted:
                        total += torch.stack([loss.detach().float(), torch.ones((), device=device)])
                total = dist.all_reduce_sum(total)
                losses.append((total[0] / total[1]).item())
        model.train()
        return losses[0], losses[1]

    def save(is_best: bool) -> None:
        t0 = time.time()
        state = {
            "step": step,
            "tokens_seen": tokens_seen,
            "epoch": loader.epoch_float,
            "config": cfg.flat(),
            "tokenizer": tokenizer_identity,
            "loader": loader.state_dict(),
            "guard": guard.state_dict(),
            "best_val_loss": best_val,
            "val_loss": last_val,
            "world_size": world,
            "dataset": {"path": str(dataset.path), "version": dataset.version, "train_tokens": dataset.train_tokens},
        }
        extra = dist.rng_state(device)
        if world > 1:  # every rank's dropout streams, for an exact resume at the same world size
            extra["rank_rng"] = dist.all_gather_object({k: v.cpu() for k, v in extra.items()})
        if scaler.is_enabled():
            extra["scaler"] = scaler.state_dict()
        # DDP: rank 0 holds everything; FSDP: every rank takes part in gathering the shards to rank 0
        model_state = parallel.model_state(model, fsdp) if main or fsdp else None
        optimizer_state = parallel.optimizer_state(model, optimizer, fsdp) if main or fsdp else None
        if main:
            path = save_checkpoint(run_dir, step, model_state=model_state, optimizer_state=optimizer_state,
                                   extra_tensors=extra, state=state, keep_last=tc.keep_last, is_best=is_best)
            seconds = time.time() - t0
            console.print(f"saved checkpoint {path} in {seconds:.2f}s (not counted in iteration time)")
            log.write(Checkpoint(step=step, path=str(path), seconds=round(seconds, 3)))
        dist.barrier()

    # ---------------------------------------------------------------- the loop
    stop = StopFlag(announce=main, second_sigint_aborts=not dist.launched_by_torchrun())
    model.train()
    reason, step_times, train_seconds = None, [], 0.0
    samples_on = main and tokenizer is not None and tc.sample_tokens > 0 and bool(tc.sample_prompts)
    if samples_on and fsdp:
        samples_on = False
        console.print("samples during training are off with FSDP (each rank holds a shard); sample a checkpoint "
                      "with `gptforge sample RUN_DIR`")
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
                    log.write(Eval(step=step, tokens=tokens_seen, epoch=loader.epoch_float, train_loss=train_loss,
                              val_loss=last_val, val_ppl=perplexity(last_val), eval_batches=len(val_batches),
                              seconds=round(seconds, 3)))
                if samples_on:
                    write_samples(model, tokenizer, tc.sample_prompts, tc.sample_tokens, step, run_dir, device,
                                  autocast, console)
                is_best = last_val < best_val
                best_val = min(best_val, last_val)
                if step > 0 and (tc.always_save_checkpoint or is_best) and not last_step:
                    save(is_best)
            # ranks see signals and clocks at different moments: stop when any rank would (one all-reduce)
            signalled, over_time = dist.any_true_each(
                [stop.requested, bool(tc.max_seconds) and train_seconds >= tc.max_seconds], device)
            if last_step:
                reason = "max_iters"
            elif signalled:
                reason = f"signal {stop.signal_name}" if stop.requested else "signal (received by another rank)"
            elif over_time:
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
            for i, (x, y) in enumerate(batches):
                if device.type == "cuda":  # pinned memory lets the copy overlap the previous micro-step
                    x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
                else:
                    x, y = x.to(device), y.to(device)
                with parallel.gradient_sync(step_model, last_micro_step=i == accum - 1):
                    with autocast:
                        _, loss = step_model(x, y)
                    loss = loss / accum
                    loss_sum += loss.detach()
                    scaler.scale(loss).backward()
            # the same value on every rank, so every guard decision below is the same on every rank
            loss_value = dist.all_reduce_mean(loss_sum).item()  # .item() is a CPU-GPU sync point
            verdict = guard.check(step, loss_value)
            grad_norm = None
            if verdict == "ok" or (verdict == "spike" and not tc.skip_spikes):
                if scaler.is_enabled():
                    scaler.unscale_(optimizer)
                clip = oc.grad_clip if oc.grad_clip > 0 else float("inf")
                # of the all-reduced (DDP) or all-reduced shard (FSDP) gradients: the same on every rank
                grad_norm = parallel.clip_gradients(model, clip, fsdp)
                # fp16: the scaler skips steps with inf grads and lowers the scale; under DDP the gradients
                # it checks are already averaged over ranks, so an overflow on one rank is seen by all
                if scaler.is_enabled():
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
                    log.write(NanSkip(step=step - 1, count=guard.nan_skips, consecutive=guard.consecutive))
                if guard.consecutive >= tc.max_nan_skips:
                    save(is_best=False)
                    if log:
                        log.write(End(step=step, reason="nan"))
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
                    log.write(Spike(step=step - 1, loss=loss_value, mean=guard.last_mean, std=guard.last_std))
            if step % tc.log_interval == 0 and verdict != "nan":
                lr = optimizer.param_groups[0]["lr"]
                tok_per_s = tokens_per_iter / dt  # all processes together
                per_gpu = tok_per_s / world
                # the job's model FLOP/s over the job's peak: the same fraction as each GPU's, on average
                fraction = mfu(flops_per_token, tok_per_s, peak * world if peak else None)
                line = iter_line(step, loss_value, dt * 1000, fraction, tok_per_s, lr)
                if world > 1:
                    unit = "GPU" if device.type == "cuda" else "process"
                    line += (f" | {world} processes: tok/s is the total; per {unit} {per_gpu:,.0f} tok/s, "
                             f"{flops_per_token * per_gpu / 1e12:.3g} TFLOP/s; mfu is per {unit}")
                console.print(line)
                if log:
                    log.write(Log(step=step, tokens=tokens_seen, epoch=loader.epoch_float, loss=loss_value, lr=lr,
                              dt_ms=round(dt * 1000, 3), tok_per_s=round(tok_per_s, 1), mfu=fraction,
                              grad_norm=grad_norm, tok_per_s_per_gpu=round(per_gpu, 1),
                              tflops_per_gpu=round(flops_per_token * per_gpu / 1e12, 4)))
            console.progress(step, max_iters, sum(step_times) / len(step_times))

    console.close()
    console.print(f"done: {reason} at step {step}, {tokens_seen:,} tokens, best val loss {best_val:.4f}, "
                  f"{clock(time.time() - launch)} in all; run directory {run_dir}")
    if log:
        log.write(End(step=step, reason=reason))
        log.close()
    return {"step": step, "reason": reason, "best_val_loss": best_val, "val_loss": last_val, "run_dir": run_dir}
