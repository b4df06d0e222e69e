"""Growing a dataset, end to end through the command line: prepare part 1, train, prepare part 2 into the
same DATA_DIR, resume with a lower LR, then check that the new shard was trained on, that tokens and
epochs are counted per dataset version, and what diagnose and plot say about the growth."""

import json

import pytest

from gptforge.analysis.diagnose.report import diagnose_command
from gptforge.analysis.plot import draw
from gptforge.analysis.runlog import read_run
from gptforge.cli import main
from gptforge.commands.demo import markdown_to_script
from gptforge.data.dataset import open_dataset
from gptforge.train.checkpoint import latest_checkpoint, load_checkpoint
from gptforge.train.loader import TrainLoader

from helpers import plays_dir

T, BATCH, STEPS = 32, 8, 40
MODEL = ["--n_layer=2", "--n_head=2", "--n_embd=32", f"--block_size={T}", f"--batch_size={BATCH}",
         "--gradient_accumulation_steps=1", "--eval_interval=10", "--eval_iters=4", "--log_interval=5",
         "--warmup_iters=5", "--sample_tokens=0", "--dropout=0.0", "--seed=3"]


def write_part(directory, plays, chars=40_000):
    directory.mkdir()
    for md in plays:
        (directory / f"{md.stem}.txt").write_text(markdown_to_script(md.read_text(encoding="utf-8"))[:chars],
                                                  encoding="utf-8")
    return directory


def events(run, kind):
    return [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if e["event"] == kind]


def run_cli(*args):
    assert main([str(a) for a in args]) == 0


@pytest.fixture(scope="module")
def grown_run(tmp_path_factory):
    """Two plays, 40 steps; two more plays appended to the same DATA_DIR; 40 more steps at a lower LR."""
    root = tmp_path_factory.mktemp("grow")
    plays = sorted(plays_dir().glob("*/*.md"))
    part1, part2 = write_part(root / "part1", plays[:2]), write_part(root / "part2", plays[2:4])
    data, run = root / "data", root / "run"
    # speeches (blank-line separated) are the documents, so the hash split has many to spread
    source = ["--doc-separator", r"\n\n", "--val-fraction", "0.05"]
    run_cli("tokenizer", "train", part1, "--vocab-size", 320, "--out", root / "tok")
    run_cli("prepare", part1, "--out", data, "--tokenizer", root / "tok", *source)
    run_cli("train", f"--data={data}", f"--out={run}", *MODEL, f"--max_iters={STEPS}", "--learning_rate=3e-3",
            "--min_lr=3e-4")
    before = load_checkpoint(latest_checkpoint(run))["state"]
    v1 = open_dataset(data)
    v1_train, v1_val = v1.train_tokens, v1.val_tokens
    run_cli("prepare", part2, "--out", data, *source)
    run_cli("train", f"--data={data}", f"--out={run}", *MODEL, "--init_from=resume", f"--max_iters={2 * STEPS}",
            "--learning_rate=1e-3", "--min_lr=1e-4")
    return dict(root=root, data=data, run=run, before=before, v1_train=v1_train, v1_val=v1_val)


def test_the_resumed_run_trains_on_the_new_shard(grown_run):
    data, run, before = grown_run["data"], grown_run["run"], grown_run["before"]
    manifest = json.loads((data / "manifest.json").read_text())
    names = [s["file"] for s in manifest["shards"]["train"]]  # one train shard per version
    assert len(names) == 2 and [v["version"] for v in manifest["versions"]] == [1, 2]
    ds = open_dataset(data)
    old_tokens = grown_run["v1_train"]
    assert ds.version == 2 and ds.train_tokens > 1.5 * old_tokens
    assert before["step"] == STEPS and before["loader"]["train_shards"] == names[:1]

    # replay the loader from the checkpoint the resume started from: the trainer's own final loader state
    # must be where these 40 steps of batches end, and they must include blocks of the new shard
    loader = TrainLoader(ds, BATCH, T, seed=3)
    loader.load_state_dict(before["loader"])
    assert loader.grew == {"old_train_tokens": old_tokens, "new_train_tokens": ds.train_tokens, "version": 2}
    where = {}  # block contents -> the first block index holding them
    for b in range(loader.n_blocks):
        where.setdefault(ds.train.read(b * T, T).tobytes(), b)
    starts = [where[row.tobytes()] * T for _ in range(STEPS) for row in loader.next_batch()[0].numpy()]
    after = load_checkpoint(latest_checkpoint(run))["state"]
    assert after["step"] == 2 * STEPS and after["loader"] == loader.state_dict()
    assert after["loader"]["train_shards"] == names
    assert after["loader"]["growth"] == [[loader.n_blocks, before["loader"]["pos"]]]
    new_blocks = sum(1 for s in starts if s >= old_tokens)
    # the new shard is about half the data, and the new blocks are shuffled in with the unseen old ones
    assert 0.3 * len(starts) < new_blocks < 0.8 * len(starts)


def test_growth_is_logged_and_diagnosed_per_dataset_version(grown_run):
    run, data = grown_run["run"], grown_run["data"]
    ds = open_dataset(data)
    per_iter = BATCH * T
    (grew,) = events(run, "data_grew")
    assert grew == dict(grew, step=STEPS, old_train_tokens=grown_run["v1_train"], new_train_tokens=ds.train_tokens,
                        version=2)
    starts = events(run, "start")
    assert [(s["dataset_version"], s["dataset_train_tokens"], s["resumed_from"]) for s in starts] == [
        (1, grown_run["v1_train"], None), (2, ds.train_tokens, STEPS)]

    d = diagnose_command(run)
    v1, v2 = d.facts.versions
    assert (v1.version, v1.start_step, v1.end_step, v1.tokens) == (1, 0, STEPS, STEPS * per_iter)
    assert (v2.version, v2.start_step, v2.end_step, v2.tokens) == (2, STEPS, 2 * STEPS, STEPS * per_iter)
    assert v1.epochs == pytest.approx(STEPS * per_iter / grown_run["v1_train"])
    assert v2.epochs == pytest.approx(STEPS * per_iter / ds.train_tokens)
    assert (v1.val_tokens, v2.val_tokens) == (grown_run["v1_val"], ds.val_tokens)
    assert d.facts.epochs == pytest.approx(2 * STEPS * per_iter / ds.train_tokens)

    # the val series continues across the resume: the eval at the growth step is the first launch's
    run_log = read_run(run)
    evals = {e.step: e.val_loss for e in run_log.evals}
    assert sorted(evals) == list(range(0, 2 * STEPS + 1, 10))
    (g,) = d.facts.growths
    assert g.step == STEPS and g.tokens == STEPS * per_iter
    assert g.val_before == (STEPS, evals[STEPS]) and g.after == [(s, evals[s]) for s in (50, 60, 70, 80)]
    assert g.change == pytest.approx(evals[80] - evals[STEPS])
    # (judged by the one part's val loss, measured on the grown val split at the growth step and after)
    assert g.verdict in ("helped", "capacity", "forgetting", "worse") and [p.name for p in g.parts] == ["text"]
    assert d.finding("data_grew").evidence[0].startswith(
        f"the train data grew at step {STEPS} ({STEPS * per_iter:,} tokens seen): {grown_run['v1_train']:,} -> "
        f"{ds.train_tokens:,} train tokens (version 1 -> 2)")

    report = (run / "diagnosis.md").read_text()
    assert "## Dataset versions" in report
    assert (f"| 1 | {grown_run['v1_train']:,} | {grown_run['v1_val']:,} | 0-{STEPS} | {STEPS * per_iter:,} | "
            f"{v1.epochs:.2f} |") in report
    assert (f"| 2 | {ds.train_tokens:,} | {ds.val_tokens:,} | {STEPS}-{2 * STEPS} | {STEPS * per_iter:,} | "
            f"{v2.epochs:.2f} |") in report
    assert (f"- The data grew at step {STEPS} ({STEPS * per_iter:,} tokens seen): {grown_run['v1_train']:,} -> "
            f"{ds.train_tokens:,} train tokens (version 1 -> 2); val {evals[STEPS]:.4f} before -> {evals[80]:.4f} at "
            "step 80") in report


def test_plot_marks_the_growth(grown_run):
    out = grown_run["root"] / "loss.png"
    run_cli("plot", grown_run["run"], "--out", out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax_step = draw([read_run(grown_run["run"])]).axes[0]
    (mark,) = [line for line in ax_step.get_lines() if line.get_label() == "data grew"]
    assert list(mark.get_xdata()) == [STEPS, STEPS]
