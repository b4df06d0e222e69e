"""Checkpoints: atomic save, discovery of the latest complete one, verified load, retention.

A checkpoint is `RUN_DIR/checkpoints/step_NNNNNNNN/` holding model.safetensors, optimizer.pt,
train_state.pt, state.json and, written last, `COMPLETE` with the size and sha256 of every other file.
It is written into a temporary directory, synced, then renamed into place, so a crash at any instant
leaves either no new checkpoint or a complete one. Only directories whose marker matches their files
count. Loading never executes pickled code (safetensors, torch.load(weights_only=True), JSON).

Disk-full policy: if saving fails (ENOSPC or any other OS error, also when safetensors or torch's zip writer
reports it in their own words) the partial directory is removed, nothing older is purged, and a UserError stops
the run in one line: the path, the bytes needed and free, and the checkpoint that is still intact.
Non-finite weights are never saved as a checkpoint (the run stops naming the last finite one).

Readers take the newest checkpoint that verifies (`newest_valid`) and say which newer ones they skipped and why.
Retention renames a directory to a temporary name before deleting it, so a kill during retention leaves only a
temporary, which the next start removes (`remove_leftovers`, with half-deleted step directories of older versions).
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gptforge.errors import UserError
from gptforge.fsutil import (
    WriteFailed,
    atomic_write_text,
    free_bytes,
    fsync_dir,
    sha256_file,
    write_failure_line,
    writing,
)
from gptforge.train.state import TrainState

CHECKPOINTS = "checkpoints"
MARKER = "COMPLETE"
BEST = "BEST"  # names the step directory with the best val loss; kept by retention
FILES = ("model.safetensors", "optimizer.pt", "train_state.pt", "state.json")
TMP_PREFIX = ".tmp_"


class NonFiniteState(UserError):
    """Weights or optimizer state with NaN or inf: refused as a checkpoint."""


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
    """Write checkpoint `step` atomically, then apply retention (keep_last newest + the best).

    Refuses (UserError, nothing written) weights or optimizer state holding NaN or inf."""
    if keep_last < 2:
        raise UserError(f"keep_last must be at least 2 (got {keep_last}): the newest checkpoint may be half-written")
    root = Path(run_dir) / CHECKPOINTS
    final = root / step_name(step)
    bad = non_finite(model_state, "weights") or non_finite(optimizer_state, "optimizer state")
    if bad:
        previous = latest_checkpoint(run_dir)
        last = f"the last checkpoint, {previous}, holds finite weights: continue from it with --init_from=resume " \
               "after lowering the learning rate" if previous else "no earlier checkpoint exists"
        raise NonFiniteState(f"stopped at step {step}: the {bad}, so they were not saved as a checkpoint (a too "
                             f"high or non-finite learning rate, or gradients that overflowed, do this); {last}")
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
    except (OSError, SafetensorError, RuntimeError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        needed = _nbytes((model_state, optimizer_state, extra_tensors)) + 4096
        failure = write_failure(e, final, needed)
        if failure is None:
            raise  # not a write failure: a bug, with its traceback
        previous = latest_checkpoint(run_dir)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        raise UserError(f"{write_failure_line(failure)}; {kept}, nothing was deleted; the run stops here (free "
                        "space, then continue with --init_from=resume)") from None
    if is_best:
        with writing(root / BEST, len(final.name) + 1):  # (the checkpoint itself is complete by now)
            atomic_write_text(root / BEST, final.name + "\n")
    _apply_retention(root, keep_last)
    return final


def write_failure(e: BaseException, path: Path, needed: int) -> WriteFailed | None:
    """The failed write of `path` behind `e`, or None when `e` is not one (a bug). safetensors says "... (os error
    28)"; torch's zip writer only says "unexpected pos" (the errno is lost): less free space than the checkpoint
    needs means the disk was full."""
    error = _os_error(e, path, needed)
    return WriteFailed(path, error, needed) if error is not None else None


def _os_error(e: BaseException, path: Path, needed: int) -> OSError | None:
    if isinstance(e, OSError):
        return e
    found = re.search(r"os error (\d+)", str(e))
    if found:
        return OSError(int(found.group(1)), os.strerror(int(found.group(1))))
    free = free_bytes(path.parent)
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) if free is not None and free < needed else None


def _tensors(obj, prefix: str = ""):
    """(dotted name, tensor) for every tensor in a nested structure of dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
        return
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        yield from _tensors(value, f"{prefix}.{key}" if prefix else str(key))


def _nbytes(obj) -> int:
    """Bytes of the tensors in a nested structure (about the size of the files they become)."""
    return sum(t.numel() * t.element_size() for _, t in _tensors(obj))


def non_finite(obj, what: str) -> str | None:
    """'weights hold N non-finite values in NAME' for the first floating tensor with NaN or inf; None if all finite."""
    for name, t in _tensors(obj):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            count = int((~torch.isfinite(t)).sum())
            return f"{what} hold {count:,} non-finite value(s) in {name or 'a tensor'} ({t.numel():,} values)"
    return None


def _remove_stale_temporaries(root: Path) -> list[Path]:
    """Partial directories left by a save or a retention that was killed: never checkpoints, safe to delete."""
    stale = [p for p in root.iterdir() if p.name.startswith(TMP_PREFIX) and p.is_dir()]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def best_name(root: Path) -> str | None:
    try:
        return (root / BEST).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _apply_retention(root: Path, keep_last: int) -> None:
    complete = [p for p in step_dirs(root) if check_marker(p) is None]
    keep = {p.name for p in complete[-keep_last:]}
    best = best_name(root)
    if best:
        keep.add(best)
    for p in complete:
        if p.name not in keep:
            _delete(p)


def _delete(path: Path) -> None:
    """Rename first (atomic), then delete: a kill in between leaves a temporary, never a half-deleted step_*."""
    doomed = path.with_name(f"{TMP_PREFIX}del_{path.name}_{os.getpid()}")
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def remove_leftovers(run_dir) -> list[str]:
    """At the start of a run (its writer holds the lock): remove temporaries of interrupted saves and retentions,
    and step directories older than the newest complete checkpoint that lack their marker or a file (what an
    interrupted retention of an earlier version left). One line per thing removed."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    removed = _remove_stale_temporaries(root)
    latest = latest_checkpoint(run_dir)
    if latest is not None:
        half = [p for p in step_dirs(root) if step_of(p) < step_of(latest) and _half_deleted(p)]
        for p in half:
            shutil.rmtree(p, ignore_errors=True)
        removed += half
    return [f"removed {p} (left by an interrupted save or retention)" for p in removed]


def _half_deleted(path: Path) -> bool:
    problem = check_marker(path)
    return problem is not None and (problem.startswith("no valid") or problem.endswith("is missing"))


def is_step_dir(path: Path) -> bool:
    return path.name.startswith("step_") and path.name[5:].isdigit()


def step_of(path: Path) -> int:
    """The step a step_N directory holds."""
    return int(path.name[5:])


def step_dirs(root: Path) -> list[Path]:
    """step_* directories, oldest first."""
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and is_step_dir(p)), key=step_of)


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
    for p in reversed(step_dirs(Path(run_dir) / CHECKPOINTS)):
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
        raise UserError(f"checkpoint {path} could not be read safely: {unsafe_load_reason(e)}") from None
    return {"model": model, "optimizer": optimizer, "tensors": tensors, "state": state}


def unsafe_load_reason(e: BaseException) -> str:
    """torch.load(weights_only=True)'s refusal in a few words: what the file asks for. (torch's own message
    suggests weights_only=False, i.e. running the file's code: never repeat that.)"""
    text = str(e)
    asked = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.search(r"Unsupported operand (\d+)", text)
    if asked:
        return f"it asks for {asked.group(1)}, which is not plain tensor data, and gptforge never runs a file's code"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def newest_valid(run_dir, weights: bool = True) -> tuple[Path, dict, list[str]]:
    """The newest checkpoint that is complete, matches its checksums, reads, holds a valid state.json and (with
    weights) finite weights: (path, load_checkpoint's dict, one line per newer checkpoint skipped and why)."""
    run_dir = Path(run_dir)
    dirs, skipped = list(reversed(step_dirs(run_dir / CHECKPOINTS))), []
    for path in dirs:
        try:
            loaded = load_checkpoint(path, weights)
            bad = non_finite(loaded["model"], "weights") if weights else None
            why = f"its {bad}" if bad else None
            if why is None:
                TrainState.from_state_dict(loaded["state"])
        except UserError as e:
            why = str(e).removeprefix(f"checkpoint {path}").lstrip(": ")
        except ValueError as e:
            why = f"state.json {e}"
        if why:
            skipped.append((path, why))
            continue
        return path, loaded, [f"skipped checkpoint {p} ({why}); using {path.name}: delete {p} if you do not need it"
                              for p, why in skipped]
    if not skipped:
        raise UserError(f"{run_dir} has no complete checkpoint (checkpoints/step_*/ with a {MARKER} marker)")
    raise UserError(f"{run_dir} has no valid checkpoint: " + "; ".join(f"{p.name} ({why})" for p, why in skipped))


def verify_run(run_dir) -> list[str]:
    """One line per checkpoint directory: complete and verified, or what is wrong with it."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return [f"{root}: no checkpoints"]
    lines = []
    best = best_name(root)
    latest = latest_checkpoint(run_dir)
    for p in step_dirs(root):
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
