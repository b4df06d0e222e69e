"""`gptforge eval RUN_DIR`: val loss, perplexity and bits per byte of a run's latest checkpoint (or of
`--step N`, or of RUN_DIR/checkpoints/step_N), per dataset part too for a dataset of several parts;
`gptforge eval RUN_DIR --hellaswag [FILE]`: its HellaSwag score instead (train/hellaswag.py).

Bits per byte = total nats over the evaluated targets / their UTF-8 bytes / ln 2: it does not depend on
the tokenizer, so a character-level run and a BPE run on the same text compare directly.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from gptforge.data.dataset import open_dataset
from gptforge.data.tokenizers import CharTokenizer
from gptforge.errors import UserError
from gptforge.fmt import ppl
from gptforge.train import devices, dist, hellaswag
from gptforge.train.console import perplexity
from gptforge.train.evalsets import val_part_batches
from gptforge.train.runs import load_run


def token_byte_lengths(tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for (end-of-text is a separator, not text: 0)."""
    if isinstance(tokenizer, CharTokenizer):
        lengths = [len(c.encode("utf-8")) for c in tokenizer.chars] + [0]
    else:
        enc = tokenizer.enc
        lengths = []
        for i in range(tokenizer.vocab_size):
            try:
                lengths.append(len(enc.decode_single_token_bytes(i)))
            except KeyError:  # an id with no bytes (special tokens)
                lengths.append(0)
        lengths[tokenizer.eot_id] = 0
    return np.asarray(lengths, dtype=np.int64)


def _measure(model, batches, byte_len, dev) -> tuple[float, int, int]:
    """(nats, target tokens, UTF-8 bytes of the targets) over `batches`."""
    nats, tokens, n_bytes = 0.0, 0, 0
    for x, y in batches:
        _, loss = model(x.to(dev), y.to(dev))
        nats += loss.item() * y.numel()
        tokens += y.numel()
        if byte_len is not None:
            n_bytes += int(byte_len[y.numpy()].sum())
    return nats, tokens, n_bytes


def evaluate_run(run_dir, data=None, device="auto", max_batches: int | None = None, step: int | None = None) -> dict:
    """Val loss, perplexity and bits per byte of a run's checkpoint (the latest, `step`, or RUN_DIR/checkpoints/
    step_N given as run_dir); for a dataset of several parts also each part's val loss, and then the val loss
    weighs the parts by their val tokens, as training's evals do (train/evalsets.py)."""
    dev = devices.resolve_device(device)
    model, tokenizer, state = load_run(run_dir, dev, step)
    data = data or state["config"].get("data")
    if not data:
        raise UserError(f"{run_dir}: the run does not name its data; pass --data DATA_DIR")
    dataset = open_dataset(data)
    saved_tok = state.get("tokenizer") or {}
    if dataset.tokenizer_identity and saved_tok and dataset.tokenizer_identity.get("hash") != saved_tok.get("hash"):
        raise UserError(f"{data} was tokenized with {dataset.tokenizer_identity.get('name')}, but the run was trained "
                        f"with {saved_tok.get('name')}; evaluate it on data prepared with the run's tokenizer")
    if max_batches is not None and max_batches < 1:
        raise UserError(f"--batches must be at least 1, got {max_batches}")
    byte_len = token_byte_lengths(tokenizer) if tokenizer is not None else None
    batch_size = int(state["config"].get("batch_size") or 8)
    parts, _, _ = val_part_batches(dataset, batch_size, model.cfg.block_size, max_batches)
    with torch.no_grad(), devices.autocast(dev, devices.resolve_dtype("auto", dev)):
        measured = [_measure(model, p.batches, byte_len, dev) for p in parts]
    weights = [p.tokens / sum(q.tokens for q in parts) for p in parts]
    loss = sum(w * nats / tokens for w, (nats, tokens, _) in zip(weights, measured))
    bytes_per_token = sum(w * n_bytes / tokens for w, (_, tokens, n_bytes) in zip(weights, measured))
    return {
        "val_loss": loss,
        "perplexity": perplexity(loss),
        "tokens": sum(m[1] for m in measured),
        "bytes": sum(m[2] for m in measured),
        "batches": sum(len(p.batches) for p in parts),
        "bits_per_byte": loss / bytes_per_token / math.log(2) if bytes_per_token else None,
        "val_parts": {p.name: nats / tokens for p, (nats, tokens, _) in zip(parts, measured)} if len(parts) > 1
        else None,
        "step": state["step"],
        "data": str(data),
    }


def hellaswag_run(run_dir, path=None, limit: int | None = None, device="auto", step: int | None = None
                  ) -> hellaswag.Result:
    """Score a run's checkpoint (as evaluate_run picks it) on HellaSwag; under torchrun every rank scores its
    share."""
    dev = devices.resolve_device(device)
    created = dist.setup(dev)
    main = dist.is_main()
    try:
        items = hellaswag.load_items(path, limit)  # before the model: a missing file is the cheap error
        model, tokenizer, state = load_run(run_dir, dev, step)
        autocast = devices.autocast(dev, devices.resolve_dtype("auto", dev))
        result = hellaswag.score(model, tokenizer, items, dev, autocast)
    finally:
        dist.cleanup(created)
    if main:
        print(f"{run_dir} at step {state['step']}, {hellaswag.describe_items(path, result.items, bool(limit))}")
        print(result.line())
    return result


def eval_command(run_dir, data=None, device="auto", max_batches=None, hellaswag_file=None, limit=None, step=None):
    if hellaswag_file is not None:
        if max_batches is not None or data is not None:
            raise UserError("--batches and --data set up the val-loss eval; --hellaswag scores HellaSwag alone")
        return hellaswag_run(run_dir, hellaswag_file or None, limit, device, step)
    if limit is not None:
        raise UserError("--limit applies to --hellaswag (the val-loss eval takes --batches)")
    r = evaluate_run(run_dir, data=data, device=device, max_batches=max_batches, step=step)
    bpb = f"{r['bits_per_byte']:.4f}" if r["bits_per_byte"] is not None else "n/a (no tokenizer in the run)"
    print(f"{run_dir} at step {r['step']} on {r['data']} ({r['batches']} batches, {r['tokens']:,} tokens, "
          f"{r['bytes']:,} bytes of text)")
    print(f"val loss {r['val_loss']:.4f}, perplexity {ppl(r['perplexity'])}, bits per byte {bpb}")
    if r["val_parts"]:
        print("val loss by part: " + " | ".join(f"{k} {v:.4f}" for k, v in r["val_parts"].items()) +
              " (the val loss weighs them by their val tokens)")
    return r
