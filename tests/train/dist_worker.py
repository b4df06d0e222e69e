"""`gptforge` as torchrun launches it, plus what tests/test_train_dist.py needs to look inside the ranks.

Run as `python -m torch.distributed.run ... tests/dist_worker.py train --key=value ...`. Environment:
  GPTFORGE_TEST_FAULT="RANK:STEP:KIND[,RANK:STEP:KIND...]"  at optimizer step STEP on rank RANK, KIND is
      nan (that step's losses become NaN), overflow (x 1e30: fp16 gradients overflow),
      sigterm (this rank alone gets SIGTERM), raise (an exception), hang (sleep without joining the
      collectives; SIGTERM still ends it, as it would a process stuck in a kernel once torchrun
      escalates to SIGKILL)
  GPTFORGE_TEST_PARAMS=DIR  after training, every rank writes its parameters to DIR/rank{r}.pt
"""

from __future__ import annotations

import os
import signal
import sys
import time

import torch

import gptforge.train.loop
from gptforge.cli import main
from gptforge.model.gpt import GPT

rank = int(os.environ.get("RANK", 0))
captured = {}


def _capture_model():
    real = gptforge.train.loop.build_optimizer

    def build_optimizer(model, *args, **kwargs):
        captured["model"] = model
        return real(model, *args, **kwargs)

    gptforge.train.loop.build_optimizer = build_optimizer


def _inject_faults(spec: str, accum: int):
    faults = {}
    for item in spec.split(","):
        fault_rank, fault_step, kind = item.split(":")
        if int(fault_rank) == rank:
            faults[int(fault_step)] = kind
    real = GPT.forward
    calls = {"n": 0}

    def forward(self, idx, targets=None):
        logits, loss = real(self, idx, targets)
        if self.training and targets is not None:
            kind = faults.get(calls["n"] // accum)
            if kind:
                if kind == "nan":
                    loss = loss * float("nan")
                elif kind == "overflow":
                    loss = loss * 1e30
                elif kind == "sigterm":
                    os.kill(os.getpid(), signal.SIGTERM)
                elif kind == "raise":
                    raise ValueError(f"injected fault on rank {rank}")
                elif kind == "hang":
                    signal.signal(signal.SIGTERM, signal.SIG_DFL)
                    time.sleep(3600)
            calls["n"] += 1
        return logits, loss

    GPT.forward = forward


if __name__ == "__main__":
    args = sys.argv[1:]
    accum = next(int(a.split("=")[1]) for a in args if a.startswith("--gradient_accumulation_steps="))
    accum //= int(os.environ.get("WORLD_SIZE", 1))
    if os.environ.get("GPTFORGE_TEST_FAULT"):
        _inject_faults(os.environ["GPTFORGE_TEST_FAULT"], accum)
    _capture_model()
    code = main(args)
    out = os.environ.get("GPTFORGE_TEST_PARAMS")
    if out and code in (0, 130, 143):  # (a run a signal stopped saved first)
        state = {k: v.detach().cpu().clone() for k, v in captured["model"].state_dict().items()}
        torch.save(state, os.path.join(out, f"rank{rank}.pt"))
    sys.exit(code)
