"""Checkpoints: atomic save, discovery of the latest complete one, verified load, retention.

A checkpoint is `RUN_DIR/checkpoints/step_NNNNNNNN/` holding model.safetensors, optimizer.pt,
train_state.pt, state.json and, written last, `COMPLETE` with the size and sha256 of every other file.
It is written into a temporary directory, synced, then renamed into place, so a crash at any instant
leaves either no new checkpoint or a complete one. Only directories whose marker matches their files
count. Loading never executes pickled code (safetensors, torch.load(weights_only=True), JSON).

Disk-full policy: if saving fails (ENOSPC or any other OS error) the partial directory is removed,
nothing older is purged, and a UserError stops the run, naming the checkpoint that is still intact.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gptforge.errors import UserError
from gptforge.fsutil import atomic_write_text, fsync_dir, sha256_file

CHECKPOINTS = "checkpoints"
MARKER = "COMPLETE"
BEST = "BEST"  # names the step directory with the best val loss; kept by retention
FILES = ("model.safetensors", "optimizer.pt", "train_state.pt", "state.json")
TMP_PREFIX = ".tmp_"


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _plain_tensors(state: dict) -> dict:
    """CPU, contiguous, and no two keys sharing memory (tied embeddings), as safetensors requires."""
    out, seen = {}, set()
    for key, value in state.items():
        t = value.detach().cpu().contiguous()
        ptr = (t.untyped_storage().data_ptr(), t.storage_offset())
        out[key] = t.clone() if ptr in seen else t
        seen.add(ptr)
    return out


def _write_files(tmp: Path, model_state: dict, optimizer_state: dict, extra_tensors: dict, state: dict) -> None:
    save_file(_plain_tensors(model_state), str(tmp / "model.safetensors"))
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(extra_tensors, tmp / "train_state.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    marker = {name: {"size": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)} for name in FILES}
    for name in FILES:
        _fsync_file(tmp / name)
    # the marker goes last: its presence is what makes the directory a checkpoint
    with open(tmp / MARKER, "w", encoding="utf-8") as f:
        f.write(json.dumps({"files": marker}, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)


def save_checkpoint(run_dir, step: int, *, model_state: dict, optimizer_state: dict, extra_tensors: dict,
                    state: dict, keep_last: int, is_best: bool) -> Path:
    """Write checkpoint `step` atomically, then apply retention (keep_last newest + the best)."""
    if keep_last < 2:
        raise UserError(f"keep_last must be at least 2 (got {keep_last}): the newest checkpoint may be half-written")
    root = Path(run_dir) / CHECKPOINTS
    final = root / step_name(step)
    tmp = root / f"{TMP_PREFIX}{step_name(step)}_{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(root)
        tmp.mkdir()
        _write_files(tmp, model_state, optimizer_state, extra_tensors, state)
        if final.exists():  # saving the same step again (e.g. right after a resume): swap atomically-ish
            old = root / f"{TMP_PREFIX}old_{step_name(step)}_{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(root)
        if is_best:
            atomic_write_text(root / BEST, final.name + "\n")
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(run_dir)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        cause = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else f"{e.strerror or e}"
        raise UserError(
            f"could not save checkpoint {final}: {cause}; {kept}, nothing was deleted; the run stops here "
            "(free space, then continue with --init_from=resume)"
        ) from None
    _apply_retention(root, keep_last)
    return final


def _remove_stale_temporaries(root: Path) -> None:
    """Partial directories left by a save that was killed: never checkpoints, safe to delete."""
    for p in root.iterdir():
        if p.name.startswith(TMP_PREFIX) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def best_name(root: Path) -> str | None:
    try:
        return (root / BEST).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _apply_retention(root: Path, keep_last: int) -> None:
    complete = [p for p in _step_dirs(root) if check_marker(p) is None]
    keep = {p.name for p in complete[-keep_last:]}
    best = best_name(root)
    if best:
        keep.add(best)
    for p in complete:
        if p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)


def _step_dirs(root: Path) -> list[Path]:
    """step_* directories, oldest first."""
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_") and p.name[5:].isdigit()]
    return sorted(dirs, key=lambda p: int(p.name[5:]))


def _read_marker(path: Path) -> dict | None:
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
        files = marker["files"]
        return files if isinstance(files, dict) and set(FILES) <= set(files) else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_marker(path: Path) -> str | None:
    """None when the marker exists and every file has its recorded size; else what is wrong."""
    files = _read_marker(path)
    if files is None:
        return f"no valid {MARKER} marker"
    for name, info in files.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        size = f.stat().st_size
        if size == 0:
            return f"{name} is empty (0 bytes)"
        if size != info.get("size"):
            return f"{name} is {size} bytes, the marker says {info.get('size')} (truncated)"
    return None


def latest_checkpoint(run_dir) -> Path | None:
    """The newest complete checkpoint of a run, or None; incomplete or truncated ones are skipped."""
    for p in reversed(_step_dirs(Path(run_dir) / CHECKPOINTS)):
        if check_marker(p) is None:
            return p
    return None


def _verify_checksums(path: Path, names=FILES) -> None:
    problem = check_marker(path)
    if problem:
        raise UserError(f"checkpoint {path} is not complete: {problem}")
    for name, info in _read_marker(path).items():
        if name in names and sha256_file(path / name) != info.get("sha256"):
            raise UserError(f"checkpoint {path}: {name} does not match the checksum in {MARKER} (corrupt file)")


def load_checkpoint(path, weights: bool = True) -> dict:
    """dict(model=, optimizer=, tensors=, state=) after verifying every file's checksum.

    weights=False reads only the small files (model and optimizer are None): what the ranks other than
    0 need when rank 0 broadcasts the weights (FSDP)."""
    path = Path(path)
    _verify_checksums(path, FILES if weights else ("train_state.pt", "state.json"))
    model = optimizer = None
    try:
        if weights:
            model = load_file(str(path / "model.safetensors"))
            optimizer = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        tensors = torch.load(path / "train_state.pt", map_location="cpu", weights_only=True)
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (SafetensorError, pickle.UnpicklingError, OSError, ValueError, RuntimeError) as e:
        # weights_only refuses anything that would run code; report it as a bad file, not a traceback
        raise UserError(f"checkpoint {path} could not be read safely: {str(e).splitlines()[0]}") from None
    return {"model": model, "optimizer": optimizer, "tensors": tensors, "state": state}


def verify_run(run_dir) -> list[str]:
    """One line per checkpoint directory: complete and verified, or what is wrong with it."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return [f"{root}: no checkpoints"]
    lines = []
    best = best_name(root)
    latest = latest_checkpoint(run_dir)
    for p in _step_dirs(root):
        try:
            _verify_checksums(p)
        except UserError as e:
            lines.append(f"{p.name}: INVALID, ignored ({str(e).split(': ', 1)[-1]})")
            continue
        state = json.loads((p / "state.json").read_text(encoding="utf-8"))
        tags = [t for t, on in (("latest", p == latest), ("best", p.name == best)) if on]
        val = state.get("val_loss")
        val_text = f", val loss {val:.4f}" if isinstance(val, (int, float)) else ""
        lines.append(f"{p.name}: complete, checksums verified, {state.get('tokens_seen', 0):,} tokens seen"
                     f"{val_text}{' (' + ', '.join(tags) + ')' if tags else ''}")
    for p in sorted(root.iterdir()):
        if p.name.startswith(TMP_PREFIX):
            lines.append(f"{p.name}: temporary directory of an interrupted save, ignored")
    return lines or [f"{root}: no checkpoints"]
