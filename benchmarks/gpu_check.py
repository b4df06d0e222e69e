"""The GPU check: one command that proves gptforge's GPU path, in at most 8 minutes on one H100/H200.

    python benchmarks/gpu_check.py [--out DIR] [--text tinyshakespeare.txt] [--checks abcdef]
    python benchmarks/gpu_check.py --smoke      # every step with tiny sizes on the CPU (gloo, bf16/fp16/fp32)

It prints one table and writes it as OUT/gpu_check.tsv (one row per check, scope and figure; with several
GPUs, rows per GPU and in total), and exits 1 when a check fails. `--smoke` runs in the default test
suite (tests/commands/test_gpu_check.py), so the script cannot rot before someone with a GPU runs it.

  a resume      bf16 + compile + deterministic kernels (a-c: GPU atomics would otherwise make any two runs
                differ), tiny model on tinyshakespeare: 20 steps, then a fresh process resumes to 40;
                the per-step losses of steps 21-40 and the final weights must be bit-equal to 40 steps in one go
                (--smoke: 4 and 8 steps)
  b torchrun    the same under `torchrun --nproc_per_node=1` (NCCL), compared with a's uninterrupted run; with
                2+ GPUs also 2 processes (DDP): 40 in one go against 20 + resume
  c fp16        a with float16 and the GradScaler (its scale is part of the checkpoint)
  d throughput  GPT-2 124M, T=1024, bf16, compile, batch 16/32/64 through the training step (`gptforge bench`):
                tok/s, MFU, peak memory against `gptforge plan`'s estimate, the share of step time spent making
                data; with N GPUs also all N under torchrun, in total and per GPU. Fails when the memory exceeds
                plan's estimate, or on an H100/H200 when tok/s is under half of nanoGPT's (docs/performance.md)
  e recipe      configs/shakespeare_char_gpu.toml: seconds from launch to val <= 1.47 and the best val; fails
                when val never reaches 1.47 or takes longer than a third of nanoGPT's 94.4 s
  f serve       the recipe's run on the GPU: every token greedy decoding with the KV cache picks is the first
                choice of the model run on the whole context (fp32; near-ties aside), sampling speed with the
                cache (bf16), and `gptforge eval` of the run

Budget on one H100 (estimated from docs/performance.md and ../shared/PERFORMANCE.md until the first run;
each process pays ~5 s of imports and CUDA start-up; inductor's on-disk cache makes a repeated compile cheap):
  a  3 processes; one cold compile of the tiny model (~30 s), two cached (~8 s); 40 steps are ~1 s    ~60 s
  b  2 torchrun launches of 1 process (the same graphs as a: cached)                                  ~30 s
     with 2+ GPUs, 3 launches of 2 processes: one cold compile of the DDP graphs                      +60 s
  c  as a, with new fp16 graphs                                                                      ~60 s
  d  3 cold compiles of GPT-2 124M (~45 s each) + 25 steps at 36.5 / 68.7 / 134 ms                    ~150 s
     with N GPUs, the same once more under torchrun                                                 +150 s
  e  eager, ~450 steps of ~30 ms, evals, saves                                                       ~30 s
  f  100 greedy tokens with the cache, one forward to check them, 100 sampled, one eval              ~10 s
  in all on one GPU about 5.7 minutes; b and d's multi-GPU rows add ~3.5 minutes where they run.
"""

from __future__ import annotations

import time

STARTED = time.time()  # (before torch is imported) check e counts from the launch of its process

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TEXT = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
RECIPE = REPO / "configs" / "shakespeare_char_gpu.toml"
TARGET_VAL, TARGET_SECONDS = 1.47, 94.4 / 3  # nanoGPT's shakespeare-char: best 1.4653 at 94.4 s on an H100
NANOGPT_MS = {16: 36.5, 32: 68.7, 64: 134.1}  # nanoGPT's GPT-2 124M ms/iteration on an H100 (measured)
OK, FAIL, SKIP = "ok", "FAIL", "skip"


@dataclass(frozen=True)
class Settings:
    smoke: bool
    device: str
    tiny: tuple  # the model and schedule of checks a-c
    dtype: str  # a and b
    compile: str
    throughput: tuple  # check d's model
    batches: tuple
    bench_steps: tuple  # (timed, warm-up)
    recipe: tuple  # overrides of the recipe (smoke: tiny and short)
    gpus: int  # processes for the multi-GPU rows (0: none)
    half: int = 20  # checks a-c: `half` steps, then a resume to twice that


def settings(smoke: bool) -> Settings:
    half = 4 if smoke else 20
    tiny = ("--n_layer=2", "--dropout=0.1", "--gradient_accumulation_steps=2", "--learning_rate=3e-3",
            "--warmup_iters=2", f"--lr_decay_iters={2 * half}", f"--eval_interval={half // 2}", "--eval_iters=2",
            "--log_interval=1", "--sample_tokens=0", "--seed=7", "--deterministic=true")
    if smoke:
        return Settings(True, "cpu", tiny + ("--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4"),
                        "bfloat16", "false", ("--n_layer=2", "--n_head=2", "--n_embd=64", "--block_size=64",
                                              "--vocab_size=512", "--dtype=float32"), (2, 4, 8), (2, 1),
                        ("--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=8",
                         "--max_iters=6", "--eval_interval=3", "--eval_iters=2", "--warmup_iters=2",
                         "--dtype=float32"), 2, half)
    import torch

    gpus = torch.cuda.device_count()
    return Settings(False, "cuda", tiny + ("--n_head=4", "--n_embd=128", "--block_size=128", "--batch_size=8"),
                    "bfloat16", "true", ("--dtype=bfloat16",), (16, 32, 64), (20, 5), (), gpus if gpus > 1 else 0, half)


@dataclass
class Row:
    check: str
    scope: str  # "total", "gpu0", ...
    metric: str
    value: str
    status: str = OK
    note: str = ""


class CheckFailed(Exception):
    pass


# ---------------------------------------------------------------------------------------------- processes


def launch(args: list, log: Path, procs: int = 0, timeout: float = 600) -> None:
    """`gptforge ARGS` (or this script's worker) in a fresh process; `procs` > 0: under torchrun."""
    target = ["-m", "gptforge"] if args[0] != "--worker" else [__file__]
    runner = [sys.executable] if not procs else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                 f"--nproc_per_node={procs}"]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        done = subprocess.run(runner + target + [str(a) for a in args], stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout, cwd=REPO)
    if done.returncode:
        lines = [x.strip() for x in log.read_text(errors="replace").splitlines() if x.strip()]
        errors = [x for x in lines if "Error:" in x or "error:" in x]  # the exception, not torchrun's banner
        raise CheckFailed(f"exit {done.returncode}: {(errors or lines or ['(no output)'])[-1]} (log {log})")


def log_losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["event"] == "log"}


def final_weights(run: Path) -> dict:
    from gptforge.train.checkpoint import latest_checkpoint, load_checkpoint

    return load_checkpoint(latest_checkpoint(run))["model"]


# ---------------------------------------------------------------------------------------------- checks a-c


def train_args(s: Settings, data: Path, out: Path, iters: int, *extra) -> list:
    return ["train", f"--data={data}", f"--out={out}", f"--max_iters={iters}", f"--device={s.device}",
            f"--compile={s.compile}", *s.tiny, *extra]


def resume_rows(check: str, scope: str, reference: Path, resumed: Path, half: int) -> list[Row]:
    """Steps half+1 .. 2 half of `resumed` (half the steps, then a resume) against `reference` (all in one go)."""
    ref, res = log_losses(reference), log_losses(resumed)
    steps = [k for k in range(half + 1, 2 * half + 1) if k in ref and k in res]
    worst = max((abs(ref[k] - res[k]) for k in steps), default=float("nan"))
    wa, wb = final_weights(reference), final_weights(resumed)
    equal = wa.keys() == wb.keys() and all(__import__("torch").equal(wa[k], wb[k]) for k in wa)
    bitwise = len(steps) == half and worst == 0.0 and equal
    status = OK if bitwise else FAIL
    return [Row(check, scope, f"steps {half + 1}-{2 * half} compared", str(len(steps)), status),
            Row(check, scope, "max |loss difference|", f"{worst:.3g}", status, "must be 0: bit-equal"),
            Row(check, scope, "final weights bit-equal", "yes" if equal else "no", status)]


def check_resume(s: Settings, work: Path, data: Path, check: str, *extra, procs: int = 0,
                 reference: Path | None = None) -> list[Row]:
    """`half` steps and a resume to twice that (under torchrun with `procs` processes when > 0) against all
    the steps in one go (run here unless `reference` is given)."""
    n, name = s.half, check.replace(" ", "_")
    if reference is None:
        reference = work / f"{name}_all"
        launch(train_args(s, data, reference, 2 * n, *extra), work / "logs" / f"{name}_all.log", procs)
    resumed = work / f"{name}_resumed"
    launch(train_args(s, data, resumed, n, *extra), work / "logs" / f"{name}_half.log", procs)
    launch(train_args(s, data, resumed, 2 * n, *extra, "--init_from=resume"), work / "logs" / f"{name}_resume.log",
           procs)
    return resume_rows(check, "total", reference, resumed, n)


# ---------------------------------------------------------------------------------------------- check d


def throughput_rows(s: Settings, results: list[dict], device_name: str, procs: int) -> list[Row]:
    from gptforge.analysis.plan.sizing import memory_estimate, memory_mode, param_counts
    from gptforge.config import load_config
    from gptforge.data.tokenizers import GPT2_VOCAB

    rows, h100 = [], any(n in device_name.lower() for n in ("h100", "h200"))
    for r in results:
        b = r["batch"]
        cfg = load_config(None, list(s.throughput) + [f"--batch_size={b}", "--compile=true"])
        vocab = cfg.model.vocab_size or GPT2_VOCAB
        plan = memory_estimate(cfg, param_counts(cfg.model, vocab), vocab, b, memory_mode(cfg), procs or 1)
        name = f"d batch {b}" + (f" x {procs} GPUs" if procs else "")
        fits = s.smoke or r["peak_memory_gib"] <= plan.needed_gib  # (on the CPU the peak is the process's RSS)
        speed_note, fast = "", True
        if not s.smoke and not procs and h100 and b in NANOGPT_MS:
            nanogpt = b * 1024 / (NANOGPT_MS[b] / 1000)
            fast = r["tokens_per_s"] >= 0.5 * nanogpt
            speed_note = f"{r['tokens_per_s'] / nanogpt:.2f}x nanoGPT's {nanogpt:,.0f} on an H100"
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        rows += [Row(name, "total", "tokens/s", f"{r['tokens_per_s']:,.0f}", OK if fast else FAIL, speed_note),
                 Row(name, "total", "ms/iteration", f"{r['ms_per_iter']:.1f}"),
                 Row(name, "total", "MFU", mfu, note="6N + 12LdT per token against the dense bf16 peak"),
                 Row(name, "total", "data wait, at most", f"{100 * r['data_share']:.2f}%",
                     note="host time making batches / step time")]
        for i, gib in enumerate(r["peak_memory_gib_per_process"]):
            scope = f"gpu{i}" if procs else "total"
            if procs:
                rows.append(Row(name, scope, "tokens/s", f"{r['tokens_per_s'] / procs:,.0f}"))
            rows.append(Row(name, scope, "peak memory GiB", f"{gib:.2f}", OK if fits else FAIL,
                            f"plan's estimate {plan.needed_gib:.2f} GiB (+5% and the CUDA context)"))
    return rows


def check_throughput(s: Settings, work: Path, procs: int = 0) -> list[Row]:
    out = work / f"throughput_{procs}.json"
    launch(["--worker", "throughput", "--json", out] + (["--smoke"] if s.smoke else []),
           work / "logs" / f"throughput_{procs}.log", procs)
    found = json.loads(out.read_text())
    return throughput_rows(s, found["results"], found["device"], procs)


def worker_throughput(s: Settings, out: Path) -> None:
    import gc

    import torch

    from gptforge.analysis.bench import bench
    from gptforge.config import load_config
    from gptforge.train import devices, dist

    device = devices.resolve_device(s.device)
    created, results = dist.setup(device), []  # once, for every batch size (bench joins the group it finds)
    for b in s.batches:
        # one micro-batch of b per process per step
        cfg = load_config(None, list(s.throughput) + [f"--batch_size={b}", f"--device={s.device}",
                                                      f"--gradient_accumulation_steps={dist.world_size()}",
                                                      f"--compile={'true' if not s.smoke else 'false'}"])
        steps, warmup = s.bench_steps
        results.append({"batch": b, **bench(cfg, steps=steps, warmup=warmup)})
        torch._dynamo.reset()  # (its caches hold the compiled model) then the memory of this size goes
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if dist.is_main():
        out.write_text(json.dumps({"device": devices.device_name(device), "results": results}))
    dist.cleanup(created)


# ---------------------------------------------------------------------------------------------- checks e, f


def check_recipe(s: Settings, work: Path, data: Path) -> list[Row]:
    out = work / "recipe.json"
    launch(["--worker", "recipe", "--json", out, "--data", data, "--run", work / "recipe_run"]
           + (["--smoke"] if s.smoke else []), work / "logs" / "recipe.log")
    r = json.loads(out.read_text())
    judged = not s.smoke
    reached = r["seconds_to_target"] is not None
    in_time = reached and r["seconds_to_target"] <= TARGET_SECONDS
    e = "e recipe" + (" (smoke: not judged)" if not judged else "")
    seconds = f"{r['seconds_to_target']:.1f}" if reached else "never"
    rows = [Row(e, "total", f"seconds to val <= {TARGET_VAL}", seconds, OK if in_time or not judged else FAIL,
                f"from process launch (step {r['step_to_target']}); target <= {TARGET_SECONDS:.1f} s, nanoGPT 94.4 s"),
            Row(e, "total", "best val", f"{r['best_val']:.4f}", OK if r["best_val"] <= TARGET_VAL or not judged
                else FAIL, "nanoGPT's best: 1.4653"),
            Row(e, "total", "seconds in all", f"{r['seconds_total']:.1f}", note=f"{r['steps']} steps")]
    f = "f serve" + (" (smoke: not judged)" if not judged else "")
    rows += [Row(f, "total", "greedy tokens equal with/without KV cache", f"{r['greedy_equal']}/{r['greedy_n']}",
                 OK if r["greedy_equal"] == r["greedy_n"] else FAIL,
                 f"fp32; {r['greedy_ties']} near-ties (top two within 1e-3) count as equal"),
             Row(f, "total", "sampling tokens/s (KV cache)", f"{r['sample_tokens_per_s']:,.0f}",
                 note=f"{r['sample_n']} tokens, {r['sample_dtype']}"),
             Row(f, "total", "eval val loss", f"{r['eval_val_loss']:.4f}",
                 OK if abs(r["eval_val_loss"] - r["final_val"]) < 0.05 or not judged else FAIL,
                 f"`gptforge eval` of the last checkpoint; the loop's last eval {r['final_val']:.4f}")]
    return rows


def worker_recipe(s: Settings, out: Path, data: Path, run: Path) -> None:
    from gptforge.config import build_config, parse_overrides, read_toml
    from gptforge.train.loop import train

    values = {**read_toml(RECIPE), **parse_overrides(list(s.recipe)), "data": str(data), "out": str(run),
              "device": s.device}
    called = time.time()
    result = train(build_config(values))
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e["event"] == "eval"]
    hit = next((e for e in evals if e["val_loss"] <= TARGET_VAL), None)
    found = {"seconds_to_target": called - STARTED + hit["time"] if hit else None,
             "step_to_target": hit["step"] if hit else None, "best_val": result["best_val_loss"],
             "final_val": evals[-1]["val_loss"], "steps": result["step"], "seconds_total": time.time() - STARTED}
    found.update(serve(s, run, data))
    out.write_text(json.dumps(found))


def serve(s: Settings, run: Path, data: Path) -> dict:
    """Greedy decoding with the KV cache against the whole context recomputed (every token the cache chose
    must be the full model's first choice, unless the top two are a near-tie); sampling speed; `eval`."""
    import torch

    from gptforge.analysis.evaluate import evaluate_run
    from gptforge.data.dataset import open_dataset
    from gptforge.train import devices
    from gptforge.train.runs import load_run

    device = devices.resolve_device(s.device)
    torch.set_float32_matmul_precision("highest")  # (training set TF32) the comparison is in true fp32
    model, _, _ = load_run(run, device)
    prompt = torch.from_numpy(open_dataset(data).val.read(0, 8)).to(device)  # the opening of the val text
    n = min(100, model.cfg.block_size - prompt.numel())  # all inside the cache's window
    cached = torch.tensor(list(model.generate(prompt, n, temperature=0)), device=device)
    with torch.no_grad():
        logits, _ = model(torch.cat([prompt, cached])[None, :-1])
    top = logits[0, prompt.numel() - 1:].float().topk(2, dim=-1)
    ties = (top.values[:, 0] - top.values[:, 1]) < 1e-3
    agree = (top.indices[:, 0] == cached) | ties
    dtype = devices.resolve_dtype("auto", device)
    with torch.no_grad(), devices.autocast(device, dtype):
        generator = torch.Generator(device=device).manual_seed(1)
        started = time.perf_counter()
        sampled = list(model.generate(prompt, n, temperature=0.8, top_k=50, generator=generator))
        seconds = time.perf_counter() - started
    return {"greedy_equal": int(agree.sum()), "greedy_n": n, "greedy_ties": int(ties.sum()),
            "sample_tokens_per_s": len(sampled) / seconds, "sample_n": len(sampled),
            "sample_dtype": str(dtype).replace("torch.", ""),
            "eval_val_loss": evaluate_run(run, device=s.device)["val_loss"]}


# ---------------------------------------------------------------------------------------------- the table


def run_check(rows: list[Row], label: str, fn, *args, **kwargs) -> None:
    """Run one check; a check that breaks is a failed row with its reason, and the others still run."""
    started = time.time()
    try:
        found = fn(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 (one broken check must not hide the others' results)
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        found = [Row(label, "total", "ran", "no", FAIL, f"{type(e).__name__}: {reason}")]
    rows += found + [Row(label, "total", "seconds for the check", f"{time.time() - started:.0f}")]
    print(f"  {label}: {'ok' if all(r.status != FAIL for r in found) else 'FAILED'} in "
          f"{time.time() - started:.0f} s", flush=True)


def write_table(rows: list[Row], out: Path) -> str:
    header = ("check", "scope", "metric", "value", "status", "note")
    table = [header] + [(r.check, r.scope, r.metric, r.value, r.status, r.note) for r in rows]
    (out / "gpu_check.tsv").write_text("\n".join("\t".join(c.replace("\t", " ") for c in line) for line in table)
                                       + "\n")
    widths = [max(len(line[i]) for line in table) for i in range(5)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line[:5], widths)) + "  " + line[5] for line in table)


def prepare_text(text: Path, work: Path) -> Path:
    from gptforge.data.prepare import prepare

    if not text.is_file():
        raise SystemExit(f"gpu_check: {text} does not exist; pass --text PATH to tinyshakespeare.txt")
    data = work / "data"
    prepare([str(text)], data, tokenizer="char", val_fraction=0.1, split="tail")
    return data


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (for the test suite)")
    p.add_argument("--out", default=None, help="directory for the TSV, the runs and the logs (default: a temp dir)")
    p.add_argument("--text", default=str(DEFAULT_TEXT), help="tinyshakespeare.txt (char-level data for a-c, e, f)")
    p.add_argument("--checks", default="abcdef", help="which checks to run, e.g. 'de'")
    p.add_argument("--worker", choices=["throughput", "recipe"], help=argparse.SUPPRESS)
    p.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    s = settings(a.smoke)
    if a.worker == "throughput":
        return worker_throughput(s, a.json) or 0
    if a.worker == "recipe":
        return worker_recipe(s, a.json, a.data, a.run) or 0
    if not s.smoke and s.gpus == 0 and not __import__("torch").cuda.is_available():
        print("gpu_check: no CUDA device here; `--smoke` runs the same steps on the CPU", file=sys.stderr)
        return 2
    if s.smoke:  # children and torchrun's workers alike: CPU matmuls on another thread count round otherwise
        os.environ["OMP_NUM_THREADS"] = "1"
    work = Path(a.out or tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"gpu_check{' --smoke' if s.smoke else ''}: runs and logs in {work}", flush=True)
    data = prepare_text(Path(a.text), work)
    rows: list[Row] = []
    bf16 = (f"--dtype={s.dtype}",)
    if "a" in a.checks:
        run_check(rows, "a resume", check_resume, s, work, data, "a resume", *bf16)
    if "b" in a.checks:
        reference = work / "a_resume_all"
        if not reference.is_dir():
            launch(train_args(s, data, reference, 2 * s.half, *bf16), work / "logs" / "a_resume_all.log")
        run_check(rows, "b torchrun x1", check_resume, s, work, data, "b torchrun x1", *bf16, procs=1,
                  reference=reference)
        if s.gpus >= 2:
            run_check(rows, "b torchrun x2", check_resume, s, work, data, "b torchrun x2", *bf16, procs=2)
        else:
            rows.append(Row("b torchrun x2", "total", "ran", "no", SKIP, "needs 2 GPUs"))
    if "c" in a.checks:
        run_check(rows, "c fp16", check_resume, s, work, data, "c fp16", "--dtype=float16")
    if "d" in a.checks:
        run_check(rows, "d throughput", check_throughput, s, work)
        if s.gpus >= 2:
            run_check(rows, f"d throughput x{s.gpus}", check_throughput, s, work, procs=s.gpus)
    if "e" in a.checks or "f" in a.checks:
        run_check(rows, "e+f recipe", check_recipe, s, work, data)
    print(write_table(rows, work))
    failed = [r for r in rows if r.status == FAIL]
    print(f"\n{len(failed)} failed of {len(rows)} rows; table in {work / 'gpu_check.tsv'}")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv[1:]))
