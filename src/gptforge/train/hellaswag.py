"""HellaSwag, completion style, as llm.c's dev/data/hellaswag.py scores it.

Each item is a context and 4 endings. For each ending, the model's loss on the ending's tokens given the
context (the ending is encoded with a leading space, as GPT-2's tokenizer attaches it to the next word).
acc picks the ending with the lowest summed loss, acc_norm the lowest mean loss per token; each comes with
its standard error sqrt(p (1 - p) / (n - 1)), as the Eleuther harness reports it. Chance is 0.25.

A context + ending longer than block_size + 1 tokens is cut from the left: the ending and the context next
to it stay. The 4 endings of an item go through the model in one batched forward (several items per forward
on a GPU); under torchrun the items are dealt across ranks and the counts summed, and every rank runs the
same number of forwards, so a sharded (FSDP) model works too. Pass the model itself, not its DDP or compiled
wrapper (every batch has another shape).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from gptforge.data.pinned import PINNED, cache_dir, pinned_mismatch
from gptforge.errors import UserError
from gptforge.fmt import count
from gptforge.train import dist
from gptforge.train.hellaswag_stats import CHANCE, ENDINGS, stderr


class HellaSwagSkipped(UserError):
    """The run cannot be scored (its tokenizer cannot encode the items): the message says why."""


@dataclass(frozen=True)
class Item:
    ctx: str
    endings: tuple[str, ...]
    label: int


@dataclass(frozen=True)
class Result:
    acc: float  # by the summed loss of each ending
    acc_norm: float  # by the mean loss per ending token: the number llm.c and nanoGPT users quote
    acc_stderr: float
    acc_norm_stderr: float
    items: int
    tokens: int  # tokens through the model, padding not counted
    seconds: float

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("nan")

    def short(self) -> str:
        """For the training run's eval line."""
        return f"hellaswag {self.acc_norm:.4f} ± {self.acc_norm_stderr:.4f} ({self.items:,} items)"

    def event_fields(self) -> dict:
        """The eval event's HellaSwag fields (train/events.py)."""
        return dict(hellaswag_acc_norm=self.acc_norm, hellaswag_acc=self.acc, hellaswag_stderr=self.acc_norm_stderr,
                    hellaswag_items=self.items, hellaswag_seconds=round(self.seconds, 3))

    def line(self) -> str:
        return (f"hellaswag acc_norm {self.acc_norm:.4f} ± {self.acc_norm_stderr:.4f}, acc {self.acc:.4f} ± "
                f"{self.acc_stderr:.4f} ({self.items:,} items, {count(self.tokens)} tokens in {self.seconds:.1f} s, "
                f"{count(self.tokens_per_second)} tok/s; chance {CHANCE:.2f})")


def default_path() -> Path:
    """Where `gptforge download hellaswag` puts the val set."""
    pinned = PINNED["hellaswag"]
    return cache_dir() / pinned.folder / pinned.filename


def load_items(path: str | Path | None = None, limit: int | None = None,
               how: str = "pass --hellaswag FILE") -> list[Item]:
    """The first `limit` items (all by default) of a HellaSwag jsonl file, each checked; `how` says how to
    name another file."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    path = Path(path) if path is not None else default_path()
    if not path.is_file():
        raise UserError(f"HellaSwag file {path} not found: run `gptforge download hellaswag` (it goes to "
                        f"{default_path().parent}) or {how}")
    items = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                items.append(_item(line, f"{path} line {number}"))
                if limit is not None and len(items) == limit:
                    break
    if not items:
        raise UserError(f"HellaSwag file {path} holds no items")
    return items


def _item(line: str, where: str) -> Item:
    try:
        row = json.loads(line)
    except ValueError as e:
        raise UserError(f"{where}: not a JSON object ({e.msg}); is this a HellaSwag jsonl file?") from None
    if not isinstance(row, dict):
        raise UserError(f"{where}: not a JSON object; is this a HellaSwag jsonl file?")
    ctx, endings, label = row.get("ctx"), row.get("endings"), row.get("label")
    if not isinstance(ctx, str) or not ctx.strip():
        raise UserError(f"{where}: 'ctx' must be a non-empty string")
    if not (isinstance(endings, list) and len(endings) == ENDINGS and all(isinstance(e, str) for e in endings)):
        raise UserError(f"{where}: 'endings' must be a list of {ENDINGS} strings")
    if isinstance(label, str) and label.isdigit():
        label = int(label)
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < ENDINGS:
        raise UserError(f"{where}: 'label' must be 0-3 (the test split has no labels: use the val split)")
    return Item(ctx, tuple(endings), label)


def encode(tokenizer, items: list[Item], vocab_size: int) -> list[tuple[list[int], list[list[int]]]]:
    """(context ids, [ids of " " + ending] x 4) per item, or HellaSwagSkipped saying why the run cannot score."""
    if tokenizer is None:
        raise HellaSwagSkipped("HellaSwag skipped: the run has no tokenizer/ directory to encode the items with")
    try:
        out = [([int(t) for t in tokenizer.encode(it.ctx)], [[int(t) for t in tokenizer.encode(" " + e)]
                                                              for e in it.endings]) for it in items]
    except UserError as e:
        why = str(e)
        if tokenizer.kind == "char":  # nanoGPT's shakespeare_char and the like
            text = {c for it in items for c in it.ctx + " ".join(it.endings)}
            why = f"characters {''.join(sorted(text - set(tokenizer.chars))[:30])!r} are not in its vocabulary"
        raise HellaSwagSkipped(f"HellaSwag skipped: the run's tokenizer ({tokenizer.name}, {tokenizer.kind}) cannot "
                               f"encode the items: {why}; HellaSwag needs a tokenizer for English text, such as "
                               "gpt2") from None
    if tokenizer.vocab_size > vocab_size:
        raise HellaSwagSkipped(f"HellaSwag skipped: the tokenizer has {tokenizer.vocab_size} ids, the model "
                               f"{vocab_size}")
    return out


def item_rows(ctx: list[int], endings: list[list[int]], block_size: int) -> tuple[list[list[int]], list[list[int]]]:
    """Model inputs and targets for the 4 endings of one item (targets -1 except on ending tokens), each
    row cut from the left to block_size inputs."""
    inputs, targets = [], []
    for ending in endings:
        row = ctx + ending
        cut = max(0, len(row) - (block_size + 1))
        row, first = row[cut:], len(ctx) - cut  # first: where the ending starts in the kept row
        inputs.append(row[:-1])
        targets.append([t if j + 1 >= first else -1 for j, t in enumerate(row[1:])])
    return inputs, targets


def ending_losses(model, rows: list[tuple[list[list[int]], list[list[int]]]], device: torch.device,
                  autocast=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss and scored tokens per ending, [items, 4] each (fp32, on the CPU), for the items whose
    rows are given, in one forward: rows are padded to the longest and padding is never scored."""
    flat_in = [r for inputs, _ in rows for r in inputs]
    flat_tg = [r for _, targets in rows for r in targets]
    width = max(len(r) for r in flat_in)
    idx = torch.tensor([r + [0] * (width - len(r)) for r in flat_in], dtype=torch.long)
    tgt = torch.tensor([r + [-1] * (width - len(r)) for r in flat_tg], dtype=torch.long)
    idx, tgt = idx.to(device), tgt.to(device)
    scored = tgt != -1
    with autocast or contextlib.nullcontext():
        logits, _ = model(idx, logits_at=scored)
    losses = F.cross_entropy(logits.float(), tgt[scored], reduction="none")
    sums = torch.zeros(scored.shape, dtype=torch.float32, device=device)
    sums[scored] = losses
    return sums.sum(1).view(-1, ENDINGS).cpu(), scored.sum(1).view(-1, ENDINGS).cpu()


def describe_items(path: str | Path | None, n: int, limited: bool) -> str:
    """Which `n` items these are: of the official val set (checked against its pin) or of another file, whose
    scores do not compare with published ones."""
    path = Path(path) if path else default_path()
    what = "the official val set"
    if pinned_mismatch(path, PINNED["hellaswag"]) is not None:
        what = f"{path} (not the official val set: scores do not compare with published ones)"
    return f"{'the first ' if limited else ''}{n:,} items of {what}"


def rank_rows(encoded: list, block_size: int, rank: int, world: int) -> tuple[list, list[int]]:
    """This rank's share of the encoded items as rows, and an order that groups similar lengths (less padding)."""
    rows = [item_rows(ctx, ends, block_size) for ctx, ends in encoded[rank::world]]
    return rows, sorted(range(len(rows)), key=lambda i: max(map(len, rows[i][0])))


def score(model, tokenizer, items: list[Item], device: torch.device, autocast=None,
          items_per_forward: int | None = None, encoded: list | None = None, prepared: tuple | None = None) -> Result:
    """HellaSwag acc and acc_norm of `model` on `items` (split across ranks under torchrun); `encoded`: the
    items as `encode` gave them, when encoded before; `prepared`: this rank's `rank_rows`, when made before."""
    if not items:
        raise UserError("HellaSwag: no items to score")
    start = time.perf_counter()
    block_size = model.cfg.block_size
    per_forward = items_per_forward or (16 if device.type == "cuda" else 1)
    rank, world = dist.rank(), dist.world_size()
    if encoded is None:
        encoded = encode(tokenizer, items, model.vocab_size)  # all of them on every rank: all skip, or none does
    mine = items[rank::world]
    rows, order = prepared or rank_rows(encoded, block_size, rank, world)
    forwards = math.ceil(math.ceil(len(items) / world) / per_forward)  # the same on every rank: FSDP needs it
    counts = torch.zeros(4, dtype=torch.float64)  # correct by sum, correct by mean, items, tokens
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for f in range(forwards):
                group = order[f * per_forward:(f + 1) * per_forward]
                if not group:  # this rank is out of items: a forward the others' collectives can pair with
                    model(torch.zeros(1, 1, dtype=torch.long, device=device))
                    continue
                sums, n = ending_losses(model, [rows[i] for i in group], device, autocast)
                labels = torch.tensor([mine[i].label for i in group])
                counts += torch.tensor([(sums.argmin(1) == labels).sum().item(),
                                        ((sums / n).argmin(1) == labels).sum().item(), len(group),
                                        sum(len(r) for i in group for r in rows[i][0])], dtype=torch.float64)
    finally:
        model.train(was_training)
    correct, correct_norm, n_items, tokens = dist.all_reduce_sum(counts.to(device)).tolist()
    acc, acc_norm = correct / n_items, correct_norm / n_items
    return Result(acc, acc_norm, stderr(acc, int(n_items)), stderr(acc_norm, int(n_items)), int(n_items),
                  int(tokens), time.perf_counter() - start)


# ------------------------------------------------------------------------------------ during training

@dataclass(frozen=True)
class DuringTraining:
    """HellaSwag at a training run's evals: at the first eval at or after each multiple of `interval` steps
    (step 0 included) and at the last step. The items are read and encoded once, at start. Scoring runs the
    plain model in eval mode (no dropout, no random draw, no batch from the loader), so the run's losses are
    the same with it on or off, and a resume stays exact."""

    interval: int
    eval_interval: int
    items: list[Item]
    encoded: list
    rows: dict = field(default_factory=dict, compare=False)  # rank_rows by (block_size, rank, world): made once

    def due(self, step: int, last_step: bool) -> bool:
        # evals fall on multiples of eval_interval: due when a multiple of interval was passed since the last one
        return last_step or step // self.interval > (step - self.eval_interval) // self.interval

    def score(self, model, device: torch.device, autocast=None) -> Result:
        key = (model.cfg.block_size, dist.rank(), dist.world_size())
        if key not in self.rows:
            self.rows[key] = rank_rows(self.encoded, *key)
        return score(model, None, self.items, device, autocast, encoded=self.encoded, prepared=self.rows[key])


def during_training(interval: int, eval_interval: int, path: str, limit: int, tokenizer, vocab_size: int,
                    device: torch.device) -> tuple[DuringTraining | None, str | None]:
    """(the scorer, the start line saying what it scores), or (None, the one line saying why it is off: no
    file, a bad file, a tokenizer that cannot encode the items); (None, None) when interval is 0. Every rank
    takes the same decision (the scores are all-reduced)."""
    if not interval:
        return None, None
    why = scorer = None
    try:
        items = load_items(path or None, limit or None, how="set hellaswag_file=FILE")
        scorer = DuringTraining(interval, eval_interval, items, encode(tokenizer, items, vocab_size))
    except HellaSwagSkipped as e:
        why = str(e)
    except UserError as e:
        why = f"HellaSwag during training is off: {e}"
    if dist.any_true_each([why is not None], device)[0]:
        return None, why or "HellaSwag during training is off: another process could not read its items"
    if not dist.is_main():  # only rank 0 prints it, and describing the file hashes it
        return scorer, None
    return scorer, (f"HellaSwag at the evals every {interval:,} steps and at the end: "
                    f"{describe_items(path, len(items), bool(limit))}")
