"""`gptforge sample RUN_DIR`: text from a run's latest checkpoint (or `--step N`, or RUN_DIR/checkpoints/step_N),
streamed as it is generated."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from gptforge.errors import UserError
from gptforge.train import devices
from gptforge.train.runs import load_run


def read_prompt(prompt: str) -> str:
    if prompt.startswith("FILE:"):
        path = Path(prompt[5:])
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--prompt FILE:{path}: cannot read it ({e.__class__.__name__}: {e})") from None
    return prompt


class _Stream:
    """Prints decoded text as tokens arrive, holding back an incomplete UTF-8 character."""

    def __init__(self, tokenizer, out):
        self.tokenizer, self.out, self.ids, self.shown = tokenizer, out, [], 0

    def add(self, token: int) -> None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):  # a multi-byte character split across tokens: wait for the rest
            return
        self.out.write(text[self.shown:])
        self.out.flush()
        self.shown = len(text)

    def finish(self) -> str:
        text = self.tokenizer.decode(self.ids)
        self.out.write(text[self.shown:] + "\n")
        self.out.flush()
        return text


def sample_command(run_dir, prompt: str = "", num_samples: int = 1, max_new_tokens: int = 200,
                   temperature: float = 0.8, top_k: int | None = 200, top_p: float | None = 1.0, seed: int = 1337,
                   device: str = "auto", out=None, step: int | None = None) -> list[str]:
    """Write `num_samples` continuations of `prompt` to the terminal as they are generated; return them."""
    out = out or sys.stdout
    if num_samples < 1:
        raise UserError(f"--num-samples must be at least 1, got {num_samples}")
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    if temperature < 0:
        raise UserError(f"--temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"--top-p must be in (0, 1], got {top_p}")
    dev = devices.resolve_device(device)
    model, tokenizer, _ = load_run(run_dir, dev, step)
    if tokenizer is None:
        raise UserError(f"{run_dir} has no tokenizer/ directory, so its tokens cannot be turned into text")
    text = read_prompt(prompt)
    try:
        ids = [int(i) for i in tokenizer.encode(text)] if text else []
    except UserError:  # a character-level vocabulary without some of the prompt's characters
        missing = "".join(sorted(set(text) - set(getattr(tokenizer, "chars", []))))
        raise UserError(f"--prompt has characters this run's vocabulary does not have: {missing!r}") from None
    if not ids:
        ids = [tokenizer.eot_id]  # an empty prompt starts a fresh document
    generator = torch.Generator(device=dev).manual_seed(seed)
    samples = []
    with torch.no_grad(), devices.autocast(dev, devices.resolve_dtype("auto", dev)):
        for i in range(num_samples):
            stream = _Stream(tokenizer, out)
            out.write(text)
            for token in model.generate(torch.tensor(ids, device=dev), max_new_tokens, temperature=temperature,
                                        top_k=top_k, top_p=top_p, eot_id=tokenizer.eot_id, generator=generator):
                if token == tokenizer.eot_id:
                    break  # end of text: the document is over
                stream.add(token)
            samples.append(stream.finish())
            if i + 1 < num_samples:
                out.write("---------------\n")
    return samples
