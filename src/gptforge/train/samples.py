"""What the training loop reads and writes besides tensors: the dataset's tokenizer and the samples."""

from __future__ import annotations

from pathlib import Path

import torch

from gptforge.errors import UserError
from gptforge.fsutil import atomic_write_text
from gptforge.train.loader import GPT2_VOCAB, Dataset
from gptforge.data.tokenizers import CharTokenizer, Tokenizer, load_tokenizer


def dataset_tokenizer(dataset: Dataset) -> tuple[Tokenizer | None, dict | None]:
    """The tokenizer that made the dataset and its identity (None for a nanoGPT folder we cannot decode)."""
    if dataset.tokenizer_dir is not None:
        tok = load_tokenizer(dataset.tokenizer_dir)
        return tok, dataset.tokenizer_identity or tok.identity()
    if dataset.kind == "gptforge":
        identity = dataset.tokenizer_identity or {}
        if identity.get("kind") == "gpt2" or identity.get("name") == "gpt2":
            return load_tokenizer("gpt2"), identity
        return None, identity
    if (dataset.path / "meta.pkl").is_file():
        from gptforge.interop.nanogpt import read_meta_pkl

        meta = read_meta_pkl(dataset.path / "meta.pkl")
        itos = meta.get("itos") if isinstance(meta, dict) else None
        if not itos:
            return None, None
        tok = CharTokenizer([itos[i] for i in range(len(itos))])  # nanoGPT's char vocabulary, same ids
        return tok, tok.identity()
    if dataset.vocab_size == GPT2_VOCAB:
        tok = load_tokenizer("gpt2")
        return tok, tok.identity()
    return None, None


def complete(model, tokenizer: Tokenizer, prompt: str, max_new_tokens: int, device, autocast) -> str | None:
    """The greedy completion of `prompt`, or None when the prompt cannot be encoded with this vocabulary."""
    try:
        ids = [int(i) for i in tokenizer.encode(prompt)]
    except UserError:
        return None  # e.g. characters a character-level vocabulary does not have
    if not ids:
        return None
    with torch.no_grad(), autocast:
        new = list(model.generate(torch.tensor(ids, device=device), max_new_tokens, temperature=0.0,
                                  eot_id=tokenizer.eot_id))
    return tokenizer.decode([t for t in new if t != tokenizer.eot_id])


def write_samples(model, tokenizer, prompts, max_new_tokens, step, run_dir: Path, device, autocast, console) -> None:
    """Complete each prompt greedily, print it, and keep it in RUN_DIR/samples/step_NNNNNNNN.txt."""
    model.eval()
    lines = []
    for prompt in prompts:
        text = complete(model, tokenizer, prompt, max_new_tokens, device, autocast)
        if text is None:
            lines.append(f"{prompt!r}: (cannot be written with this vocabulary; skipped)")
            continue
        lines.append(f"{prompt!r} -> {text!r}")
    model.train()
    for line in lines:
        console.print(f"  sample {line}")
    (run_dir / "samples").mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "samples" / f"step_{step:08d}.txt", "\n".join(lines) + "\n")
