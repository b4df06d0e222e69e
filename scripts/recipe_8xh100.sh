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
# one training process per GPU; LAUNCH=gptforge runs a single process instead
if [ -z "${LAUNCH:-}" ]; then
  command -v torchrun > /dev/null || { echo "torchrun not found: install PyTorch, or set LAUNCH=gptforge" >&2; exit 1; }
  LAUNCH="torchrun --standalone --nproc_per_node=$NPROC -m gptforge"
fi

# ---- 1. download the shards (parallel, resumable, verified; the validation shard comes along)
gptforge download "$DATASET" --out "$RAW_DIR" --shards "$SHARDS" --workers 8

# ---- 2. the tokenizer: GPT-2's (offline, nothing to do), or a byte-level BPE trained on the text
TOK=gpt2
if [ "$TOKENIZER" != gpt2 ]; then
  TOK="$DATA_DIR.tokenizer"
  [ -d "$TOK" ] || gptforge tokenizer train "$RAW_DIR" --vocab-size "$TOKENIZER" --out "$TOK"
fi

# ---- 3. tokenize into shards + manifest (1% of the documents held out for validation)
gptforge prepare "$RAW_DIR" --out "$DATA_DIR" --tokenizer "$TOK"
gptforge inspect "$DATA_DIR"

# ---- 4. check that the run fits each GPU, and how long it takes on all of them
gptforge plan "$CONFIG" --data "$DATA_DIR" --gpu "$GPU" --processes "$NPROC" $EXTRA

# ---- 5. train (resumes when the run directory already holds a checkpoint)
if [ -f "$RUN_DIR/metrics.jsonl" ] && tail -n 1 "$RUN_DIR/metrics.jsonl" | grep -q '"reason": "max_iters"'; then
  echo "training already finished in $RUN_DIR"
else
  INIT=scratch
  if compgen -G "$RUN_DIR/checkpoints/step_*/COMPLETE" > /dev/null; then INIT=resume; fi
  $LAUNCH train "$CONFIG" --data="$DATA_DIR" --out="$RUN_DIR" --init_from="$INIT" $EXTRA
fi

# ---- 6. evaluate (val loss, perplexity, bits per byte), sample, diagnose, plot
gptforge eval "$RUN_DIR" ${EVAL_BATCHES:+--batches "$EVAL_BATCHES"}
mkdir -p "$RUN_DIR/samples"
gptforge sample "$RUN_DIR" --prompt "$PROMPT" --num-samples 3 --max-new-tokens "$SAMPLE_TOKENS" \
  | tee "$RUN_DIR/samples/recipe.txt"
gptforge diagnose "$RUN_DIR"                      # -> $RUN_DIR/diagnosis.md and loss.png
gptforge plot "$RUN_DIR" --out "$RUN_DIR/curves.png"
echo "done: read $RUN_DIR/diagnosis.md"
