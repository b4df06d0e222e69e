# The steps both recipes share: sourced by recipe_rtx4070.sh and recipe_8xh100.sh after they set
# SHARDS, DATASET, TOKENIZER, RAW_DIR, DATA_DIR, RUN_DIR, GPU, NPROC, LAUNCH, CONFIG, EXTRA, PROMPT,
# SAMPLE_TOKENS, EVAL_BATCHES and DOWNLOAD_WORKERS. Every step is safe to rerun.

# ---- 1. download the shards (parallel, resumable, verified; the validation shard comes along)
gptforge download "$DATASET" --out "$RAW_DIR" --shards "$SHARDS" --workers "$DOWNLOAD_WORKERS"

# ---- 2. the tokenizer: GPT-2's (offline, nothing to do), or a byte-level BPE trained on the text
TOK=gpt2
if [ "$TOKENIZER" != gpt2 ]; then
  TOK="$DATA_DIR.tokenizer"
  [ -d "$TOK" ] || gptforge tokenizer train "$RAW_DIR" --vocab-size "$TOKENIZER" --out "$TOK"
fi

# ---- 3. tokenize into shards + manifest (1% of the documents held out for validation)
gptforge prepare "$RAW_DIR" --out "$DATA_DIR" --tokenizer "$TOK"
gptforge inspect "$DATA_DIR"

# ---- 4. check that the run fits each GPU, and how long it takes
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
