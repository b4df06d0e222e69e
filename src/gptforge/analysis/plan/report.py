"""The text of `gptforge plan`."""

from __future__ import annotations

from gptforge.analysis.plan.sizing import CHINCHILLA_TOKENS_PER_PARAM, FINEWEB_SHARD_CHARS, claimed_sizes, make_plan
from gptforge.config import Config
from gptforge.fmt import count, duration, gib


def _params_block(plan: dict) -> list[str]:
    p = plan["params"]
    total = p.total
    rows = [("token embedding", p.token_embedding, "(also the output head: tied)" if p.tied else ""),
            ("position embedding", p.position_embedding, "" if p.position_embedding else "(rotary: no parameters)"),
            ("attention", p.attention, ""), ("MLP", p.mlp, ""), ("norms", p.norms, "" if p.norms else "(no weights)"),
            ("output head", p.head, "(tied to the token embedding)" if p.tied else "")]
    lines = ["parameters"]
    for name, n, note in rows:
        lines.append(f"  {name:<20}{n:>15,}  {100 * n / total:5.1f}%  {note}".rstrip())
    lines.append(f"  {'total':<20}{total:>15,}  = {count(total)}")
    lines.append(f"  {'non-embedding':<20}{p.non_embedding:>15,}  = {count(p.non_embedding)}")
    return lines


def _compute_block(cfg: Config, plan: dict) -> list[str]:
    tc, m = cfg.train, cfg.model
    per_process = tc.gradient_accumulation_steps // plan["processes"] if plan["processes"] > 1 else None
    split = (f"{tc.batch_size} batch x {tc.gradient_accumulation_steps} accumulation x {m.block_size} block"
             + (f" ({per_process} micro-steps on each of {plan['processes']} processes)" if per_process else ""))
    ratio = plan["chinchilla_ratio"]
    verdict = ("about Chinchilla-optimal" if 0.8 <= ratio <= 1.25 else
               f"{ratio:.2g}x that: under-trained for its size" if ratio < 0.8 else
               f"{ratio:.1f}x that: more tokens than compute-optimal (fine if inference cost matters)")
    return [
        "compute",
        f"  FLOPs per token       {plan['flops_per_token']:,.0f}  (6 x {count(plan['matmul_params'])} matmul weights "
        f"+ 12 x {m.n_layer} layers x {m.n_embd} x {m.block_size} context)",
        f"  tokens per iteration  {plan['tokens_per_iter']:,} = {split}",
        f"  iterations            {plan['max_iters']:,}",
        f"  planned tokens        {plan['planned_tokens']:,} ({count(plan['planned_tokens'])}), "
        f"{plan['tokens_per_param']:.1f} tokens per parameter",
        f"  Chinchilla-optimal    {count(plan['chinchilla_tokens'])} tokens "
        f"({CHINCHILLA_TOKENS_PER_PARAM} x parameters); the plan is {verdict}",
        f"  total compute         {plan['total_flops']:.3g} FLOPs",
    ]


def _data_block(plan: dict) -> list[str]:
    lines = []
    info = plan["data"]
    if info:
        cpt = (
            f"{info.chars_per_token:.2f} characters per token"
            if info.chars_per_token
            else "characters per token unknown"
        )
        epochs = plan["epochs"]
        lines += [
            "data",
            f"  {info.path}: {info.train_tokens:,} train + {info.val_tokens:,} val tokens; {cpt}",
            f"  epochs planned        {epochs:.2f}" + _epoch_warning(epochs),
            "",
        ]
    need = plan["download"]
    src = (
        "measured from the data"
        if need["measured"]
        else ("assumed: the data does not say" if info else "assumed: no data given")
    )
    lines += [
        "download sizing (the planned tokens, each seen once)",
        f"  raw text              {count(need['chars'])} characters at {need['chars_per_token']:.2f} chars/token "
        f"({src})",
        f"  FineWeb-Edu shards    {need['shards']:,} (about {count(FINEWEB_SHARD_CHARS)} characters each)",
        f"  token shards on disk  {gib(need['token_bytes'])} (uint16)",
    ]
    missing = plan.get("download_missing")
    if missing is not None:
        if missing["tokens"] > 0:
            lines.append(f"  beyond {info.path}: {count(missing['tokens'])} more tokens = ~{missing['shards']:,} more "
                         f"FineWeb-Edu shards for a single epoch")
        else:
            lines.append("  the dataset already holds the planned tokens: no download needed")
    return lines


def _epoch_warning(epochs: float) -> str:
    if epochs > 4:
        return "  <- many passes over the same data: expect a plateau or overfitting; get more data"
    if epochs > 1.5:
        return "  (repeating data a few times is mostly fine; beyond ~4 epochs returns fall fast)"
    return ""


def _memory_block(cfg: Config, plan: dict) -> list[str]:
    tc, m = cfg.train, cfg.model
    modes = list(plan["memory"])
    precision = "fp32" if plan["memory_mode"] == "fp32" else "bf16/fp16 autocast"
    head = "  " + " " * 28 + "".join(f"{mode:>14}" for mode in modes)
    lines = [f"memory per GPU (micro-batch {tc.batch_size} x block {m.block_size}, {precision}, "
             f"{cfg.optim.optimizer}{', fsdp' if tc.fsdp and plan['processes'] > 1 else ''})", head]
    for part, label in (
        ("weights", "weights (fp32)"),
        ("gradients", "gradients (fp32)"),
        ("optimizer", "optimizer states (fp32)"),
        ("activations", "activations"),
        ("logits", "logits and loss"),
    ):
        lines.append(f"  {label:<28}" + "".join(f"{gib(getattr(plan['memory'][k], part)):>14}" for k in modes))
    lines.append(f"  {'needed (+5%, +CUDA context)':<28}"
                 + "".join(f"{plan['memory'][k].needed_gib:>10.2f} GiB" for k in modes))
    used = plan["memory_mode"]
    lines.append(f"  (this config runs {'compiled' if used == 'compiled' else used} on a GPU; "
                 "compile=false or dtype=float32 change it)")
    fit = plan.get("fit")
    if fit:
        card = plan["gpu"]
        best = fit["best_split"]
        if fit["fits"]:
            lines.append(f"  fits {card.label}: {fit['needed_gib']:.1f} of {fit['capacity_gib']:.1f} GiB")
            if best and best[0] > tc.batch_size:
                lines.append(
                    f"  a larger micro-batch also fits and is usually faster: --batch_size={best[0]} "
                    f"--gradient_accumulation_steps={best[1]} (same {fit['sequences']} sequences per step)"
                )
        elif best:
            lines.append(
                f"  does NOT fit {card.label}: {fit['needed_gib']:.1f} GiB needed, {fit['capacity_gib']:.1f} available"
            )
            lines.append(f"  use --batch_size={best[0]} --gradient_accumulation_steps={best[1]}: the same "
                         f"{fit['sequences']} sequences per step, {fit['best_needed_gib']:.1f} GiB")
        else:
            lines.append(f"  does NOT fit {card.label} even at micro-batch 1: use a shorter block_size, "
                         "a smaller model, fsdp over several GPUs, or a larger card")
    return lines


def _time_block(plan: dict) -> list[str]:
    procs, conv = plan["processes"], plan["mfu_converted"]
    lines = [f"time at {plan['mfu'] * 100:.0f}% MFU" + (f" on {procs} GPUs" if procs > 1 else "")
             + ("" if "gpu" in plan else " (pass --gpu NAME for your card)")]
    if conv:
        ref, card = conv["reference"], conv["card"]
        lines[0] += (f": {conv['given'] * 100:g}% of the {ref.label}'s {ref.peak_flops / 1e12:g} TFLOPS"
                     + (" (nanoGPT's convention)" if ref.name == "a100" else "")
                     + f" is {plan['mfu'] * 100:.1f}% of the {card.label}'s {card.peak_flops / 1e12:g}")
    for label, seconds in plan["times"].items():
        lines.append(f"  {label:<24}{duration(seconds)}")
    return lines


def render_plan(plan: dict) -> str:
    cfg = plan["config"]  # (batch_size "auto" resolved)
    m = cfg.model
    title = (f"plan: {m.arch} GPT, {m.n_layer} layers x {m.n_embd} wide, {m.n_head} heads, block {m.block_size}, "
             f"vocab {plan['vocab_size']:,} ({plan['vocab_source']}; padded to {plan['padded_vocab']:,})")
    blocks = [[title], _params_block(plan), _compute_block(cfg, plan), _data_block(plan), _memory_block(cfg, plan),
              _time_block(plan)]
    if plan["notes"]:
        blocks.append(["notes"] + [f"  {n}" for n in plan["notes"]])
    return "\n\n".join("\n".join(b) for b in blocks)


def plan_command(cfg: Config, data=None, gpu=None, vocab_size=None, mfu=None, processes=1, config_path=None) -> dict:
    plan = make_plan(cfg, data=data, gpu=gpu, vocab_size=vocab_size, mfu=mfu, processes=processes)
    print(render_plan(plan))
    if config_path:
        total = plan["total_params"]
        for line, claimed in claimed_sizes(config_path):
            if not 0.8 <= total / claimed <= 1.25:  # a comment is allowed rounding, not a 3x error
                print(f"note: line {line} of {config_path} claims {claimed / 1e6:,.0f}M parameters; "
                      f"this config's model has {total / 1e6:,.1f}M")
    return plan
