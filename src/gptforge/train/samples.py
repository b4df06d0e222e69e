"""What the training loop reads and writes besides tensors: the dataset's tokenizer and the samples."""

from __future__ import annotations

from pathlib import Path

import torch

from gptforge.data.tokenizers import Tokenizer
from gptforge.errors import UserError
from gptforge.fsutil import atomic_write_text, writing
from gptforge.train.checkpoint import step_name


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
    path, text = run_dir / "samples" / f"{step_name(step)}.txt", "\n".join(lines) + "\n"
    with writing(path, len(text.encode())):  # disk full: one line from train, not a traceback
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
