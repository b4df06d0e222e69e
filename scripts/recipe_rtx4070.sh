#!/usr/bin/env bash
# GPT-2 124M from nothing on ONE 12 GB consumer GPU (RTX 4070): download FineWeb-Edu, tokenize, train,
# evaluate, sample, diagnose. Run it from anywhere; rerun it after a crash and it continues (finished
# downloads are skipped, prepare adds nothing twice, training resumes from the last checkpoint).
#
# What to expect (docs/recipes.md explains every number; all are estimates, not measurements):
#   time    download 50 shards (~5 GB): minutes at 50 MB/s; prepare: ~10-20 min on 8 cores;
#           train: 25 h at 40% MFU, 34 h at 30% (`gptforge plan` figures; `gptforge bench` measures yours)
#   disk    ~15 GB: 5 GB parquet + 4.8 GB of token shards + up to 3 checkpoints of 1.5 GB
#   result  val loss ~3.6 after 2.49 billion tokens (Chinchilla's 20 tokens per parameter): llm.c's GPT-2
#           124M reaches ~3.28 on FineWeb after 10 billion, and Chinchilla's data term adds ~0.3 at a
#           quarter of the tokens. Samples: fluent English sentences that drift off topic.
set -euo pipefail

# ---- where things go (each can be set from the environment)
SHARDS=${SHARDS:-50}                              # ~250M characters each: 50 shards = ~2.6B GPT-2 tokens
DATASET=${DATASET:-fineweb-edu-100b-shuffle}      # a named dataset, or a URL template with {index}
TOKENIZER=${TOKENIZER:-gpt2}                      # gpt2, or a vocabulary size to train your own BPE
RAW_DIR=${RAW_DIR:-$HOME/gptforge/raw/fineweb-edu}
DATA_DIR=${DATA_DIR:-$HOME/gptforge/data/fineweb-edu-$TOKENIZER}
RUN_DIR=${RUN_DIR:-$HOME/gptforge/runs/gpt2-124m-rtx4070}
GPU=${GPU:-RTX 4070}                              # the card `gptforge plan` checks the memory against
CONFIG=${CONFIG:-$(cd "$(dirname "$0")/.." && pwd)/configs/gpt2_124m_rtx4070.toml}
EXTRA=${EXTRA:-}                                  # more --key=value for plan and train, e.g. --max_iters=200
PROMPT=${PROMPT:-The most important thing to know about the ocean is}
SAMPLE_TOKENS=${SAMPLE_TOKENS:-120}               # tokens per sample (3 samples)
EVAL_BATCHES=${EVAL_BATCHES-400}                  # final eval: 3,200 sequences (EVAL_BATCHES= : all of val)
DOWNLOAD_WORKERS=${DOWNLOAD_WORKERS:-4}
NPROC=1                                           # one GPU, one process
LAUNCH=${LAUNCH:-gptforge}

source "$(dirname "$0")/recipe_steps.sh"
