"""`gptforge export RUN_DIR --format hf --out DIR`: a run's latest checkpoint as a transformers GPT-2.

Only gpt2-arch runs export: the modern arch (rotary, QK-norm, ReLU², logit soft-cap, untied head) has no
standard transformers architecture that computes the same function, and a file that loads but predicts
differently is worse than none. The directory is built under a temporary name, checked by loading it
back and comparing logits, and only then renamed to DIR.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from gptforge.data.tokenizers import EOT, gpt2_files, load_tokenizer
from gptforge.errors import UserError
from gptforge.fsutil import building_dir
from gptforge.interop.hf import hf_config_from_model, hf_state_from_gptforge, load_hf_gpt2
from gptforge.model.gpt import GPT
from gptforge.train.checkpoint import latest_checkpoint
from gptforge.train.runs import load_run


def _load_run_model(run_dir: Path) -> tuple[GPT, Path]:
    model, _, _ = load_run(run_dir, torch.device("cpu"))
    if model.cfg.arch != "gpt2":
        raise UserError(
            f"{run_dir}: arch={model.cfg.arch!r} cannot be exported to Hugging Face format: no standard transformers "
            "architecture computes the same function (rotary positions, QK-norm, ReLU², logit soft-cap, untied "
            "head); only arch='gpt2' runs export"
        )
    return model, latest_checkpoint(run_dir)


def _write_json(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def _write_tokenizer(run_dir: Path, tmp: Path, block_size: int) -> tuple[int | None, str]:
    """The run's tokenizer in HF's format where one exists; (end-of-text id, what was written)."""
    tok_dir = run_dir / "tokenizer"
    if not tok_dir.is_dir():
        return None, "no tokenizer (the run has no tokenizer/ directory)"
    tok = load_tokenizer(tok_dir)
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    if tok.kind == "gpt2":
        encoder, merges = gpt2_files()  # byte-identical to HF's gpt2 vocab.json and merges.txt
        shutil.copyfile(encoder, tmp / "vocab.json")
        shutil.copyfile(merges, tmp / "merges.txt")
        _write_json(tmp / "tokenizer_config.json", {"tokenizer_class": "GPT2Tokenizer", "model_max_length": block_size,
                                                   "add_prefix_space": False, **special})
        _write_json(tmp / "special_tokens_map.json", special)
        return tok.eot_id, "GPT-2 tokenizer (vocab.json, merges.txt)"
    if tok.kind == "bpe":
        shutil.copyfile(tok_dir / "tokenizer.json", tmp / "tokenizer.json")  # HF tokenizers' own file
        _write_json(tmp / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast",
                                                   "model_max_length": block_size, **special})
        _write_json(tmp / "special_tokens_map.json", special)
        return tok.eot_id, "trained BPE tokenizer (tokenizer.json)"
    return tok.eot_id, f"no tokenizer files ({tok.kind} tokenizers have no Hugging Face equivalent)"


def _check_export(model: GPT, tmp: Path) -> None:
    """Load the written directory back and require the exact same logits: never leave a file that loads wrong."""
    reloaded = load_hf_gpt2(str(tmp)).eval()
    idx = torch.arange(min(model.cfg.block_size, 64)).remainder(model.vocab_size)[None]
    with torch.no_grad():
        want, _ = model.to("cpu")(idx)
        got, _ = reloaded(idx)
    if not torch.equal(want[..., :model.vocab_size], got[..., :model.vocab_size]):
        raise RuntimeError("exported weights do not reproduce the model's logits")  # a bug, not a user error


def export_command(run_dir, fmt: str = "hf", out: str | os.PathLike = "") -> Path:
    """Write the run's latest checkpoint to `out` in format `fmt` (only "hf"); return the directory."""
    from safetensors.torch import save_file

    run_dir, out = Path(run_dir), Path(out)
    if fmt != "hf":
        raise UserError(
            f"--format {fmt!r} is not supported; the only export format is 'hf' (Hugging Face transformers)"
        )
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} already exists and is not an empty directory; choose another or remove it")
    model, path = _load_run_model(run_dir)
    with building_dir(out) as tmp:
        eot_id, tokenizer_note = _write_tokenizer(run_dir, tmp, model.cfg.block_size)
        _write_json(tmp / "config.json", hf_config_from_model(model.cfg, eot_id))
        if eot_id is not None:
            _write_json(tmp / "generation_config.json", {"bos_token_id": eot_id, "eos_token_id": eot_id})
        save_file(hf_state_from_gptforge(model.state_dict(), model.cfg), str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        _check_export(model, tmp)
    print(f"exported {path} ({model.num_params():,} parameters) to {out} as a transformers GPT2LMHeadModel; "
          f"{tokenizer_note}")
    return out
