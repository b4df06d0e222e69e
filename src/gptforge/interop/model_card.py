"""README.md of an exported model: what it is, what it was trained on, how far, how good, and how to use it.

Everything comes from the run directory: the checkpoint's state (step, tokens seen, val loss), its config,
metrics.jsonl (the val loss curve's last eval, and HellaSwag where an eval measured it) and the dataset's
manifest where the data directory is still there. A figure the run does not have is left out, never guessed.
"""

from __future__ import annotations

import json
from pathlib import Path

from gptforge import fmt
from gptforge.config import build_config, to_toml
from gptforge.data.manifest import load_manifest
from gptforge.errors import UserError

ARCHS = {"gpt2": "GPT-2 (learned positions, LayerNorm, GELU, tied embedding and head)",
         "modern": "modern GPT (rotary positions, RMSNorm, QK-norm, ReLU², untied head, no biases, logit soft-cap)"}


def last_eval(run_dir: Path, step: int) -> dict:
    """The last `eval` event of metrics.jsonl at or before `step`, merged over events of that step; {} if none."""
    found: dict = {}
    try:
        lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash
        if not isinstance(event, dict) or event.get("event") != "eval" or not event.get("step", 0) <= step:
            continue
        found = {**found, **event} if event.get("step") == found.get("step") else event
    return found


def hellaswag(evaluation: dict) -> tuple[str, float] | None:
    """(field, accuracy) of the eval's HellaSwag figure, acc_norm preferred."""
    fields = sorted((k for k, v in evaluation.items() if k.lower().startswith("hellaswag")
                     and isinstance(v, (int, float)) and not isinstance(v, bool)), key=lambda k: "norm" not in k)
    return (fields[0], float(evaluation[fields[0]])) if fields else None


def _data_lines(data: str) -> list[str]:
    if not data:
        return ["- not recorded in the run's config"]
    lines = [f"- `{data}`"]
    try:
        manifest = load_manifest(data) if Path(data).is_dir() else None
    except UserError:
        manifest = None
    if manifest:
        tok, totals = manifest["tokenizer"], manifest["totals"]
        lines.append(f"- tokenizer: {tok.get('name')} ({tok.get('vocab_size'):,} tokens)")
        lines.append(f"- {totals.get('documents', 0):,} documents, {fmt.count(totals.get('train_tokens', 0))} train "
                     f"and {fmt.count(totals.get('val_tokens', 0))} val tokens")
        sources = [s.get("path", "?") for s in manifest["sources"]]
        shown = ", ".join(f"`{Path(p).name}`" for p in sources[:8]) + (" ..." if len(sources) > 8 else "")
        lines.append(f"- {len(sources)} source(s): {shown}")
    return lines


def model_card(run_dir: Path, state: dict, n_params: int, tokenizer_note: str, repo: str | None = None) -> str:
    flat = state.get("config") or {}
    cfg = build_config({k: v for k, v in flat.items() if v is not None})
    arch, step = cfg.model.arch, int(state.get("step", 0))
    evaluation = last_eval(run_dir, step)
    val = state.get("val_loss") if state.get("val_loss") is not None else evaluation.get("val_loss")
    name = repo or run_dir.resolve().name
    remote = arch == "modern"
    rows = [("architecture", f"`{arch}`: {ARCHS[arch]}"), ("parameters", f"{n_params:,}"),
            ("layers / heads / width / context", f"{cfg.model.n_layer} / {cfg.model.n_head} / {cfg.model.n_embd} / "
                                                 f"{cfg.model.block_size}"),
            ("step", f"{step:,}"), ("tokens seen", f"{int(state.get('tokens_seen', 0)):,}")]
    if val is not None:
        rows.append(("val loss", f"{val:.4f}"))
    if state.get("best_val_loss") not in (None, float("inf")):
        rows.append(("best val loss", f"{state['best_val_loss']:.4f}"))
    if (swag := hellaswag(evaluation)) is not None:
        rows.append((f"HellaSwag ({swag[0]})", f"{swag[1]:.4f} (eval at step {evaluation.get('step')})"))
    trust = ", trust_remote_code=True" if remote else ""
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags:", "- gptforge",
             f"- {arch}", "---", "", f"# {name}", "",
             "A GPT trained with gptforge and exported with `gptforge export`"
             + (": its modeling code ships in this folder (`modeling_gptforge.py`)." if remote else "."), "",
             "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "", "## Data", "", *_data_lines(cfg.data.data),
             "", "## Tokenizer", "", f"- {tokenizer_note}", "", "## Use", "", "```python",
             "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             f'model = AutoModelForCausalLM.from_pretrained("{name}"{trust})',
             f'tokenizer = AutoTokenizer.from_pretrained("{name}"{trust})',
             'ids = tokenizer("The capital of France is", return_tensors="pt").input_ids',
             "print(tokenizer.decode(model.generate(ids, max_new_tokens=20, do_sample=False)[0]))", "```", "",
             "Evaluate with lm-evaluation-harness:", "", "```bash",
             f"lm_eval --model hf --model_args pretrained={name}{',trust_remote_code=True' if remote else ''} "
             "--tasks hellaswag --batch_size 8", "```", "", "## Training config", "", "```toml", to_toml(cfg).strip(),
             "```", ""]
    return "\n".join(lines)
