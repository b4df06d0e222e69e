"""The training loop, readable top to bottom: setup (processes and precision, data, the checkpoint to
resume, model and optimizer, data order and training state, the run directory), then one `while` loop
that evaluates, samples, saves, checks whether to stop, runs `train_step` and logs.

The pieces live beside it: step.py (one optimizer step, one evaluation), state.py (TrainState, the
checkpoint's training state), snapshot.py (resume and save), reports.py (what the console and
metrics.jsonl are told), events.py (the metrics.jsonl schema).

One process, or many under torchrun (DDP, or FSDP2 with fsdp=true; see parallel.py and
docs/distributed.md): the loader splits the global micro-batches by rank, evaluation is split and
all-reduced, every decision that ends or skips a step is taken from all-reduced values so all ranks take
it together, and only rank 0 prints and writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from pathlib import Path

import torch

from gptforge.config import Config, to_toml
from gptforge.data.dataset import dataset_tokenizer, open_dataset
from gptforge.data.tokenizers import Tokenizer
from gptforge.errors import UserError
from gptforge.fmt import clock
from gptforge.fsutil import WriteFailed, atomic_write_text, writing
from gptforge.model.gpt import GPT
from gptforge.train import devices, dist, hellaswag, parallel
from gptforge.train.budget import plan_iters
from gptforge.train.console import Console
from gptforge.train.continuation import check_dataset, resumed_schedule
from gptforge.train.eval_point import EvalPoint
from gptforge.train.evalsets import eval_sets
from gptforge.train.events import DataGrew, MetricsLog, Start
from gptforge.train.feed import HostToDevice
from gptforge.train.fit import micro_batching
from gptforge.train.guard import LossGuard, StopFlag
from gptforge.train.loader import TrainLoader
from gptforge.train.optim import apply_lr, build_optimizer
from gptforge.train.reports import log_step, nan_stop_message, report_step, start_lines, start_record
from gptforge.train.rundir import sole_writer, write_failed
from gptforge.train.samples import write_samples
from gptforge.train.snapshot import Saver, check_resume, load_resume, restore
from gptforge.train.state import TrainState, dataset_entry
from gptforge.train.step import Outcome, train_step


def _resolve_model_config(cfg: Config, dataset) -> Config:
    vocab = cfg.model.vocab_size or dataset.vocab_size
    if vocab < dataset.vocab_size:
        raise UserError(
            f"config key 'vocab_size' ({vocab}) is smaller than the dataset's vocabulary ({dataset.vocab_size})"
        )
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vocab_size=vocab))


def _new_model(mc) -> GPT:
    try:
        return GPT(mc)
    except (RuntimeError, MemoryError) as e:
        if "alloc" not in str(e) and not isinstance(e, MemoryError):
            raise
        params = 12 * mc.n_layer * mc.n_embd ** 2 + mc.vocab_size * mc.n_embd
        raise UserError(f"the model (n_layer {mc.n_layer}, n_embd {mc.n_embd}, vocab_size {mc.vocab_size}: about "
                        f"{params / 1e9:,.1f}B parameters, {4 * params / 1e9:,.1f} GB in float32) does not fit in this "
                        "machine's memory; choose a smaller one (`gptforge plan` shows what fits)") from None


def _build_model(cfg: Config, dataset, pretrained: GPT | None) -> tuple[GPT, Config]:
    init = cfg.train.init_from
    if init in ("scratch", "resume"):
        return _new_model(cfg.model), cfg
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


def train(cfg: Config, pretrained: GPT | None = None) -> dict:
    """Train (joining torchrun's process group when launched by torchrun, and leaving it at the end)."""
    device = devices.resolve_device(cfg.train.device)
    created = dist.setup(device)
    try:
        with contextlib.ExitStack() as writer:  # RUN_DIR's lock, taken once the data and config are known
            result = _train(cfg, device, pretrained, writer)
    except RuntimeError as e:
        lost = dist.lost_peer_error(e)
        if lost is None:
            raise
        created = False  # the group is broken; tearing it down could wait on the dead peer
        raise lost from None
    except WriteFailed as e:  # disk full, quota, read-only: one line naming the path and what is still safe
        raise write_failed(e, Path(cfg.train.out)) from None
    finally:
        dist.cleanup(created)
    return result


def _write_config(run_dir: Path, cfg: Config) -> None:
    text = to_toml(cfg)
    with writing(run_dir / "config.toml", len(text.encode())):
        atomic_write_text(run_dir / "config.toml", text)


def _open_run_dir(run_dir: Path, cfg: Config, tokenizer: Tokenizer | None, launch: float, fresh: bool) -> MetricsLog:
    """RUN_DIR with the resolved config and the tokenizer; its metrics.jsonl (started over unless resuming)."""
    _write_config(run_dir, cfg)
    if tokenizer is not None:
        with writing(run_dir / "tokenizer"):
            tokenizer.save(run_dir / "tokenizer")
    tc = cfg.train
    with writing(run_dir / "metrics.jsonl"):
        return MetricsLog(run_dir, wandb_log=tc.wandb_log, wandb_project=tc.wandb_project,
                          wandb_run_name=tc.wandb_run_name, tensorboard=tc.tensorboard, config=cfg.flat(), t0=launch,
                          fresh=fresh)


def _precision(cfg: Config, device: torch.device, world: int):
    """(dtype, fsdp, autocast, scaler), with the seed and the matmul and determinism settings in place."""
    tc = cfg.train
    dtype, autocast, scaler = devices.set_up_precision(tc.dtype, device, tc.seed, tc.deterministic)
    return dtype, parallel.use_fsdp(tc.fsdp, world, cfg.optim.optimizer, dtype), autocast, scaler


def _resume(run_dir: Path, cfg: Config, fsdp: bool, dataset, tokenizer_identity: dict | None, console: Console):
    """(the checkpoint to continue or None, how its dataset relates to this one or None); refuses what may not
    change."""
    resume = load_resume(run_dir, cfg.train.init_from, fsdp, console)
    if not resume:
        return None, None
    changes = check_resume(resume.state, cfg, tokenizer_identity)
    moved = check_dataset(resume.state, dataset, cfg.data.data_changed)  # the same, grown, or another dataset
    console.print(f"resuming from {resume.path}" + (f"; changed: {'; '.join(changes)}" if changes else ""))
    return resume, moved


def _samples_on(cfg: Config, tokenizer: Tokenizer | None, fsdp: bool, console: Console) -> bool:
    tc = cfg.train
    wanted = dist.is_main() and tokenizer is not None and tc.sample_tokens > 0 and bool(tc.sample_prompts)
    if wanted and fsdp:
        console.print("samples during training are off with FSDP (each rank holds a shard); sample a checkpoint "
                      "with `gptforge sample RUN_DIR`")
    return wanted and not fsdp


def _eval_point(cfg: Config, evals, model: GPT, eval_model, tokenizer: Tokenizer | None, device: torch.device,
                autocast, fsdp: bool, console: Console, log: MetricsLog | None) -> EvalPoint:
    """What each eval does: the losses, HellaSwag when it is on (its start line printed), samples when wanted."""
    tc = cfg.train
    swag, swag_line = hellaswag.during_training(tc.hellaswag_interval, tc.eval_interval, tc.hellaswag_file,
                                                tc.hellaswag_limit, tokenizer, cfg.model.vocab_size, device)
    if swag_line:
        console.print(swag_line)
    samples = functools.partial(write_samples, model, tokenizer, tc.sample_prompts, tc.sample_tokens,
                                run_dir=Path(tc.out), device=device, autocast=autocast, console=console)
    return EvalPoint(evals, model, eval_model, device, autocast, swag, console, log,
                     samples if _samples_on(cfg, tokenizer, fsdp, console) else None)


def _stop_for_nans(saver: Saver, state: TrainState, guard: LossGuard, log: MetricsLog | None, lr: float,
                   run_dir: Path):
    saved = saver.save(state, is_best=False)  # (refused, and the run stops, if the weights are not finite)
    if log:
        log.end(state.step, "nan")
    raise UserError(nan_stop_message(state.step, guard, lr, saved or run_dir / "checkpoints"))


def _report_start(start: Start, lines: list[str], grew: dict | None, console: Console, log: MetricsLog | None) -> None:
    """The launch on the console and as metrics.jsonl's start record (with the data's growth since the checkpoint)."""
    for line in lines:
        console.print(line)
    if log:
        log.write(start)
        if grew:
            log.write(DataGrew(step=start.step, **grew))


def _eval_and_save(eval_point: EvalPoint, saver: Saver, state: TrainState, epoch: float, last_step: bool, due: bool,
                   *, baseline: bool, always_save: bool) -> bool:
    """An eval point: measure (a `baseline` after the data grew or changed starts the best val loss over), keep the
    best val loss, save when due; whether this val loss is the best so far."""
    eval_point.measure(state, epoch, last_step, sample=due)
    if baseline:
        state.best_val_loss = state.val_loss  # another val split: its best starts here
    is_best = state.val_loss < state.best_val_loss
    state.best_val_loss = min(state.best_val_loss, state.val_loss)
    if due and state.step > 0 and (always_save or is_best) and not last_step:
        saver.save(state, is_best)
    return is_best


def _stop_reason(stop: StopFlag, last_step: bool, max_seconds: float, train_seconds: float,
                 device: torch.device) -> str | None:
    """Why the run ends before this step, or None: the same answer on every rank."""
    # ranks see signals and clocks at different moments: stop when any rank would (one all-reduce)
    signalled, over_time = dist.any_true_each([stop.requested, bool(max_seconds) and train_seconds >= max_seconds],
                                              device)
    if last_step:
        return "max_iters"
    if signalled:
        return f"signal {stop.signal_name}" if stop.requested else "signal (received by another rank)"
    return "max_seconds" if over_time else None


def _record_split(fit, cfg: Config, state: TrainState, run_dir: Path | None) -> Config:
    """The config with the micro-batch an out-of-memory retry moved to, in the state and (rank 0) config.toml."""
    cfg = fit.applied(cfg)
    state.config = cfg.flat()
    if run_dir is not None:
        _write_config(run_dir, cfg)
    return cfg


def _outcome(state: TrainState, reason: str, run_dir: Path) -> dict:
    return {"step": state.step, "reason": reason, "best_val_loss": state.best_val_loss, "val_loss": state.val_loss,
            "run_dir": run_dir}


def _finish(state: TrainState, reason: str, launch: float, run_dir: Path, console: Console,
            log: MetricsLog | None) -> dict:
    """The run's last line and record; what `train` returns."""
    console.close()
    console.print(f"done: {reason} at step {state.step}, {state.tokens_seen:,} tokens, best val loss "
                  f"{state.best_val_loss:.4f}, {clock(time.time() - launch)} in all; run directory {run_dir}")
    if log:
        log.end(state.step, reason)
    return _outcome(state, reason, run_dir)


def _train(cfg: Config, device: torch.device, pretrained: GPT | None, writer: contextlib.ExitStack) -> dict:
    tc, oc = cfg.train, cfg.optim
    launch = time.time()
    # ---------------------------------------------------------------- processes and precision
    rank, world = dist.rank(), dist.world_size()
    main = rank == 0
    dtype, fsdp, autocast, scaler = _precision(cfg, device, world)
    run_dir = Path(tc.out)
    console = Console(enabled=main)

    # ---------------------------------------------------------------- data, and the checkpoint to resume
    dataset = open_dataset(cfg.data.data)
    tokenizer, tokenizer_identity = dataset_tokenizer(dataset)
    cfg = _resolve_model_config(cfg, dataset)
    writer.enter_context(sole_writer(run_dir, console))  # one `train` per RUN_DIR; leftovers of a kill removed
    resume, moved = _resume(run_dir, cfg, fsdp, dataset, tokenizer_identity, console)

    # data_changed=ok is a permission for this launch: config.toml does not keep it for the next one
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, data_changed="refuse"))

    # ---------------------------------------------------------------- model and optimizer
    model, cfg = _build_model(cfg, dataset, pretrained)
    model.label_smoothing = tc.label_smoothing  # of the training loss only: evals report plain cross-entropy
    params, params_ne = model.num_params(), model.num_params(non_embedding=True)  # (before FSDP shards them)
    flops_per_token = model.flops_per_token()
    if rank:
        torch.manual_seed(tc.seed + rank)  # each rank its own dropout stream (rank 0 keeps a single process's)
    # the micro-batch: as configured, or the largest that fits for batch_size "auto" (before compile and DDP)
    fit = micro_batching(cfg, model, device, autocast, fsdp, first_step=resume.state.step if resume else 0)
    cfg = fit.applied(cfg)
    tc = cfg.train
    use_compile = devices.use_compile(tc.compile, device)
    # DDP / FSDP / plain; `model` keeps plain state_dict keys, step_model is what the step runs through
    step_model, eval_model = parallel.wrap(model, fsdp=fsdp, device=device, dtype=dtype, compile_model=use_compile)
    optimizer = build_optimizer(model, oc, device.type)

    # ---------------------------------------------------------------- data order and training state
    loader = TrainLoader(dataset, tc.batch_size, cfg.model.block_size, tc.seed, rank=rank, world_size=world)
    # the fixed batches each eval measures: train (the loss without dropout), then val, part by part
    evals = eval_sets(dataset, tc.batch_size, cfg.model.block_size, tc.eval_iters, rank, world)
    max_iters = plan_iters(cfg, params)
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_iters=max_iters))
    guard = LossGuard(tc.spike_sigma, tc.max_nan_skips, after_step=oc.warmup_iters)
    state = TrainState(config=cfg.flat(), tokenizer=tokenizer_identity, world_size=world,
                       dataset=dataset_entry(dataset))
    if resume:
        state = restore(resume, state, model=model, optimizer=optimizer, scaler=scaler, loader=loader, guard=guard,
                        fsdp=fsdp, device=device, seed=tc.seed, console=console, data_order=not moved.fresh_order)
        if state.step >= max_iters:  # a finished run: say so, write nothing, exit 0
            console.print(f"nothing to do: the checkpoint is at step {state.step} and max_iters is {max_iters}; "
                          "pass a larger --max_iters (or --max_tokens) to continue")
            return _outcome(state, "nothing to do", run_dir)
    resumed_at = state.step if resume else None
    # after the data grew or changed, the checkpoint itself is measured on the new val split first: the "before"
    # that later evals (and diagnose) compare with, on the same val tokens
    baseline_at = state.step if resume and (loader.grew or moved.fresh_order) else None
    # the LR as a pure function of the step and the schedule's segments (a resume with a new LR begins one)
    schedule, notes = resumed_schedule(resume.state if resume else None, cfg, max_iters, state.step, guard, moved,
                                       grew=bool(loader.grew))
    state.lr_segments = schedule.state() or None

    # ---------------------------------------------------------------- run directory and the start report
    start = start_record(cfg, dataset, device, world, fsdp, params=params, params_non_embedding=params_ne,
                         flops_per_token=flops_per_token, resumed_from=resumed_at, step=state.step,
                         lr_segments=state.lr_segments)
    log = _open_run_dir(run_dir, cfg, tokenizer, launch, fresh=resume is None) if main else None
    _report_start(start, start_lines(start, cfg, dtype, use_compile, loader.grew) + [schedule.describe(state.step)]
                  + notes + [n for n in (fit.note, evals.note()) if n], loader.grew, console, log)
    feed = HostToDevice(device)  # pinned staging buffers on CUDA, reused every step
    saver = Saver(run_dir, tc.keep_last, model, optimizer, scaler, loader, guard, fsdp, device, console, log)
    eval_point = _eval_point(cfg, evals, model, eval_model, tokenizer, device, autocast, fsdp, console, log)

    # ---------------------------------------------------------------- the loop
    stop = StopFlag(announce=main, second_sigint_aborts=not dist.launched_by_torchrun())
    model.train()
    reason, step_times, train_seconds = None, [], 0.0
    with stop.installed():
        while True:
            step = state.step  # optimizer steps done
            last_step, is_best = step == max_iters, False
            # eval (and sample, and save) every eval_interval steps, except the step a resume starts at
            due = (step % tc.eval_interval == 0 or last_step) and step != resumed_at
            if due or step == baseline_at:
                is_best = _eval_and_save(eval_point, saver, state, loader.epoch_float, last_step, due,
                                         baseline=step == baseline_at, always_save=tc.always_save_checkpoint)
            reason = _stop_reason(stop, last_step, tc.max_seconds, train_seconds, device)
            if reason:
                if step != resumed_at:  # (a resume that stops at once already has this checkpoint)
                    saver.save(state, is_best)
                break

            # one optimizer step: accum micro-batches, then the update (or a skip on a bad loss)
            t0 = time.time()
            apply_lr(optimizer, schedule.multiplier(step))
            result = train_step(model, optimizer, loader.step_batches(fit.accum, fit.size), step=step, guard=guard,
                                device=device, step_model=step_model, scaler=scaler, autocast=autocast,
                                grad_clip=oc.grad_clip, skip_spikes=tc.skip_spikes, fsdp=fsdp, to_device=feed, fit=fit)
            if result.shrunk:  # out of memory: the run continues with smaller micro-batches; record them
                cfg = _record_split(fit, cfg, state, run_dir if main else None)
            state.step += 1
            state.tokens_seen += cfg.tokens_per_iter
            dt = time.time() - t0
            train_seconds += dt
            step_times = (step_times + [dt])[-20:]

            report_step(result, guard, tc.skip_spikes, console, log)  # about `step`, the step that went wrong
            if result.outcome is Outcome.NAN_SKIPPED and guard.consecutive >= tc.max_nan_skips:
                _stop_for_nans(saver, state, guard, log, oc.learning_rate, run_dir)
            if state.step % tc.log_interval == 0 and result.outcome is not Outcome.NAN_SKIPPED:
                record, line = log_step(result, start, state.step, state.tokens_seen, loader.epoch_float,
                                        optimizer.param_groups[0]["lr"], dt, gpu=device.type == "cuda")
                console.print(line)
                if log:
                    log.write(record)
            console.progress(state.step, max_iters, sum(step_times) / len(step_times))

    return _finish(state, reason, launch, run_dir, console, log)
