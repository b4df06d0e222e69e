"""Optimizers and learning-rate schedules.

AdamW (fused on CUDA) with weight decay on matrices only, or Muon (PyTorch's torch.optim.Muon) for the
hidden matrices of the transformer blocks with AdamW for everything else (embeddings, head, norms,
biases), behind one object. Schedules are pure functions of the step (and of the segments that resumes with
another learning rate began, kept in the checkpoint): nothing to drift on resume.

torch.optim.Muon orthogonalises in bf16, which CPUs without native bf16 matmuls run ~25x slower than
fp32 (a 512x128 Newton-Schulz took 150 ms vs 6 ms in fp32 on a 2-core AVX2 machine), so off CUDA the
same update runs in fp32 (Float32Muon).

Hyperparameters come from the config, state from the checkpoint: after load_state_dict every group keeps
the configured initial_lr, betas, weight decay and momentum (so a resume may lower the learning rate),
and only the moments / momentum buffers come from the file.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from gptforge.config import OptimConfig
from gptforge.errors import UserError

# keys of a param group restored from the config after loading a state dict ("lr" is set by apply_lr)
_FROM_FILE = ("params", "lr")


def _plain_name(name: str) -> str:
    for prefix in ("module.", "_orig_mod."):  # DDP and torch.compile wrappers
        while name.startswith(prefix):
            name = name[len(prefix):]
    return name


def is_hidden_matrix(name: str, param: torch.Tensor) -> bool:
    """A 2-D weight inside a transformer block: what Muon is for (not embeddings, not the head)."""
    return param.ndim == 2 and _plain_name(name).startswith("transformer.h.")


def _keep_config_hyperparams(optimizer: torch.optim.Optimizer) -> None:
    configured = [{k: v for k, v in g.items() if k not in _FROM_FILE} for g in optimizer.param_groups]

    def restore(opt: torch.optim.Optimizer) -> None:
        for group, values in zip(opt.param_groups, configured):
            group.update(values)

    optimizer.register_load_state_dict_post_hook(restore)


def _adamw(groups: list[dict], cfg: OptimConfig, device_type: str) -> torch.optim.AdamW:
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["initial_lr"] = cfg.learning_rate
    # fused is the fastest on CUDA; on CPU the default for-loop is deterministic and simple
    opt = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(cfg.beta1, cfg.beta2),
                            fused=True if device_type == "cuda" else None)
    _keep_config_hyperparams(opt)
    return opt


def _closure_loss(closure) -> torch.Tensor | None:
    """torch.optim's closure convention: re-evaluate the loss with gradients on, if asked to."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class Float32Muon(torch.optim.Muon):
    """torch.optim.Muon with its Newton-Schulz iteration in fp32: torch's constructor, defaults, update
    rule and state ("momentum_buffer"), so checkpoints move between CPU and CUDA runs."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        for group in self.param_groups:
            lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(param.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(param.grad, 1 - momentum)
                update = param.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = orthogonalize(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
                param.mul_(1 - lr * weight_decay)
                param.add_(update, alpha=-lr * muon_lr_ratio(group.get("adjust_lr_fn"), param.shape))
        return loss


def orthogonalize(grad: torch.Tensor, coefficients, steps: int, eps: float) -> torch.Tensor:
    """torch.optim.Muon's quintic Newton-Schulz iteration (towards U V^T of grad = U S V^T), in fp32."""
    a, b, c = coefficients
    wide = grad.size(0) <= grad.size(1)
    x = grad.float() if wide else grad.float().T
    x = x / x.norm().clamp(min=eps)  # spectral norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x if wide else x.T


def muon_lr_ratio(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch.optim.Muon's per-matrix learning-rate factor."""
    rows, cols = shape[:2]
    if adjust_lr_fn in (None, "original"):
        return math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


class MuonAdamW:
    """torch.optim.Muon for hidden matrices plus AdamW for the rest, used as one optimizer.

    param_groups lists AdamW's groups then Muon's (the same dicts, so setting "lr" takes effect; the
    first group's lr is the learning_rate-based one a log line shows);
    state_dict() is {"muon": ..., "adamw": ...}; step() steps both. Works with GradScaler, which
    only needs param_groups and step()."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer):
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self) -> list[dict]:
        return self.adamw.param_groups + self.muon.param_groups

    @property
    def state(self) -> dict:
        return {**self.muon.state, **self.adamw.state}

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self, closure=None):
        loss = _closure_loss(closure)
        self.muon.step()
        self.adamw.step()
        return loss

    def state_dict(self) -> dict:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or set(state) != {"muon", "adamw"}:
            raise UserError("optimizer state is not a Muon+AdamW state (was the run trained with optimizer=adamw?)")
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, device_type: str):
    """AdamW, or Muon + AdamW, over the model's trainable parameters; every group has "initial_lr"."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # a tied weight appears once
    if cfg.optimizer == "adamw":
        return _adamw([
            {"params": [p for _, p in named if p.ndim >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for _, p in named if p.ndim < 2], "weight_decay": 0.0},
        ], cfg, device_type)
    if cfg.optimizer != "muon":
        raise UserError(f"config key 'optimizer': {cfg.optimizer!r} is not one of 'adamw', 'muon'")
    if not hasattr(torch.optim, "Muon"):
        raise UserError(f"optimizer=muon needs torch >= 2.9 (torch.optim.Muon); this is torch {torch.__version__}")
    hidden = [p for n, p in named if is_hidden_matrix(n, p)]
    rest = [(n, p) for n, p in named if not is_hidden_matrix(n, p)]
    if not hidden:
        raise UserError("optimizer=muon: the model has no hidden matrices for Muon (n_layer must be > 0)")
    # Muon's decoupled decay multiplies by (1 - lr * wd): scale wd so the per-step shrink matches AdamW's
    muon_wd = cfg.weight_decay * cfg.learning_rate / cfg.muon_lr
    muon_class = torch.optim.Muon if device_type == "cuda" else Float32Muon
    muon = muon_class([{"params": hidden, "initial_lr": cfg.muon_lr}], lr=cfg.muon_lr,
                            momentum=cfg.muon_momentum, weight_decay=muon_wd, nesterov=True)
    _keep_config_hyperparams(muon)
    adamw = _adamw([
        {"params": [p for _, p in rest if p.ndim >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for _, p in rest if p.ndim < 2], "weight_decay": 0.0},
    ], cfg, device_type)
    return MuonAdamW(muon, adamw)


def lr_multiplier(step: int, cfg: OptimConfig, max_iters: int) -> float:
    """The learning rate at `step` as a fraction of the configured peak (pure; same after a resume).

    Warmup: linear, (step + 1) / (warmup_iters + 1) as nanoGPT. Then "constant": 1; "cosine": nanoGPT's
    cosine from 1 to min_lr / learning_rate at lr_decay_iters; "wsd": 1 until the last decay_fraction of
    lr_decay_iters, then linear to min_lr / learning_rate. Past lr_decay_iters (0 means max_iters):
    min_lr / learning_rate."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    floor = cfg.min_lr / cfg.learning_rate if cfg.learning_rate else 0.0
    decay_iters = cfg.lr_decay_iters if cfg.lr_decay_iters > 0 else max_iters
    warmup = cfg.warmup_iters
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if cfg.schedule == "constant":
        return 1.0
    if step >= decay_iters:
        return floor
    if cfg.schedule == "cosine":
        ratio = (step - warmup) / (decay_iters - warmup)  # > 0 denominator: warmup <= step < decay_iters
        return floor + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (1.0 - floor)
    if cfg.schedule == "wsd":
        decay_start = max(warmup, decay_iters - round(cfg.decay_fraction * decay_iters))
        if step < decay_start:
            return 1.0
        return 1.0 - (step - decay_start) / (decay_iters - decay_start) * (1.0 - floor)
    raise UserError(f"config key 'schedule': {cfg.schedule!r} is not one of 'cosine', 'wsd', 'constant'")


@dataclass(frozen=True)
class Segment:
    """A stretch of the schedule begun by a resume with another learning rate or min_lr: from the LR the schedule
    had at `start`, `warmup` steps of a straight line to the new peak, then the configured decay (cosine, wsd,
    constant) to min_lr at lr_decay_iters, or at max_iters when lr_decay_iters is not past the warmup."""

    start: int
    from_lr: float
    warmup: int
    learning_rate: float  # the peak it began with (the last segment follows the config: the same values)
    min_lr: float

    @classmethod
    def from_dict(cls, d: dict) -> Segment:
        return cls(int(d["start"]), float(d["from_lr"]), int(d["warmup"]), float(d["learning_rate"]),
                   float(d["min_lr"]))


def lr_at(step: int, cfg: OptimConfig, max_iters: int, segments: list[Segment] = ()) -> float:
    """The learning rate of `step` (AdamW's; Muon's is muon_lr times the same fraction of the peak): the
    configured schedule, or the segment the step falls in."""
    seg = next((s for s in reversed(segments) if s.start <= step), None)
    if seg is None:
        return cfg.learning_rate * lr_multiplier(step, cfg, max_iters)
    last = seg is segments[-1]
    peak, floor = (cfg.learning_rate, cfg.min_lr) if last else (seg.learning_rate, seg.min_lr)
    local = step - seg.start
    if local < seg.warmup:
        return seg.from_lr + (peak - seg.from_lr) * local / seg.warmup  # from where the old schedule was
    decay_start = seg.start + seg.warmup
    end = cfg.lr_decay_iters if cfg.lr_decay_iters > decay_start else max_iters
    shape = dataclasses.replace(cfg, learning_rate=peak, min_lr=floor, warmup_iters=0, lr_decay_iters=0)
    return peak * lr_multiplier(step - decay_start, shape, end - decay_start) if peak else 0.0


def new_segment(step: int, before: OptimConfig, before_max_iters: int, segments: list[Segment], cfg: OptimConfig,
                max_iters: int) -> Segment:
    """The segment a resume at `step` with the config `cfg` begins, after a run configured as `before`: its warmup
    is warmup_iters, at most a tenth of the steps left, from the LR `before` gives `step`."""
    warmup = min(cfg.warmup_iters, max(0, max_iters - step) // 10)
    return Segment(step, lr_at(step, before, before_max_iters, segments), warmup, cfg.learning_rate, cfg.min_lr)


@dataclass
class Schedule:
    """The run's learning rate as a pure function of the step: the configured schedule and its segments."""

    cfg: OptimConfig
    max_iters: int
    segments: list[Segment] = dataclasses.field(default_factory=list)

    def lr(self, step: int) -> float:
        return lr_at(step, self.cfg, self.max_iters, self.segments)

    def multiplier(self, step: int) -> float:
        """The fraction of the configured peak that apply_lr scales every group's initial_lr by."""
        if not self.segments:
            return lr_multiplier(step, self.cfg, self.max_iters)
        return self.lr(step) / self.cfg.learning_rate if self.cfg.learning_rate else 0.0

    def state(self) -> list[dict]:
        return [dataclasses.asdict(s) for s in self.segments]

    def describe(self, step: int) -> str:
        """The start report's line: the LR now and at the end, and the segment a resume began."""
        c, end = self.cfg, max(self.max_iters - 1, step)
        text = f"learning rate {self.lr(step):.3g} now (step {step}), {self.lr(end):.3g} at the end (step {end})"
        seg = self.segments[-1] if self.segments else None
        decay = "constant" if c.schedule == "constant" else f"{c.schedule} to {c.min_lr:g}"
        if seg is None:
            return text + f"; {c.schedule} schedule, peak {c.learning_rate:g}, warmup {c.warmup_iters} steps"
        if seg.start < step:
            return text + f"; in the schedule segment begun at step {seg.start}: peak {c.learning_rate:g}, then {decay}"
        return (text + f"; a new schedule segment from step {seg.start}: {seg.warmup} steps from {seg.from_lr:.3g} "
                f"to the new peak {c.learning_rate:g}, then {decay} (lr_schedule_on_resume=continue keeps the old "
                "schedule)")


def apply_lr(optimizer, multiplier: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * multiplier
