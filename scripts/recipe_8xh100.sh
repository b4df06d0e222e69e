#!/usr/bin/env bash
# GPT-2 124M from nothing on one 8xH100 node: llm.c's GPT-2 reproduction (10 billion tokens of
# FineWeb-Edu) with torchrun. Rerun it after a crash and it continues (finished downloads are skipped,
# prepare adds nothing twice, training resumes from the last checkpoint).
#
# What to expect (docs/recipes.md explains every number; all are estimates, not measurements):
#   time    download 200 shards (~20 GB): ~7 min at 50 MB/s; prepare: ~10-30 min on a node's cores;
#           train: 45 min at 40% MFU (`gptforge plan`; llm.c reported ~45 min for this run on 8xH100)
#   disk    ~45 GB: 20 GB parquet + 19 GB of token shards + up to 3 checkpoints of 1.5 GB
#   result  val loss ~3.28 or a little below: llm.c's GPT-2 124M reaches 3.28 on FineWeb's val set after
#           10 billion tokens (the modded-nanogpt target); FineWeb-Edu is the easier text.
set -euo pipefail

# ---- where things go (each can be set from the environment)
SHARDS=${SHARDS:-200}                             # ~250M characters each: 200 shards = ~10.5B GPT-2 tokens
DATASET=${DATASET:-fineweb-edu-100b-shuffle}      # a named dataset, or a URL template with {index}
TOKENIZER=${TOKENIZER:-gpt2}                      # gpt2, or a vocabulary size to train your own BPE
RAW_DIR=${RAW_DIR:-$HOME/gptforge/raw/fineweb-edu}
DATA_DIR=${DATA_DIR:-$HOME/gptforge/data/fineweb-edu-$TOKENIZER}
RUN_DIR=${RUN_DIR:-$HOME/gptforge/runs/gpt2-124m-8xh100}
GPU=${GPU:-H100}                                  # the card `gptforge plan` checks the memory against
NPROC=${NPROC:-8}                                 # GPUs on this node
CONFIG=${CONFIG:-$(cd "$(dirname "$0")/.." && pwd)/configs/gpt2_124m_8xh100.toml}
EXTRA=${EXTRA:-}                                  # more --key=value for plan and train, e.g. --max_iters=200
PROMPT=${PROMPT:-The most important thing to know about the ocean is}
SAMPLE_TOKENS=${SAMPLE_TOKENS:-120}               # tokens per sample (3 samples)
EVAL_BATCHES=${EVAL_BATCHES-100}                  # final eval: 6,400 sequences (EVAL_BATCHES= : all of val)
DOWNLOAD_WORKERS=${DOWNLOAD_WORKERS:-8}
# one training process per GPU; LAUNCH=gptforge runs a single process instead
if [ -z "${LAUNCH:-}" ]; then
  command -v torchrun > /dev/null || { echo "torchrun not found: install PyTorch, or set LAUNCH=gptforge" >&2; exit 1; }
  LAUNCH="torchrun --standalone --nproc_per_node=$NPROC -m gptforge"
fi

source "$(dirname "$0")/recipe_steps.sh"
