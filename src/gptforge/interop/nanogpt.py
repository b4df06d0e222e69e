"""nanoGPT's files, read without executing pickled code.

- `read_meta_pkl`: a data folder's meta.pkl (vocab_size, stoi, itos) through an unpickler that knows no
  classes at all beyond dict/str/int, so a crafted file cannot run anything.
- `import_nanogpt_command`: a nanoGPT ckpt.pt (model, optimizer, model_args, iter_num, best_val_loss,
  config) loaded with torch.load(weights_only=True), turned into a gptforge run directory that samples and
  resumes: `gptforge train RUN_DIR/config.toml` continues with nanoGPT's hyperparameters,
  its AdamW moments and its learning-rate schedule at iter_num. A fork's checkpoint whose optimizer state does
  not map (other groups, another optimizer) is imported with its weights and a fresh AdamW, and says so.

nanoGPT's GPT is GPT-2 with the same parameter names and order as the gpt2 arch; its one difference is
the exact GELU where GPT-2 (and gptforge) use the tanh approximation, at most 4.7e-4 apart per activation.
Data order cannot carry over (nanoGPT samples batches at random with replacement): the resumed run starts
a fresh seeded permutation of the data.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gptforge.config import build_config, to_toml
from gptforge.data.tokenizers import GPT2_VOCAB
from gptforge.errors import UserError
from gptforge.fsutil import atomic_write_text, building_dir
from gptforge.interop.nanogpt_config import SHARED_KEYS
from gptforge.model.gpt import GPT
from gptforge.train.checkpoint import save_checkpoint, unsafe_load_reason
from gptforge.train.state import TrainState, dataset_entry


class OptimizerMismatch(Exception):
    """The checkpoint's optimizer state does not map onto gptforge's AdamW (a fork's optimizer or grouping)."""


# ---- ckpt.pt --------------------------------------------------------------------------------------

def _load_ckpt(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"nanoGPT checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # never runs pickled code
    except Exception as e:  # noqa: BLE001 - weights_only raises several types; all mean "not plain data"
        raise UserError(f"{path}: refused to load: it is not a plain tensor checkpoint ({unsafe_load_reason(e)})") \
            from None
    if not isinstance(ckpt, dict) or not {"model", "model_args"} <= set(ckpt):
        raise UserError(f"{path} is not a nanoGPT checkpoint (a dict with 'model' and 'model_args')")
    return ckpt


def nanogpt_param_names(n_layer: int, bias: bool) -> list[str]:
    """nanoGPT's named_parameters() order (the tied lm_head appears as transformer.wte.weight)."""
    names = ["transformer.wte.weight", "transformer.wpe.weight"]
    for i in range(n_layer):
        for module in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            names.append(f"transformer.h.{i}.{module}.weight")
            if bias:
                names.append(f"transformer.h.{i}.{module}.bias")
    return names + ["transformer.ln_f.weight"] + (["transformer.ln_f.bias"] if bias else [])


def _fit_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """The vocabulary table at gptforge's padded size: ids past the real vocabulary are never used."""
    out = torch.zeros((rows,) + tuple(tensor.shape[1:]), dtype=tensor.dtype)
    n = min(rows, tensor.shape[0])
    out[:n] = tensor[:n]
    return out


def _convert_model(state: dict, model: GPT, where: Path) -> dict:
    plain = {}
    for name, tensor in state.items():
        name = name.replace("_orig_mod.", "")  # torch.compile's wrapper prefix
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # the causal-mask buffer of nanoGPT's non-flash attention, not a parameter
        plain[name] = tensor
    expected = model.state_dict()
    missing = sorted(set(expected) - set(plain))
    unexpected = sorted(set(plain) - set(expected))
    if missing or unexpected:
        parts = [
            f"missing {', '.join(missing[:3])}" if missing else "",
            f"unexpected {', '.join(unexpected[:3])}" if unexpected else "",
        ]
        raise UserError(f"{where}: the weights do not fit model_args ({'; '.join(p for p in parts if p)})")
    out = {}
    for name, want in expected.items():
        tensor = plain[name].to(torch.float32)
        if name in ("transformer.wte.weight", "lm_head.weight"):
            tensor = _fit_rows(tensor, want.shape[0])
        if tensor.shape != want.shape:
            raise UserError(
                f"{where}: {name} has shape {tuple(plain[name].shape)}, model_args imply {tuple(want.shape)}"
            )
        out[name] = tensor
    return out


def _convert_optimizer(saved: dict, model: GPT, optimizer, bias: bool) -> dict:
    """nanoGPT's AdamW state (groups: matrices with decay, the rest without) mapped by parameter name
    onto gptforge's optimizer; hyperparameters come from the config, as on every resume."""
    names = nanogpt_param_names(model.cfg.n_layer, bias)
    params = dict(model.named_parameters())
    decay = [n for n in names if params[n].ndim >= 2]
    rest = [n for n in names if params[n].ndim < 2]
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    sizes = [len(g.get("params", [])) if isinstance(g, dict) else None for g in groups] \
        if isinstance(groups, list) else None
    if sizes != [len(decay), len(rest)]:
        found = f"groups of {sizes}" if sizes is not None else f"a {type(saved).__name__}"
        raise OptimizerMismatch(f"not nanoGPT's AdamW with two parameter groups of {len(decay)} and {len(rest)} "
                                f"tensors: found {found}")
    name_of = {}
    for group, group_names in zip(groups, (decay, rest)):
        name_of.update(zip(group["params"], group_names))
    ours = optimizer.state_dict()
    by_id = {id(p): n for n, p in model.named_parameters()}
    ours_names = [by_id[id(p)] for g in optimizer.param_groups for p in g["params"]]
    ours_ids = [i for g in ours["param_groups"] for i in g["params"]]
    index_of = dict(zip(ours_names, ours_ids))  # our state_dict numbers parameters in param_groups order
    state = {}
    for saved_id, entry in saved.get("state", {}).items():
        name = name_of.get(saved_id)
        if name is None or not isinstance(entry, dict):
            raise OptimizerMismatch(f"its state entry {saved_id!r} belongs to no parameter")
        converted = {}
        for key, value in entry.items():
            if key == "step":
                converted[key] = torch.as_tensor(float(value), dtype=torch.float32)
                continue
            if name == "transformer.wte.weight":
                value = _fit_rows(value, params[name].shape[0])
            if not isinstance(value, torch.Tensor) or value.shape != params[name].shape:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise OptimizerMismatch(f"its {key} of {name} has shape {shape}, the parameter "
                                        f"{tuple(params[name].shape)}")
            converted[key] = value.to(torch.float32)
        state[index_of[name]] = converted
    ours["state"] = state
    try:
        optimizer.load_state_dict(ours)  # validates sizes against our parameters
    except (ValueError, KeyError, RuntimeError) as e:
        raise OptimizerMismatch(f"gptforge's AdamW refused it ({e})") from None
    return optimizer.state_dict()


def _find_data(ckpt_path: Path, config: dict, data) -> Path | None:
    if data:
        return Path(data)
    # nanoGPT keeps out_dir and data/<dataset> side by side in its repository
    name = config.get("dataset")
    if isinstance(name, str) and name:
        guess = ckpt_path.resolve().parent.parent / "data" / name
        if (guess / "train.bin").is_file() and (guess / "val.bin").is_file():
            print(f"using the data folder {guess} (the checkpoint's dataset={name!r})")
            return guess
    return None


def _vocab_and_tokenizer(dataset, rows: int):
    """(real vocabulary size, tokenizer or None, tokenizer identity or None)."""
    if dataset is not None:
        from gptforge.data.dataset import dataset_tokenizer

        tokenizer, identity = dataset_tokenizer(dataset)
        return dataset.vocab_size, tokenizer, identity
    if rows in (GPT2_VOCAB, 50304):  # nanoGPT's GPT-2 vocabulary, padded or not
        from gptforge.data.tokenizers import gpt2_tokenizer

        tokenizer = gpt2_tokenizer()
        return GPT2_VOCAB, tokenizer, tokenizer.identity()
    return rows, None, None


def _run_config(ckpt: dict, vocab: int, data: Path | None, out: Path, where: Path):
    args, config = ckpt["model_args"], ckpt.get("config") or {}
    values = {k: config[k] for k in SHARED_KEYS if k in config}
    if config.get("decay_lr") is False:  # nanoGPT then trains at learning_rate throughout, without warmup
        values.update(schedule="constant", warmup_iters=0)
    try:
        values.update(arch="gpt2", n_layer=args["n_layer"], n_head=args["n_head"], n_embd=args["n_embd"],
                      block_size=args["block_size"], bias=bool(args.get("bias", True)),
                      dropout=float(args.get("dropout", 0.0)), vocab_size=vocab)
    except (KeyError, TypeError) as e:
        raise UserError(f"{where}: model_args lacks {e}") from None
    values.update(data=str(data.resolve()) if data else "", out=str(out), init_from="resume")
    return build_config(values, where=str(where))


def import_nanogpt_command(checkpoint, out, data=None) -> Path:
    """Turn a nanoGPT ckpt.pt into a gptforge run directory at `out` (built aside, then renamed)."""
    from gptforge.data.dataset import open_dataset
    from gptforge.train.loader import TrainLoader

    ckpt_path, out = Path(checkpoint), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} already exists and is not an empty directory; choose another or remove it")
    ckpt = _load_ckpt(ckpt_path)
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    state_in = {k.replace("_orig_mod.", ""): v for k, v in ckpt["model"].items()}
    rows = state_in.get("transformer.wte.weight", torch.empty(0)).shape[0]
    data_dir = _find_data(ckpt_path, config, data)
    dataset = open_dataset(data_dir) if data_dir else None
    vocab, tokenizer, identity = _vocab_and_tokenizer(dataset, rows)
    if vocab > rows:
        raise UserError(f"{data_dir}: its vocabulary ({vocab}) is larger than the checkpoint's ({rows} rows): "
                        "is this the data the checkpoint was trained on?")
    cfg = _run_config(ckpt, vocab, data_dir, out, ckpt_path)

    model = GPT(cfg.model)
    model.load_state_dict(_convert_model(ckpt["model"], model, ckpt_path))
    from gptforge.train.optim import build_optimizer

    optimizer = build_optimizer(model, cfg.optim, "cpu")
    optimizer_state, moments = optimizer.state_dict(), "no optimizer state in the file: AdamW starts fresh"
    carried = False
    if ckpt.get("optimizer"):
        try:
            optimizer_state = _convert_optimizer(ckpt["optimizer"], model, optimizer, cfg.model.bias)
            moments, carried = "AdamW moments carried over", True
        except OptimizerMismatch as e:
            optimizer = build_optimizer(model, cfg.optim, "cpu")  # a clean one: the failed load may have touched it
            optimizer_state = optimizer.state_dict()
            moments = (f"its optimizer state does not map onto gptforge's AdamW ({e}): the weights are imported and "
                       "AdamW starts fresh (its moment estimates restart from zero)")

    step = int(ckpt.get("iter_num", 0))
    best = ckpt.get("best_val_loss")
    state = TrainState(step=step, tokens_seen=step * cfg.tokens_per_iter, config=cfg.flat(), tokenizer=identity,
                       best_val_loss=float(best) if best is not None else float("inf"),
                       imported_from={"nanogpt_checkpoint": str(ckpt_path.resolve()), "iter_num": step,
                                      "optimizer": "carried over" if carried else "fresh"})
    if dataset is not None:
        state.loader = TrainLoader(dataset, cfg.train.batch_size, cfg.model.block_size, cfg.train.seed).state_dict()
        state.epoch = state.tokens_seen / dataset.train_tokens
        state.dataset = dataset_entry(dataset)
    rng = {"cpu_rng": torch.Generator().manual_seed(cfg.train.seed).get_state()}  # nanoGPT does not save its RNG

    with building_dir(out) as tmp:
        atomic_write_text(tmp / "config.toml", to_toml(cfg))
        if tokenizer is not None:
            tokenizer.save(tmp / "tokenizer")
        save_checkpoint(tmp, step, model_state=model.state_dict(), optimizer_state=optimizer_state,
                        extra_tensors=rng, state=state.state_dict(), keep_last=cfg.train.keep_last, is_best=True)
    print(f"imported {ckpt_path} (iter {step}, {model.num_params():,} parameters, best val loss "
          f"{state.best_val_loss:.4f}) into {out}; {moments}")
    if dataset is None:
        print("no --data given: the run samples" + ("" if tokenizer else " token ids only (no tokenizer known)") +
              "; to continue training, import again with --data=DATA_FOLDER")
    else:
        print(f"continue training with: gptforge train {out / 'config.toml'} (its init_from is resume; the data "
              "order restarts with a fresh permutation: nanoGPT's random batches cannot be replayed)")
    return out
