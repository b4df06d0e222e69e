"""`gptforge export RUN_DIR --format hf --out DIR [--push-to-hub REPO]`: a run's latest checkpoint for transformers.

A gpt2-arch run becomes a GPT2LMHeadModel (transformers' own code). The modern arch has no transformers
architecture computing the same function, so its folder ships its own code (hf_modern/: configuration and
modeling, loaded with trust_remote_code=True). Either way the run's tokenizer comes along in Hugging Face's form
(AutoTokenizer), with a model card. The directory is built under a temporary name, checked by loading it back
and comparing logits (exactly, with gptforge's own reader; within 1e-5 with transformers where it is installed),
and only then renamed to DIR. A file that loads but predicts differently is worse than none.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError

from gptforge.data.hf_tokenizer import write_hf_tokenizer
from gptforge.errors import UserError
from gptforge.fsutil import building_dir, write_failure_line
from gptforge.interop import hf_modern
from gptforge.interop.hf import (
    MODERN_CODE,
    hf_config_from_model,
    hf_state_from_gptforge,
    load_hf_gpt2,
    modern_config_from_hf,
    modern_hf_config,
    modern_hf_state,
)
from gptforge.interop.model_card import model_card
from gptforge.model.gpt import GPT
from gptforge.train.checkpoint import CHECKPOINTS, step_name, write_failure
from gptforge.train.runs import load_run

TOLERANCE = 1e-5  # transformers' logits against gptforge's, fp32


def _write_json(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def _write_model(model: GPT, tmp: Path, eot_id: int | None) -> str:
    """config.json, generation_config.json, model.safetensors (and the modern arch's code); what it is, in words."""
    from safetensors.torch import save_file

    if model.cfg.arch == "gpt2":
        config, tensors = hf_config_from_model(model.cfg, eot_id), hf_state_from_gptforge(model.state_dict(), model.cfg)
        what = "a transformers GPT2LMHeadModel"
    else:
        config = modern_hf_config(model.cfg, model.padded_vocab_size, eot_id)
        tensors = modern_hf_state(model.state_dict())
        for name in MODERN_CODE:
            shutil.copyfile(Path(hf_modern.__file__).parent / name, tmp / name)
        what = "a transformers model with its own code (load it with trust_remote_code=True)"
    _write_json(tmp / "config.json", config)
    if eot_id is not None:
        _write_json(tmp / "generation_config.json", {"bos_token_id": eot_id, "eos_token_id": eot_id})
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    return what


def _read_back(directory: Path, arch: str) -> GPT:
    """The exported weights as a gptforge model again, through the files only."""
    if arch == "gpt2":
        return load_hf_gpt2(str(directory))
    from safetensors.torch import load_file

    model = GPT(modern_config_from_hf(json.loads((directory / "config.json").read_text(encoding="utf-8"))))
    model.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
    return model


def _check_export(model: GPT, tmp: Path) -> str:
    """Require the same logits from the written files: exactly through gptforge's reader, and within TOLERANCE
    through transformers where it is installed. Returns what was checked."""
    idx = torch.arange(min(model.cfg.block_size, 64)).remainder(model.vocab_size)[None]
    with torch.no_grad():
        want = model.to("cpu").eval()(idx)[0][..., :model.vocab_size]
        if not torch.isfinite(want).all():  # the checkpoint's fault, not the export's: no file could match NaN
            raise UserError("the checkpoint's weights compute non-finite logits (NaN or inf), so the model is not "
                            "usable; export an earlier checkpoint (remove the newer ones from the run's checkpoints/)")
        got = _read_back(tmp, model.cfg.arch).eval()(idx)[0][..., :model.vocab_size]
    if not torch.equal(want, got):
        raise RuntimeError("exported weights do not reproduce the model's logits")  # a bug, not a user error
    try:
        import transformers
    except ImportError:
        return "transformers is not installed here, so the export was not loaded with it"
    try:
        getattr(transformers.utils.logging, "disable_progress_bar", lambda: None)()  # no "Loading weights" bar
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, trust_remote_code=model.cfg.arch == "modern")
        with torch.no_grad():
            theirs = hf.float().eval()(idx).logits
    except Exception as e:  # noqa: BLE001 - an old transformers: the files are right (checked above), say so
        first = (str(e).strip().splitlines() or [""])[0]
        return (f"not checked with transformers {transformers.__version__}: it failed to run it "
                f"({type(e).__name__}: {first})")
    diff = (theirs - want).abs().max().item() if theirs.shape == want.shape else float("inf")
    if not diff <= TOLERANCE:
        raise RuntimeError(f"transformers {transformers.__version__} computes other logits from the export "
                           f"(max difference {diff:.3g})")
    return f"checked: transformers {transformers.__version__} loads it, logits within {diff:.1e} of gptforge's"


def export_command(run_dir, fmt: str = "hf", out: str | os.PathLike = "", push_to_hub: str | None = None,
                   private: bool = False) -> Path:
    """Write the run's latest checkpoint to `out` in format `fmt` (only "hf"), then optionally upload it to the
    Hub as `push_to_hub`; return the directory."""
    run_dir, out = Path(run_dir), Path(out)
    if fmt != "hf":
        raise UserError(
            f"--format {fmt!r} is not supported; the only export format is 'hf' (Hugging Face transformers)"
        )
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} already exists and is not an empty directory; choose another or remove it")
    if push_to_hub is not None:
        from gptforge.interop.push import check_repo_id

        check_repo_id(push_to_hub)
    model, tokenizer, state = load_run(run_dir, torch.device("cpu"))  # the newest valid checkpoint
    path = run_dir / CHECKPOINTS / step_name(state["step"])
    try:
        with building_dir(out) as tmp:
            if tokenizer is not None:
                tokenizer_note = write_hf_tokenizer(tokenizer, tmp, model.cfg.block_size)
            else:
                tokenizer_note = "no tokenizer (the run has no tokenizer/ directory)"
            what = _write_model(model, tmp, tokenizer.eot_id if tokenizer is not None else None)
            (tmp / "README.md").write_text(model_card(run_dir, state, model.num_params(), tokenizer_note,
                                                      push_to_hub), encoding="utf-8")
            checked = _check_export(model, tmp)
    except (OSError, SafetensorError) as e:  # disk full, quota, read-only: building_dir removed the partial folder
        failure = write_failure(e, out, 4 * model.num_params())
        if failure is None:
            raise
        raise UserError(f"{write_failure_line(failure)}; nothing was left behind") from None
    print(f"exported {path} ({model.num_params():,} parameters) to {out} as {what}; {tokenizer_note}; {checked}")
    if push_to_hub is not None:
        from gptforge.interop.push import push

        print(f"pushed to {push(out, push_to_hub, private=private)}")
    return out
