"""Published reference points: where comparable runs stood, each with the file or log it comes from.

Val loss against tokens seen for GPT-2 124M and 350M trained with GPT-2's tokenizer on FineWeb (llm.c's
runs, the modded-nanogpt speedrun's baseline and record), the OpenAI GPT-2 checkpoints' val loss on the
same val sets, and the checkpoints' HellaSwag scores. Only numbers found in a source are here.

Not here, because no primary source for them was found: nanochat's d12/d20 bits per byte (its
dev/LEADERBOARD.md gives d24/d26 only, with its own tokenizer and data version), and a GPT-2-tokenizer
val-loss curve on FineWeb-Edu (there is only the GPT-2 124M checkpoint's score on build-nanogpt's val shard).

A run compares with a reference only when its size (within SIZE_FACTOR), tokenizer and data family match;
the val documents differ (each project holds out its own), so read a comparison as "about the same" or not.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass

from gptforge.errors import UserError
from gptforge.fmt import count

SIZE_FACTOR = 1.5  # a 124M reference speaks for runs of 83M..186M parameters
TOKENS_PER_STEP = 524_288  # llm.c's GPT-2 runs: -d 524288 (scripts/run_gpt2_124M.sh, run_gpt2_350M.sh)

# the sources: repository and file (the logs' "tel" lines are llm.c's val loss, one every 250 steps)
LLMC_124M_LOG = "KellerJordan/modded-nanogpt records/2024-10-13_llmc/main.log"
LLMC_350M_LOG = "KellerJordan/modded-nanogpt records/011825_GPT2Medium/main.log"
VISLOG = "karpathy/llm.c dev/vislog.ipynb"
LLMC_HELLASWAG = "karpathy/llm.c dev/data/hellaswag.py"


@dataclass(frozen=True)
class Reference:
    name: str
    label: str  # how a sentence names it
    params: float  # the parameter count the source names the model by
    tokenizer: str  # as gptforge names tokenizers
    data_family: str  # "fineweb", "fineweb-edu", "webtext" (GPT-2's own training data)
    metric: str  # "val_loss" (nats per token) or "hellaswag_acc_norm" (completion style)
    points: tuple[tuple[float | None, float], ...]  # (tokens seen, value); tokens None: a finished model
    source: str
    note: str = ""

    @property
    def is_curve(self) -> bool:
        return all(tokens is not None for tokens, _ in self.points)


def _steps(*pairs: tuple[int, float]) -> tuple[tuple[float, float], ...]:
    return tuple((step * TOKENS_PER_STEP, loss) for step, loss in pairs)


def _ref(name, label, params, tokenizer, family, metric, points, source, note="") -> Reference:
    return Reference(name, label, params, tokenizer, family, metric, tuple(points), source, note)


_TABLE = [
    _ref("llmc-gpt2-124m-fineweb", "llm.c's GPT-2 124M on FineWeb", 124e6, "gpt2", "fineweb", "val_loss",
         _steps((0, 11.0092), (250, 6.1710), (500, 5.3743), (1000, 4.3170), (2000, 3.8585), (5000, 3.5535),
                (10000, 3.3924), (15000, 3.3003), (19560, 3.2722)),
         LLMC_124M_LOG, "llm.c's scripts/run_gpt2_124M.sh on 8xH100 (Oct 2024), FineWeb 10B sample; val = the "
         "first 10M tokens of its FineWeb val shard"),
    _ref("llmc-gpt2-350m-fineweb", "llm.c's GPT-2 350M on FineWeb", 350e6, "gpt2", "fineweb", "val_loss",
         _steps((0, 10.9830), (250, 6.3097), (500, 5.5887), (1000, 4.3734), (2000, 3.7884), (5000, 3.4190),
                (10000, 3.2461), (15000, 3.1648), (20000, 3.1129), (30000, 3.0387), (40000, 2.9812),
                (50000, 2.9405), (60000, 2.9282)),
         LLMC_350M_LOG, "llm.c's scripts/run_gpt2_350M.sh, FineWeb 100B sample: the baseline of the speedrun's "
         "GPT-2 Medium track, whose target 2.92 comes from it"),
    _ref("modded-nanogpt-record-124m-fineweb", "the modded-nanogpt speedrun record (124M, 2025-01-04)", 124e6,
         "gpt2", "fineweb", "val_loss", [(0.73e9, 3.279)],
         "KellerJordan/modded-nanogpt README.md", "'1390 steps on 0.73B tokens ... ~3.279 mean validation loss': "
         "modern architecture and the Muon optimizer"),
    _ref("openai-gpt2-124m-fineweb", "OpenAI's GPT-2 124M checkpoint", 124e6, "gpt2", "fineweb", "val_loss",
         [(None, 3.424958)], VISLOG, "trained on WebText; scored on llm.c's FineWeb val"),
    _ref("openai-gpt2-350m-fineweb", "OpenAI's GPT-2 350M checkpoint", 350e6, "gpt2", "fineweb", "val_loss",
         [(None, 3.083089)], VISLOG, "trained on WebText; scored on llm.c's FineWeb val"),
    _ref("openai-gpt2-774m-fineweb", "OpenAI's GPT-2 774M checkpoint", 774e6, "gpt2", "fineweb", "val_loss",
         [(None, 3.000580)], VISLOG, "trained on WebText; scored on llm.c's FineWeb val"),
    _ref("openai-gpt2-1558m-fineweb", "OpenAI's GPT-2 1.5B checkpoint", 1558e6, "gpt2", "fineweb", "val_loss",
         [(None, 2.831273)], VISLOG, "trained on WebText; scored on llm.c's FineWeb val"),
    _ref("openai-gpt2-124m-fineweb-edu", "OpenAI's GPT-2 124M checkpoint", 124e6, "gpt2", "fineweb-edu",
         "val_loss", [(None, 3.2924)], "karpathy/build-nanogpt play.ipynb",
         "trained on WebText; scored on build-nanogpt's FineWeb-Edu val shard"),
    _ref("openai-gpt2-124m-hellaswag", "OpenAI's GPT-2 124M", 124e6, "gpt2", "webtext", "hellaswag_acc_norm",
         [(None, 0.2955)], LLMC_HELLASWAG,
         "completion style as gptforge scores it (acc 0.2859); llm.c's CUDA eval: 0.294463 (dev/vislog.ipynb); "
         "the Eleuther harness (multiple choice): acc_norm 0.3114"),
    _ref("openai-gpt2-350m-hellaswag", "OpenAI's GPT-2 350M", 350e6, "gpt2", "webtext", "hellaswag_acc_norm",
         [(None, 0.375224)], VISLOG, "llm.c's CUDA eval: lowest mean loss per ending token, as acc_norm here"),
    _ref("openai-gpt2-774m-hellaswag", "OpenAI's GPT-2 774M", 774e6, "gpt2", "webtext", "hellaswag_acc_norm",
         [(None, 0.431986)], VISLOG, "llm.c's CUDA eval: lowest mean loss per ending token, as acc_norm here"),
    _ref("openai-gpt2-1558m-hellaswag", "OpenAI's GPT-2 1.5B", 1558e6, "gpt2", "webtext", "hellaswag_acc_norm",
         [(None, 0.4893)], LLMC_HELLASWAG,
         "completion style as gptforge scores it (acc 0.3842); llm.c's CUDA eval: 0.488946 (dev/vislog.ipynb); "
         "the Eleuther harness (multiple choice): acc_norm 0.5089"),
]
REFERENCES: dict[str, Reference] = {r.name: r for r in _TABLE}


def find(name: str) -> Reference:
    if name in REFERENCES:
        return REFERENCES[name]
    close = difflib.get_close_matches(name, REFERENCES, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise UserError(f"unknown reference {name!r}{hint} (known: {', '.join(REFERENCES)})")


def same_size(params: float, reference_params: float) -> bool:
    return params > 0 and abs(math.log(params / reference_params)) <= math.log(SIZE_FACTOR)


def matching(params: float, tokenizer: str | None, data_family: str | None,
             metric: str | None = "val_loss") -> list[Reference]:
    """The references for a model of this size, tokenizer and data family (nearest size first)."""
    found = [r for r in _TABLE if (metric is None or r.metric == metric) and r.tokenizer == tokenizer
             and r.data_family == data_family and same_size(params, r.params)]
    return sorted(found, key=lambda r: abs(math.log(params / r.params)))


def reference_curve(name: str) -> list[tuple[float, float]]:
    """(tokens seen, value) points of a reference, for a plot overlay."""
    ref = find(name)
    if not ref.is_curve:
        raise UserError(f"reference {name!r} is the score of a finished model, not a curve against tokens")
    return [(float(tokens), value) for tokens, value in ref.points]


def value_at(ref: Reference, tokens: float) -> float | None:
    """The reference's value after `tokens`, interpolated in log(tokens) between its points (linearly from
    0 tokens); None outside the points."""
    points = sorted(ref.points)
    if not ref.is_curve or not points[0][0] <= tokens <= points[-1][0]:
        return None
    for (t0, v0), (t1, v1) in zip(points, points[1:]):
        if t0 <= tokens <= t1:
            if t1 == t0:
                return v1
            share = (tokens - t0) / (t1 - t0) if t0 == 0 else math.log(tokens / t0) / math.log(t1 / t0)
            return v0 + share * (v1 - v0)
    return points[-1][1]


def _compare(ref: Reference, tokens: float) -> str:
    last = max(ref.points)
    at = value_at(ref, tokens)
    if len(ref.points) == 1:
        text = f"{ref.label} reached {last[1]:.2f} after {count(last[0])} tokens"
    elif at is not None:
        text = f"{ref.label} was at {at:.2f} after as many tokens (it ended at {last[1]:.2f} after {count(last[0])})"
    else:
        text = f"{ref.label} ended at {last[1]:.2f} after {count(last[0])} tokens"
    return f"{text} ({ref.source})"


def where_run_stands(params: float, tokenizer: str | None, data_family: str | None, tokens: float | None,
                     val_loss: float | None) -> str | None:
    """One line: the run's val loss beside the matching references, or why none matches; None without a
    val loss or tokens to compare."""
    if val_loss is None or tokens is None or not math.isfinite(val_loss) or tokens <= 0:
        return None
    refs = matching(params, tokenizer, data_family)
    if not refs:
        kinds = sorted({(r.params, r.tokenizer, r.data_family) for r in _TABLE if r.metric == "val_loss"})
        have = [f"{count(params)} ({tok}, {family})" for params, tok, family in kinds]
        return (f"no reference matches a {count(params)}-parameter model with the {tokenizer or 'unknown'} tokenizer "
                f"on {data_family or 'unknown'} data; the references are {', '.join(have)}")
    curves = [r for r in refs if r.is_curve]
    finished = [r for r in refs if not r.is_curve]
    parts = [_compare(r, tokens) for r in curves]
    parts += [f"{r.label} scores {r.points[0][1]:.2f} ({r.note}; {r.source})" for r in finished]
    return f"val {val_loss:.2f} after {count(tokens)} tokens; " + "; ".join(parts)


# data families besides the references' own, so that "no reference matches" can name what the run trained on
FAMILY_WORDS = (("climbmix", ("climbmix",)), ("wikipedia", ("wikipedia", "enwiki", "wikitext", "wikiextractor",
                                                           "pages-articles")),
                ("openwebtext", ("openwebtext",)), ("tinystories", ("tinystories",)), ("shakespeare", ("shakespeare",)))


def data_family(*names: str) -> str | None:
    """The data family a source's names point to (its path, kind, download URL), or None."""
    text = " ".join(names).lower().replace("_", "-")
    if "fineweb" in text:
        return "fineweb-edu" if "edu" in text else "fineweb"
    return next((family for family, words in FAMILY_WORDS if any(w in text for w in words)), None)
