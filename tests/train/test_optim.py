"""Optimizers (AdamW, Muon + AdamW) and learning-rate schedules."""

import copy
import io
import math

import pytest
import torch

from gptforge.config import ModelConfig, OptimConfig
from gptforge.errors import UserError
from gptforge.model.gpt import GPT
from gptforge.train.optim import (
    Float32Muon,
    MuonAdamW,
    Schedule,
    Segment,
    apply_lr,
    build_optimizer,
    is_hidden_matrix,
    lr_at,
    lr_multiplier,
    new_segment,
)


def tiny_model(arch="gpt2", seed=0):
    torch.manual_seed(seed)
    return GPT(ModelConfig(arch=arch, n_layer=2, n_head=2, n_embd=32, block_size=8, vocab_size=50))


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 50, (4, 8), generator=g), torch.randint(0, 50, (4, 8), generator=g)


def train_steps(model, opt, steps, start=0):
    losses = []
    for step in range(start, start + steps):
        x, y = batch(step)
        apply_lr(opt, 0.5 + 0.1 * step)  # a changing lr, as a schedule would set it
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ---- parameter groups ----------------------------------------------------------------------------

def group_of(opt, param):
    return next(g for g in opt.param_groups if any(p is param for p in g["params"]))


def test_adamw_decays_only_matrices():
    model = tiny_model()
    opt = build_optimizer(model, OptimConfig(weight_decay=0.1, learning_rate=1e-3), "cpu")
    assert isinstance(opt, torch.optim.AdamW)
    for name, p in model.named_parameters():
        assert group_of(opt, p)["weight_decay"] == (0.1 if p.ndim >= 2 else 0.0), name
    assert all(g["initial_lr"] == 1e-3 for g in opt.param_groups)
    # every parameter exactly once (the tied wte/lm_head is one tensor)
    ids = [id(p) for g in opt.param_groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(ids) == len(set(ids))


@pytest.mark.parametrize("arch", ["gpt2", "modern"])
def test_muon_takes_hidden_matrices_only(arch):
    model = tiny_model(arch)
    cfg = OptimConfig(optimizer="muon", muon_lr=0.02, learning_rate=1e-3, weight_decay=0.1)
    opt = build_optimizer(model, cfg, "cpu")
    assert isinstance(opt, MuonAdamW)
    muon_ids = {id(p) for g in opt.muon.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        in_muon = id(p) in muon_ids
        assert in_muon == (name.startswith("transformer.h.") and p.ndim == 2), name
        if not in_muon:
            assert group_of(opt.adamw, p)["weight_decay"] == (0.1 if p.ndim >= 2 else 0.0), name
    assert [g["initial_lr"] for g in opt.muon.param_groups] == [0.02]
    # per-step shrink lr * wd equals AdamW's
    assert math.isclose(opt.muon.param_groups[0]["weight_decay"] * 0.02, 0.1 * 1e-3)
    assert "lm_head.weight" not in [n for n, p in model.named_parameters() if id(p) in muon_ids]
    assert is_hidden_matrix("_orig_mod.transformer.h.0.attn.c_attn.weight", torch.zeros(2, 2))
    assert not is_hidden_matrix("module.transformer.wte.weight", torch.zeros(2, 2))


def test_apply_lr_sets_every_group_from_initial_lr():
    model = tiny_model()
    opt = build_optimizer(model, OptimConfig(optimizer="muon", learning_rate=1e-3, muon_lr=0.05), "cpu")
    apply_lr(opt, 0.5)
    assert sorted(g["lr"] for g in opt.param_groups) == [5e-4, 5e-4, 0.025]
    assert opt.muon.param_groups[0]["lr"] == 0.025  # the wrapper's groups are the real ones
    assert opt.param_groups[0]["lr"] == 5e-4  # AdamW's first: the lr a log line reports


# ---- exact resume --------------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_state_dict_round_trip_gives_identical_next_steps(optimizer):
    cfg = OptimConfig(optimizer=optimizer, learning_rate=1e-3)
    model = tiny_model("modern")
    opt = build_optimizer(model, cfg, "cpu")
    train_steps(model, opt, 3)
    saved_model = copy.deepcopy(model.state_dict())
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    continuous = train_steps(model, opt, 3, start=3)

    resumed_model = tiny_model("modern", seed=99)  # different init: everything must come from the save
    resumed_model.load_state_dict(saved_model)
    resumed_opt = build_optimizer(resumed_model, cfg, "cpu")
    buf.seek(0)
    resumed_opt.load_state_dict(torch.load(buf, weights_only=True))
    resumed = train_steps(resumed_model, resumed_opt, 3, start=3)
    assert resumed == continuous
    for (name, a), b in zip(model.state_dict().items(), resumed_model.state_dict().values()):
        assert torch.equal(a, b), name


def test_config_hyperparameters_win_over_the_checkpoint():
    """A resume may lower the learning rate: initial_lr comes from the new config, moments from the file."""
    model = tiny_model()
    opt = build_optimizer(model, OptimConfig(optimizer="muon", learning_rate=1e-3, muon_lr=0.02), "cpu")
    train_steps(model, opt, 2)
    state = opt.state_dict()
    new = build_optimizer(model, OptimConfig(optimizer="muon", learning_rate=5e-4, muon_lr=0.01), "cpu")
    new.load_state_dict(state)
    assert sorted(g["initial_lr"] for g in new.param_groups) == [5e-4, 5e-4, 0.01]
    p = model.transformer.wpe.weight
    assert torch.equal(new.adamw.state[p]["exp_avg"], opt.adamw.state[p]["exp_avg"])


def test_loading_the_wrong_kind_of_state_is_a_user_error():
    model = tiny_model()
    adamw_state = build_optimizer(model, OptimConfig(), "cpu").state_dict()
    muon = build_optimizer(model, OptimConfig(optimizer="muon"), "cpu")
    with pytest.raises(UserError, match="optimizer=adamw"):
        muon.load_state_dict(adamw_state)


def test_muon_does_the_learning_of_hidden_matrices():
    """With AdamW's rate near zero, only Muon's updates of the block matrices can lower the loss."""
    def final_loss(muon_lr):
        torch.manual_seed(0)
        model = GPT(ModelConfig(n_layer=1, n_head=2, n_embd=32, block_size=8, vocab_size=50))
        opt = build_optimizer(model, OptimConfig(optimizer="muon", learning_rate=1e-6, min_lr=0.0,
                                                 muon_lr=muon_lr), "cpu")
        x, y = batch(0)
        for _ in range(25):
            _, loss = model(x, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss.item()

    assert final_loss(0.02) < 3.5  # from 3.97
    assert final_loss(1e-9) > 3.9


def test_float32_muon_is_torch_muon_without_the_bf16_rounding():
    """Off CUDA, Muon orthogonalises in fp32 (bf16 matmuls are ~25x slower on CPUs without bf16 units):
    the same update as torch.optim.Muon up to bf16 rounding, the same state, checkpoints interchangeable."""
    assert type(build_optimizer(tiny_model(), OptimConfig(optimizer="muon"), "cpu").muon) is Float32Muon
    g = torch.Generator().manual_seed(0)
    shapes = [(96, 32), (32, 128), (32, 32)]  # tall, wide, square
    starts = [torch.randn(s, generator=g) for s in shapes]
    ours = [torch.nn.Parameter(start.clone()) for start in starts]
    torchs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    hyper = dict(lr=0.02, weight_decay=0.1, momentum=0.9)
    a, b = Float32Muon(ours, **hyper), torch.optim.Muon(torchs, **hyper)
    for _ in range(3):
        for p, q in zip(ours, torchs):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        a.step()
        b.step()
    for p, q, start in zip(ours, torchs, starts):
        moved = (q - start).abs().max().item()
        assert moved > 0.02 and (p - q).abs().max().item() < 0.03 * moved  # bf16 rounding: ~1.5%
    assert a.state_dict()["state"].keys() == b.state_dict()["state"].keys()
    b.load_state_dict(a.state_dict())  # a CPU run's Muon state resumes in torch's own Muon
    assert torch.equal(b.state[torchs[0]]["momentum_buffer"], a.state[ours[0]]["momentum_buffer"])


# ---- schedules -----------------------------------------------------------------------------------

def cfg(**kw):
    values = dict(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, lr_decay_iters=110, schedule="cosine")
    values.update(kw)
    return OptimConfig(**values)


def test_cosine_matches_nanogpt():
    c = cfg()

    def nanogpt_get_lr(it):  # nanoGPT's train.py, verbatim in substance
        if it < 10:
            return 1e-3 * (it + 1) / (10 + 1)
        if it > 110:
            return 1e-4
        ratio = (it - 10) / (110 - 10)
        return 1e-4 + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (1e-3 - 1e-4)

    for step in [0, 1, 9, 10, 11, 60, 109, 110, 111, 10_000]:
        assert math.isclose(lr_multiplier(step, c, 500) * 1e-3, nanogpt_get_lr(step), rel_tol=1e-12), step
    assert lr_multiplier(10, c, 500) == 1.0
    assert math.isclose(lr_multiplier(60, c, 500), 0.55)  # halfway: (1 + 0.1) / 2
    assert math.isclose(lr_multiplier(110, c, 500), 0.1)


def test_schedule_edge_cases():
    # warmup 0: full rate at step 0
    assert lr_multiplier(0, cfg(warmup_iters=0), 100) == 1.0
    # lr_decay_iters 0 means max_iters
    assert lr_multiplier(50, cfg(lr_decay_iters=0, warmup_iters=0), 100) == lr_multiplier(
        50, cfg(lr_decay_iters=100, warmup_iters=0), 999)
    assert math.isclose(lr_multiplier(100, cfg(lr_decay_iters=0), 100), 0.1)
    # beyond decay: min_lr, for every schedule that decays
    for schedule in ("cosine", "wsd"):
        assert math.isclose(lr_multiplier(10**9, cfg(schedule=schedule), 100), 0.1)
    # warmup longer than the decay: warmup, then straight to the floor (no division by zero)
    c = cfg(warmup_iters=50, lr_decay_iters=20)
    assert lr_multiplier(49, c, 100) == 50 / 51 and math.isclose(lr_multiplier(50, c, 100), 0.1)
    # constant
    c = cfg(schedule="constant", warmup_iters=4)
    assert [lr_multiplier(s, c, 10) for s in (0, 3, 4, 10**6)] == [0.2, 0.8, 1.0, 1.0]
    # min_lr 0 floor
    assert lr_multiplier(200, cfg(min_lr=0.0), 100) == 0.0
    with pytest.raises(ValueError):
        lr_multiplier(-1, cfg(), 100)


def test_wsd():
    c = cfg(schedule="wsd", warmup_iters=10, lr_decay_iters=100, decay_fraction=0.2)
    # stable from 10 to 80, then linear to 0.1 at 100
    assert lr_multiplier(10, c, 0) == 1.0 and lr_multiplier(79, c, 0) == 1.0
    assert lr_multiplier(80, c, 0) == 1.0
    assert math.isclose(lr_multiplier(90, c, 0), 0.55)
    assert math.isclose(lr_multiplier(99, c, 0), 1.0 - 19 / 20 * 0.9)
    assert math.isclose(lr_multiplier(100, c, 0), 0.1)
    # decay_fraction 1: decay starts right after warmup
    c = cfg(schedule="wsd", warmup_iters=10, lr_decay_iters=100, decay_fraction=1.0)
    assert lr_multiplier(10, c, 0) == 1.0 and math.isclose(lr_multiplier(55, c, 0), 0.55)
    # decay_fraction 0: stable to the end, then the floor
    c = cfg(schedule="wsd", warmup_iters=0, lr_decay_iters=100, decay_fraction=0.0)
    assert lr_multiplier(99, c, 0) == 1.0 and math.isclose(lr_multiplier(100, c, 0), 0.1)


def test_schedule_is_monotone_after_warmup():
    for schedule in ("cosine", "wsd"):
        c = cfg(schedule=schedule, warmup_iters=5, lr_decay_iters=0)
        values = [lr_multiplier(s, c, 200) for s in range(5, 260)]
        assert all(a >= b for a, b in zip(values, values[1:])), schedule
        assert values[0] == 1.0 and math.isclose(values[-1], 0.1)


# ---- schedule segments (a resume with another learning rate) ------------------------------------------------

def test_a_segment_warms_up_from_the_old_lr_to_the_new_peak_then_decays_to_the_new_floor():
    old, new = cfg(lr_decay_iters=0), cfg(learning_rate=3e-4, min_lr=3e-5, lr_decay_iters=0)
    seg = new_segment(400, old, 400, [], new, 800)
    assert seg == Segment(400, old.min_lr, 10, 3e-4, 3e-5)  # the old cosine had reached its floor at 400
    s = Schedule(new, 800, [seg])
    assert s.lr(400) == 1e-4 and math.isclose(s.lr(405), 1e-4 + 0.5 * (3e-4 - 1e-4)) and s.lr(410) == 3e-4
    decay = [s.lr(k) for k in range(410, 801)]
    assert all(a >= b for a, b in zip(decay, decay[1:])) and math.isclose(decay[-1], 3e-5)
    assert math.isclose(s.lr(605), 3e-5 + 0.5 * (3e-4 - 3e-5))  # half way through the cosine
    # the multiplier apply_lr uses is the same schedule as a fraction of the configured peak
    assert all(math.isclose(s.multiplier(k) * 3e-4, s.lr(k)) for k in range(395, 801, 7))


def test_segments_edge_cases():
    old = cfg()
    # a resume near the end: no room for a warmup, straight to the new peak's schedule
    assert new_segment(100, old, 100, [], cfg(learning_rate=2e-3), 105).warmup == 0
    # a higher old LR ramps down to the new peak; the start equals the old schedule's value exactly
    seg = new_segment(20, old, 110, [], cfg(learning_rate=1e-4, min_lr=1e-5, warmup_iters=4), 100)
    s = Schedule(cfg(learning_rate=1e-4, min_lr=1e-5, warmup_iters=4), 100, [seg])
    assert s.lr(20) == lr_at(20, old, 110) > s.lr(22) > s.lr(24) == 1e-4
    # lr_decay_iters before the segment's decay starts: the decay runs to max_iters instead
    s = Schedule(cfg(lr_decay_iters=30), 100, [Segment(50, 1e-4, 0, 1e-3, 1e-4)])
    assert s.lr(50) == 1e-3 and math.isclose(s.lr(100), 1e-4)
    # constant and wsd shapes inside a segment
    s = Schedule(cfg(schedule="constant"), 100, [Segment(50, 0.0, 10, 1e-3, 1e-4)])
    assert [s.lr(k) for k in (50, 55, 60, 99)] == [0.0, 5e-4, 1e-3, 1e-3]
    s = Schedule(cfg(schedule="wsd", decay_fraction=0.5, lr_decay_iters=0), 150, [Segment(50, 1e-3, 0, 1e-3, 1e-4)])
    assert s.lr(99) == 1e-3 and math.isclose(s.lr(125), 5.5e-4) and math.isclose(s.lr(150), 1e-4)
    # a zero learning rate is a zero schedule, not a division by zero
    assert Schedule(cfg(learning_rate=0.0, min_lr=0.0), 100, [Segment(5, 1e-3, 2, 0.0, 0.0)]).multiplier(50) == 0.0
    assert lr_at(50, cfg(learning_rate=0.0, min_lr=0.0), 100) == 0.0


def test_earlier_segments_keep_their_own_values_and_steps_before_any_follow_the_configured_schedule():
    c = cfg(learning_rate=2e-4, min_lr=2e-5)
    first, second = Segment(100, 1e-4, 0, 5e-4, 5e-5), Segment(200, 3e-4, 0, 2e-4, 2e-5)
    s = Schedule(c, 300, [first, second])
    assert s.lr(50) == lr_at(50, c, 300)  # before any segment: the schedule as configured now
    assert s.lr(100) == 5e-4  # the first segment at its own peak
    assert s.lr(200) == 2e-4 and math.isclose(s.lr(300), 2e-5)  # the last one follows the config
    assert s.state() == [dict(start=100, from_lr=1e-4, warmup=0, learning_rate=5e-4, min_lr=5e-5),
                         dict(start=200, from_lr=3e-4, warmup=0, learning_rate=2e-4, min_lr=2e-5)]
    assert [Segment.from_dict(d) for d in s.state()] == s.segments
    # without segments the multiplier is the configured schedule, bit for bit (exact resume of older runs)
    assert all(Schedule(c, 300).multiplier(k) == lr_multiplier(k, c, 300) for k in range(0, 320, 3))


def test_the_start_report_line_says_where_the_lr_is_and_where_it_ends():
    c = cfg(lr_decay_iters=0)
    assert Schedule(c, 100).describe(0) == ("learning rate 9.09e-05 now (step 0), 0.0001 at the end (step 99); cosine "
                                            "schedule, peak 0.001, warmup 10 steps")
    s = Schedule(cfg(learning_rate=3e-4, min_lr=3e-5, lr_decay_iters=0), 200, [Segment(100, 1e-4, 10, 3e-4, 3e-5)])
    assert s.describe(100).endswith("a new schedule segment from step 100: 10 steps from 0.0001 to the new peak "
                                    "0.0003, then cosine to 3e-05 (lr_schedule_on_resume=continue keeps the old "
                                    "schedule)")
    assert s.describe(150).endswith("in the schedule segment begun at step 100: peak 0.0003, then cosine to 3e-05")
