"""HellaSwag scoring speed on the CPU: gptforge's scorer against llm.c's way, same model and items, one process.

llm.c's dev/data/hellaswag.py puts an item's 4 endings in one padded forward and computes the logits of every
position; gptforge computes the head only where an ending token is scored (GPT.forward(logits_at=...)).
Both give the same losses (tests/train/test_hellaswag.py); this measures the time.

Items: the bundled fixture (tests/fixtures/hellaswag_val_small.jsonl) repeated up to --limit, since the real
val set cannot be fetched on this machine, or --file FILE (the real one: `gptforge download hellaswag`).
Models: random weights (the speed does not depend on them) of --size small (6 layers, 384 wide, block 256)
or 124m (GPT-2 small: 12 layers, 768 wide, block 1024), GPT-2's vocabulary.

    python benchmarks/hellaswag_cpu.py --size 124m --limit 40 [--file FILE] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from gptforge.config import build_config
from gptforge.data.tokenizers import GPT2_VOCAB, gpt2_tokenizer
from gptforge.model.gpt import GPT
from gptforge.train import hellaswag as hs

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "hellaswag_val_small.jsonl"
SIZES = {"small": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
         "124m": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024)}


def llmc_way(model, rows) -> int:
    """llm.c's scoring of one item: a padded [4, T] forward, the logits of every position, masked losses."""
    inputs, targets = rows
    width = max(map(len, inputs))
    idx = torch.tensor([r + [0] * (width - len(r)) for r in inputs])
    tgt = torch.tensor([r + [-1] * (width - len(r)) for r in targets])
    logits, _ = model(idx)
    losses = F.cross_entropy(logits.flatten(0, 1).float(), tgt.flatten(), ignore_index=-1, reduction="none")
    sums = losses.view(tgt.shape).sum(1)
    return int((sums / (tgt != -1).sum(1)).argmin())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=SIZES, default="124m")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--file", default=None)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    items = hs.load_items(a.file or FIXTURE)
    items = (items * (a.limit // len(items) + 1))[:a.limit]
    torch.manual_seed(0)
    model = GPT(build_config(dict(arch="gpt2", vocab_size=GPT2_VOCAB, **SIZES[a.size])).model).eval()
    tok = gpt2_tokenizer()
    rows = [hs.item_rows(c, e, model.cfg.block_size) for c, e in hs.encode(tok, items, model.vocab_size)]
    tokens = sum(len(r) for inputs, _ in rows for r in inputs)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {a.size} model "
          f"({model.num_params() / 1e6:.1f}M parameters, random weights); {len(items)} items "
          f"({'the fixture, repeated' if a.file is None else a.file}), {tokens:,} tokens through the model")
    ours, theirs = [], []
    hs.score(model, tok, items[:2], torch.device("cpu"))  # warm-up
    for _ in range(a.repeats):
        start = time.perf_counter()
        with torch.no_grad():
            for r in rows:
                llmc_way(model, r)
        theirs.append(time.perf_counter() - start)
        result = hs.score(model, tok, items, torch.device("cpu"))
        ours.append(result.seconds)
    t_ours, t_theirs = statistics.median(ours), statistics.median(theirs)
    print(f"gptforge: {t_ours:.2f} s median of {a.repeats} ({tokens / t_ours:,.0f} tok/s, {len(items) / t_ours:.1f} "
          f"items/s); llm.c's way: {t_theirs:.2f} s ({tokens / t_theirs:,.0f} tok/s): {t_theirs / t_ours:.2f}x")
    print(result.line())


if __name__ == "__main__":
    main()
