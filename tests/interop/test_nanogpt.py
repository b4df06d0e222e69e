"""nanoGPT files: meta.pkl read safely; ckpt.pt imported into a run that samples and resumes exactly.

The checkpoints here are made the way nanoGPT makes them: a faithful copy of nanoGPT's GPT module
(model.py: names, parameter order, exact GELU, weight tying), its configure_optimizers grouping, a few
real training steps, and torch.save of nanoGPT's dict layout."""

import io
import math
import pickle
import random

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from gptforge.config import load_config
from gptforge.data.nanogpt_meta import read_meta_pkl
from gptforge.errors import UserError
from gptforge.interop.nanogpt import import_nanogpt_command
from gptforge.model.gpt import GPT
from gptforge.train.checkpoint import latest_checkpoint, load_checkpoint
from gptforge.train.optim import apply_lr, build_optimizer, lr_multiplier

from helpers import nanogpt_char_folder

# ---- a copy of nanoGPT's model (karpathy/nanoGPT model.py), trimmed to what matters here ----------

class NanoLayerNorm(nn.Module):
    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class NanoAttention(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.c_attn = nn.Linear(a["n_embd"], 3 * a["n_embd"], bias=a["bias"])
        self.c_proj = nn.Linear(a["n_embd"], a["n_embd"], bias=a["bias"])
        self.n_head = a["n_head"]

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class NanoMLP(nn.Module):
    def __init__(self, a, approximate):
        super().__init__()
        self.c_fc = nn.Linear(a["n_embd"], 4 * a["n_embd"], bias=a["bias"])
        self.gelu = nn.GELU(approximate=approximate)  # nanoGPT: nn.GELU(), the exact one
        self.c_proj = nn.Linear(4 * a["n_embd"], a["n_embd"], bias=a["bias"])

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class NanoBlock(nn.Module):
    def __init__(self, a, approximate):
        super().__init__()
        self.ln_1 = NanoLayerNorm(a["n_embd"], a["bias"])
        self.attn = NanoAttention(a)
        self.ln_2 = NanoLayerNorm(a["n_embd"], a["bias"])
        self.mlp = NanoMLP(a, approximate)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    def __init__(self, a, approximate="none"):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(a["vocab_size"], a["n_embd"]), wpe=nn.Embedding(a["block_size"], a["n_embd"]),
            drop=nn.Dropout(a["dropout"]), h=nn.ModuleList([NanoBlock(a, approximate) for _ in range(a["n_layer"])]),
            ln_f=NanoLayerNorm(a["n_embd"], a["bias"])))
        self.lm_head = nn.Linear(a["n_embd"], a["vocab_size"], bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)

    def forward(self, idx, targets=None):
        pos = torch.arange(idx.size(1))
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = (
            None
            if targets is None
            else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        )
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas):
        param_dict = {pn: p for pn, p in self.named_parameters() if p.requires_grad}
        groups = [
            {"params": [p for p in param_dict.values() if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in param_dict.values() if p.dim() < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)


CONFIG = dict(
    out_dir="out",
    eval_interval=4,
    log_interval=1,
    eval_iters=2,
    eval_only=False,
    always_save_checkpoint=True,
    init_from="scratch",
    wandb_log=False,
    wandb_project="owt",
    wandb_run_name="gpt2",
    dataset="shakespeare_char",
    gradient_accumulation_steps=1,
    batch_size=4,
    block_size=16,
    n_layer=2,
    n_head=2,
    n_embd=32,
    dropout=0.0,
    bias=True,
    learning_rate=1e-3,
    max_iters=40,
    weight_decay=0.1,
    beta1=0.9,
    beta2=0.99,
    grad_clip=1.0,
    decay_lr=True,
    warmup_iters=3,
    lr_decay_iters=40,
    min_lr=1e-4,
    backend="nccl",
    device="cpu",
    dtype="float32",
    compile=False,
)


def nanogpt_get_lr(it, c=CONFIG):  # nanoGPT's train.py
    if it < c["warmup_iters"]:
        return c["learning_rate"] * (it + 1) / (c["warmup_iters"] + 1)
    if it > c["lr_decay_iters"]:
        return c["min_lr"]
    ratio = (it - c["warmup_iters"]) / (c["lr_decay_iters"] - c["warmup_iters"])
    return c["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (c["learning_rate"] - c["min_lr"])


def nanogpt_step(model, opt, it, x, y):
    for group in opt.param_groups:
        group["lr"] = nanogpt_get_lr(it)
    _, loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), CONFIG["grad_clip"])
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def char_folder(root):
    """nanoGPT's data/shakespeare_char layout: train.bin, val.bin (uint16, no header) and meta.pkl."""
    rng = random.Random(0)
    words = ["the king", "my lord", "a rose", "sweet night", "fair queen", "good sir"]
    text = "\n".join(f"{rng.choice(words)} and {rng.choice(words)}!" for _ in range(600))
    return nanogpt_char_folder(root, text)


def batch(ids, it):
    g = torch.Generator().manual_seed(1000 + it)
    starts = torch.randint(len(ids) - 17, (4,), generator=g)
    data = torch.from_numpy(ids.astype(np.int64))
    return torch.stack([data[s:s + 16] for s in starts]), torch.stack([data[s + 1:s + 17] for s in starts])


@pytest.fixture
def nanogpt_repo(tmp_path):
    """A nanoGPT checkout after 5 iterations of a char-level run: out/ckpt.pt and data/shakespeare_char/."""
    data, train_ids, vocab = char_folder(tmp_path / "nanoGPT" / "data" / "shakespeare_char")
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, bias=True, vocab_size=vocab, dropout=0.0)
    model = NanoGPT(args)
    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99))
    for it in range(5):
        nanogpt_step(model, opt, it, *batch(train_ids, it))
    # as saved by nanoGPT after torch.compile, with the mask buffer older versions kept
    state = {"_orig_mod." + k: v for k, v in model.state_dict().items()}
    for i in range(2):
        state[f"_orig_mod.transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(16, 16)).view(1, 1, 16, 16)
    ckpt = {"model": state, "optimizer": opt.state_dict(), "model_args": args, "iter_num": 5,
            "best_val_loss": torch.tensor(3.25), "config": dict(CONFIG)}
    (tmp_path / "nanoGPT" / "out").mkdir()
    torch.save(ckpt, tmp_path / "nanoGPT" / "out" / "ckpt.pt")
    return dict(ckpt=tmp_path / "nanoGPT" / "out" / "ckpt.pt", data=data, model=model, opt=opt, train_ids=train_ids,
                vocab=vocab, args=args)


# ---- meta.pkl -------------------------------------------------------------------------------------

def test_read_meta_pkl(tmp_path):
    data, _, vocab = char_folder(tmp_path / "d")
    with open(data / "meta.pkl", "rb") as f:
        original = pickle.load(f)
    meta = read_meta_pkl(data / "meta.pkl")
    assert meta == original and meta["vocab_size"] == vocab
    for protocol in (0, 2, 5):  # every protocol nanoGPT's Python may have written
        (tmp_path / "m.pkl").write_bytes(pickle.dumps(original, protocol=protocol))
        assert read_meta_pkl(tmp_path / "m.pkl") == original


class Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_meta_pkl_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 3, "itos": Evil(marker)}))
    with pytest.raises(UserError, match=r"meta\.pkl is not a plain nanoGPT meta\.pkl: refused .*posix\.system"):
        read_meta_pkl(tmp_path / "meta.pkl")
    assert not marker.exists()
    # a harmless-looking class is refused too: nothing but plain data is built
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 3, "x": random.Random()}))
    with pytest.raises(UserError, match="random.Random"):
        read_meta_pkl(tmp_path / "meta.pkl")


@pytest.mark.parametrize("meta,message", [
    ([1, 2], "holds a list"),
    ({"itos": {0: "a"}}, "'vocab_size' must be a positive integer"),
    ({"vocab_size": 2, "itos": {0: "a"}}, "'itos' has 1 entries but vocab_size is 2"),
    ({"vocab_size": 2, "itos": {0: "a", 2: "b"}}, "'itos' must map the ids"),
    ({"vocab_size": 2, "itos": {0: "a", 1: "b"}, "stoi": {"a": 1, "b": 0}}, "disagree"),
])
def test_bad_meta_pkl(tmp_path, meta, message):
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps(meta))
    with pytest.raises(UserError, match=message):
        read_meta_pkl(tmp_path / "meta.pkl")
    (tmp_path / "meta.pkl").write_bytes(b"\x80\x04garbage")
    with pytest.raises(UserError, match="not a plain nanoGPT meta.pkl"):
        read_meta_pkl(tmp_path / "meta.pkl")


# ---- ckpt.pt --------------------------------------------------------------------------------------

def test_import_carries_weights_optimizer_and_hyperparameters_exactly(nanogpt_repo, tmp_path):
    out = import_nanogpt_command(nanogpt_repo["ckpt"], tmp_path / "run", data=str(nanogpt_repo["data"]))
    ckpt = load_checkpoint(latest_checkpoint(out))
    assert latest_checkpoint(out).name == "step_00000005"
    nano, vocab = nanogpt_repo["model"].state_dict(), nanogpt_repo["vocab"]
    for name, tensor in ckpt["model"].items():
        if name in ("transformer.wte.weight", "lm_head.weight"):
            assert torch.equal(tensor[:vocab], nano[name]) and not tensor[vocab:].any()
        else:
            assert torch.equal(tensor, nano[name]), name
    # optimizer moments, matched by parameter name
    model = GPT(load_config(str(out / "config.toml")).model)
    opt = build_optimizer(model, load_config(str(out / "config.toml")).optim, "cpu")
    opt.load_state_dict(ckpt["optimizer"])
    nano_params = dict(nanogpt_repo["model"].named_parameters())
    for name, p in model.named_parameters():
        theirs = nanogpt_repo["opt"].state[nano_params[name]]
        ours = opt.state[p]
        assert ours["step"].item() == theirs["step"].item() == 5
        rows = theirs["exp_avg"].shape[0]
        assert torch.equal(ours["exp_avg"][:rows], theirs["exp_avg"]), name
        assert torch.equal(ours["exp_avg_sq"][:rows], theirs["exp_avg_sq"]), name
    state = ckpt["state"]
    assert (state["step"], state["tokens_seen"], state["best_val_loss"]) == (5, 5 * 4 * 16, 3.25)
    cfg = state["config"]
    for key in ("learning_rate", "min_lr", "warmup_iters", "lr_decay_iters", "beta2", "max_iters", "batch_size"):
        assert cfg[key] == CONFIG[key], key
    assert cfg["vocab_size"] == vocab and cfg["schedule"] == "cosine" and cfg["init_from"] == "resume"
    assert state["tokenizer"]["kind"] == "char" and state["imported_from"]["optimizer"] == "carried over"
    assert (out / "tokenizer").is_dir() and (out / "config.toml").is_file()


def test_next_step_equals_nanogpts_next_step(nanogpt_repo, tmp_path):
    """The imported optimizer and schedule continue the run: one more step in nanoGPT and in gptforge
    on the same batch give the same parameters (the reference uses GPT-2's tanh GELU to match the math)."""
    out = import_nanogpt_command(nanogpt_repo["ckpt"], tmp_path / "run", data=str(nanogpt_repo["data"]))
    x, y = batch(nanogpt_repo["train_ids"], 5)
    nano = NanoGPT(nanogpt_repo["args"], approximate="tanh")
    nano.load_state_dict(nanogpt_repo["model"].state_dict())
    nano_opt = nano.configure_optimizers(0.1, 1e-3, (0.9, 0.99))
    nano_opt.load_state_dict(nanogpt_repo["opt"].state_dict())
    nano_loss = nanogpt_step(nano, nano_opt, 5, x, y)

    cfg = load_config(str(out / "config.toml"))
    ckpt = load_checkpoint(latest_checkpoint(out))
    model = GPT(cfg.model)
    model.load_state_dict(ckpt["model"])
    opt = build_optimizer(model, cfg.optim, "cpu")
    opt.load_state_dict(ckpt["optimizer"])
    apply_lr(opt, lr_multiplier(ckpt["state"]["step"], cfg.optim, cfg.train.max_iters))
    assert math.isclose(opt.param_groups[0]["lr"], nanogpt_get_lr(5), rel_tol=1e-12)
    _, loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    opt.step()
    assert abs(loss.item() - nano_loss) < 1e-5
    vocab = nanogpt_repo["vocab"]
    theirs = nano.state_dict()
    for name, tensor in model.state_dict().items():
        mine = tensor[:vocab] if name in ("transformer.wte.weight", "lm_head.weight") else tensor
        assert torch.allclose(mine, theirs[name], atol=1e-6, rtol=0), name


def test_exact_gelu_difference_is_small(nanogpt_repo, tmp_path):
    """nanoGPT's exact GELU vs GPT-2's tanh form: the imported model's logits stay within 1e-2."""
    out = import_nanogpt_command(nanogpt_repo["ckpt"], tmp_path / "run", data=str(nanogpt_repo["data"]))
    cfg = load_config(str(out / "config.toml"))
    model = GPT(cfg.model).eval()
    model.load_state_dict(load_checkpoint(latest_checkpoint(out))["model"])
    x, _ = batch(nanogpt_repo["train_ids"], 0)
    with torch.no_grad():
        ours, _ = model(x)
        theirs, _ = nanogpt_repo["model"](x)
    diff = (ours[..., :nanogpt_repo["vocab"]] - theirs).abs().max().item()
    assert 0 < diff < 1e-2


def test_imported_run_samples_and_resumes(nanogpt_repo, tmp_path):
    from gptforge.commands.sample import sample_command
    from gptforge.train.loop import train

    # no --data: found next to out/ as nanoGPT lays it out, from the checkpoint's dataset name
    out = import_nanogpt_command(nanogpt_repo["ckpt"], tmp_path / "run")
    text = sample_command(out, prompt="the king", max_new_tokens=20, temperature=0.0, device="cpu", out=io.StringIO())
    meta = read_meta_pkl(nanogpt_repo["data"] / "meta.pkl")
    assert len(text[0]) == 20 and set(text[0]) <= set(meta["stoi"])  # 20 characters of the vocabulary
    cfg = load_config(str(out / "config.toml"), overrides=["--max_iters=8", "--eval_interval=4", "--eval_iters=1",
                                                           "--sample_tokens=0", "--device=cpu"])
    assert cfg.data.data == str(nanogpt_repo["data"].resolve())
    result = train(cfg)
    assert result["step"] == 8 and result["reason"] == "max_iters"
    assert latest_checkpoint(out).name == "step_00000008"


def test_gpt2_vocab_checkpoint_without_data_samples(tmp_path):
    from gptforge.commands.sample import sample_command

    args = dict(n_layer=1, n_head=2, n_embd=16, block_size=16, bias=False, vocab_size=50304, dropout=0.0)
    model = NanoGPT(args)
    ckpt = {"model": model.state_dict(), "optimizer": model.configure_optimizers(0.1, 6e-4, (0.9, 0.95)).state_dict(),
            "model_args": args, "iter_num": 0, "best_val_loss": 1e9, "config": {"dataset": "openwebtext"}}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    out = import_nanogpt_command(tmp_path / "ckpt.pt", tmp_path / "run")
    state = load_checkpoint(latest_checkpoint(out))["state"]
    assert state["config"]["vocab_size"] == 50257 and state["tokenizer"]["name"] == "gpt2"
    assert state["loader"] is None  # no data to continue on; said so on the console
    text = sample_command(out, prompt="Hello", max_new_tokens=5, temperature=0.0, device="cpu", out=io.StringIO())
    assert len(text) == 1 and text[0]  # GPT-2 BPE text decoded from 5 tokens


def test_malicious_checkpoint_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": {"x": Evil(marker)}, "model_args": {}}, tmp_path / "ckpt.pt")
    with pytest.raises(UserError, match=r"ckpt\.pt: refused to load: it is not a plain tensor checkpoint"):
        import_nanogpt_command(tmp_path / "ckpt.pt", tmp_path / "run")
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_bad_checkpoints(nanogpt_repo, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        import_nanogpt_command(tmp_path / "missing.pt", tmp_path / "run")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a nanoGPT checkpoint"):
        import_nanogpt_command(tmp_path / "other.pt", tmp_path / "run")
    ckpt = torch.load(nanogpt_repo["ckpt"], weights_only=True)
    ckpt["model_args"]["n_layer"] = 3
    torch.save(ckpt, tmp_path / "wrong.pt")
    with pytest.raises(UserError, match=r"do not fit model_args \(missing transformer\.h\.2\."):
        import_nanogpt_command(tmp_path / "wrong.pt", tmp_path / "run", data=str(nanogpt_repo["data"]))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("mine")
    with pytest.raises(UserError, match="not an empty directory"):
        import_nanogpt_command(nanogpt_repo["ckpt"], busy)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "nanoGPT", "other.pt", "wrong.pt"]


@pytest.mark.parametrize("fork", ["one group", "three groups", "muon list", "moment shape", "no such id"])
def test_a_forks_optimizer_state_that_does_not_map_imports_the_weights_with_a_fresh_adamw(
        nanogpt_repo, tmp_path, capsys, fork):
    ckpt = torch.load(nanogpt_repo["ckpt"], weights_only=True)
    opt = ckpt["optimizer"]
    if fork == "one group":  # a fork that puts every parameter in one group
        opt["param_groups"][0]["params"] += opt["param_groups"][1]["params"]
        opt["param_groups"] = opt["param_groups"][:1]
    elif fork == "three groups":
        opt["param_groups"].append({**opt["param_groups"][1], "params": []})
    elif fork == "muon list":  # Muon + AdamW forks save a list of optimizer states
        ckpt["optimizer"] = [opt, opt]
    elif fork == "moment shape":
        opt["state"][0]["exp_avg"] = torch.zeros(3, 3)
    else:
        opt["state"][999] = opt["state"].pop(0)
    torch.save(ckpt, tmp_path / "fork.pt")
    out = import_nanogpt_command(tmp_path / "fork.pt", tmp_path / "run", data=str(nanogpt_repo["data"]))
    printed = capsys.readouterr().out
    assert "its optimizer state does not map onto gptforge's AdamW (" in printed
    assert "the weights are imported and AdamW starts fresh" in printed
    saved = load_checkpoint(latest_checkpoint(out))
    assert saved["state"]["imported_from"]["optimizer"] == "fresh" and saved["state"]["step"] == 5
    assert saved["optimizer"]["state"] == {}  # no moments: a fresh AdamW
    nano = nanogpt_repo["model"].state_dict()
    assert torch.equal(saved["model"]["transformer.h.0.attn.c_attn.weight"], nano["transformer.h.0.attn.c_attn.weight"])
    cfg = load_config(str(out / "config.toml"), overrides=["--max_iters=6", "--eval_iters=1", "--sample_tokens=0",
                                                           "--device=cpu"])
    from gptforge.train.loop import train

    assert train(cfg)["step"] == 6  # and it trains on
