"""The fixed batches every eval measures: the train split (the loss without dropout, for the train/val gap) and
the val split, part by part.

A dataset grown from several parts (data/parts.py: "fineweb", "wikipedia", ...) has its val batches drawn
from each part's own val tokens: eval_iters batches in all, shared evenly between the parts (at least one
each), so every part's loss is measured at about the cost one val loss had, and a small part is not drowned
by a large one. The val loss is the parts' losses weighted by their val tokens: the mean loss over the val
split, as it always was, only measured part by part. A dataset of one part and a nanoGPT folder evaluate
the whole val split as before; their eval records still name the part (so after the dataset grows,
`diagnose` sees what the old part's loss was before) while the console line stays as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

from gptforge.data.dataset import Dataset
from gptforge.train.loader import ValBatches


def shares(total: int, parts: int) -> list[int]:
    """`total` batches shared as evenly as possible between `parts` (the first ones get the remainder), at
    least one each."""
    return [max(1, total // parts + (i < total % parts)) for i in range(parts)]


@dataclass
class Part:
    name: str
    batches: ValBatches
    tokens: int  # its val tokens: its weight in the val loss


@dataclass
class EvalSets:
    train: ValBatches
    parts: list[Part]  # one (the whole val split) unless the dataset has several parts
    unmeasured: list[str]  # parts with too few val tokens for one block
    named: bool = True  # the parts are the dataset's (not the whole val split standing in for several)

    @property
    def splits(self) -> list[ValBatches]:
        """What step.evaluate measures, in the order `combine` reads its losses."""
        return [self.train] + [p.batches for p in self.parts]

    @property
    def val_batches(self) -> int:
        return sum(len(p.batches) for p in self.parts)

    def combine(self, losses: list[float]) -> tuple[float, float, dict[str, float] | None]:
        """(train loss, val loss, {part: val loss}, or None when the parts are not the dataset's) from
        evaluate's losses."""
        train_loss, per_part = losses[0], losses[1:]
        total = sum(p.tokens for p in self.parts)
        val = per_part[0] if len(self.parts) == 1 else sum(loss * p.tokens / total
                                                           for loss, p in zip(per_part, self.parts))
        return train_loss, val, {p.name: loss for p, loss in zip(self.parts, per_part)} if self.named else None

    def note(self) -> str | None:
        if len(self.parts) > 1:
            text = (f"val loss by part ({', '.join(p.name for p in self.parts)}): {self.val_batches} val batches "
                    "shared between them; the val loss weighs each by its val tokens")
        elif self.unmeasured:
            text = "val loss over the whole val split"
        else:
            return None
        if self.unmeasured:
            text += f"; not measured on its own (fewer val tokens than one block): {', '.join(self.unmeasured)}"
        return text


def val_part_batches(dataset: Dataset, batch_size: int, block_size: int, n_batches: int | None, rank: int = 0,
                     world_size: int = 1) -> tuple[list[Part], list[str], bool]:
    """The val batches part by part (n_batches shared between them; None: every block of every part), the
    parts too small to measure on their own, and whether the parts are the dataset's. One part: the whole
    val split under its name; fewer than two measurable of several: the whole val split, unnamed."""
    streams = dataset.val_part_streams()
    fit = [(name, s) for name, s in streams if len(s) > block_size]
    unmeasured = [name for name, s in streams if len(s) <= block_size] if len(streams) > 1 else []
    if len(fit) < 2:
        whole = ValBatches(dataset, batch_size, block_size, n_batches, rank, world_size)
        name = streams[0][0] if len(streams) == 1 else "val"
        return [Part(name, whole, dataset.val_tokens)], unmeasured, len(streams) == 1
    counts = shares(n_batches, len(fit)) if n_batches is not None else [None] * len(fit)
    return [Part(name, ValBatches(dataset, batch_size, block_size, n, rank, world_size, stream=s), len(s))
            for (name, s), n in zip(fit, counts)], unmeasured, True


def eval_sets(dataset: Dataset, batch_size: int, block_size: int, eval_iters: int, rank: int = 0,
              world_size: int = 1) -> EvalSets:
    train = ValBatches(dataset, batch_size, block_size, eval_iters, rank, world_size, split="train")
    return EvalSets(train, *val_part_batches(dataset, batch_size, block_size, eval_iters, rank, world_size))
