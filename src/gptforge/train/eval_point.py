"""What the loop does at an eval point: measure the train and val losses (val part by part), score HellaSwag when
it is due, tell the console and metrics.jsonl, and write the samples. Fixed for a launch, so the loop only says
when."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gptforge.train.console import Console, eval_line, perplexity
from gptforge.train.evalsets import EvalSets
from gptforge.train.events import Eval, MetricsLog
from gptforge.train.hellaswag import DuringTraining
from gptforge.train.state import TrainState
from gptforge.train.step import evaluate


@dataclass
class EvalPoint:
    evals: EvalSets
    model: torch.nn.Module  # the plain model (eval mode, sampling, HellaSwag)
    eval_model: torch.nn.Module  # what the loss runs through (compiled, FSDP-wrapped or the model itself)
    device: torch.device
    autocast: Callable
    swag: DuringTraining | None
    console: Console
    log: MetricsLog | None
    write_samples: Callable[[int], None] | None  # None: no samples during this run

    def measure(self, state: TrainState, epoch: float, last_step: bool, sample: bool) -> None:
        """Sets state.val_loss to the val loss at state.step; reports it (and HellaSwag, when due)."""
        step, t0 = state.step, time.time()
        train_loss, state.val_loss, val_parts = self.evals.combine(
            evaluate(self.model, self.evals.splits, self.device, self.eval_model, self.autocast))
        swag_due = self.swag is not None and self.swag.due(step, last_step)
        scored = self.swag.score(self.model, self.device, self.autocast) if swag_due else None
        seconds = time.time() - t0
        self.console.print(eval_line(step, train_loss, state.val_loss, seconds, scored.short() if scored else "",
                                     val_parts))
        if self.log:
            self.log.write(Eval(step=step, tokens=state.tokens_seen, epoch=epoch, train_loss=train_loss,
                                val_loss=state.val_loss, val_ppl=perplexity(state.val_loss),
                                eval_batches=self.evals.val_batches, seconds=round(seconds, 3), val_parts=val_parts,
                                **(scored.event_fields() if scored else {})))
        if sample and self.write_samples:
            self.write_samples(step)
