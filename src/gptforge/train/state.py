"""The training state: where a run is (step, tokens, data position, loss guard), what it has measured (best
and last val loss) and what it was trained with (config, tokenizer, dataset). One record, kept by the loop
and saved as each checkpoint's state.json; the nanoGPT import writes one too. `state_dict()` and
`load_state_dict()` as torchtitan's TrainState.

state.json keeps the keys it has always had, so checkpoints written by earlier versions load as they are;
a key this version does not know (a later version's) is kept and written back, never refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

REQUIRED = ("step", "tokens_seen", "config")  # without these a checkpoint cannot say where its run stands
# The JSON types of each value (None: may be null); a state.json that fits its checksum but not these (edited by
# hand, or by a buggy tool) is refused by name, never a TypeError deep inside the loop.
NUMBER, COUNT = (int, float), int
TYPES = {"step": COUNT, "tokens_seen": COUNT, "epoch": NUMBER, "config": dict, "tokenizer": (dict, None),
         "loader": (dict, None), "guard": (dict, None), "best_val_loss": NUMBER, "val_loss": (*NUMBER, None),
         "world_size": COUNT, "dataset": (dict, None), "imported_from": (dict, None)}
LOADER_TYPES = {"epoch": COUNT, "pos": COUNT, "micro_batches": COUNT, "seed": COUNT, "batch_size": COUNT,
                "block_size": COUNT, "growth": list, "epoch_start_blocks": COUNT, "n_blocks": COUNT,
                "train_tokens": COUNT, "train_shards": list}
GUARD_TYPES = {"window": list, "nan_skips": COUNT, "consecutive": COUNT, "spikes": COUNT}
ITEMS = {("loader", "growth"): ("pairs of counts", lambda v: isinstance(v, list) and len(v) == 2 and all(
             type(x) is int and x >= 0 for x in v)),
         ("loader", "train_shards"): ("file names", lambda v: isinstance(v, str)),
         ("guard", "window"): ("numbers", lambda v: type(v) in (int, float))}


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    tokens_seen: int = 0
    epoch: float = 0.0  # epochs over the train split, as the loader counts them
    config: dict = field(default_factory=dict)  # the resolved config, flat
    tokenizer: dict | None = None  # the tokenizer's identity (name, hash): a resume refuses another
    loader: dict | None = None  # the data position; None where it cannot be replayed (a nanoGPT import)
    guard: dict | None = None  # the loss guard's window and counts
    best_val_loss: float = math.inf
    val_loss: float | None = None  # at the last eval
    world_size: int = 1  # processes that wrote it (their dropout streams resume exactly at the same count)
    dataset: dict | None = None  # path, version, train tokens and content identity at the save
    lr_segments: list | None = None  # schedule segments begun by resumes with another learning rate (optim.Segment)
    imported_from: dict | None = None  # set by the nanoGPT import
    extra: dict = field(default_factory=dict)  # keys of a later version, kept as read

    def state_dict(self) -> dict:
        """The JSON object of state.json."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        for optional in ("imported_from", "lr_segments"):  # only imported runs, runs resumed with a new LR
            if own[optional] is None:
                del own[optional]
        return {**own, **self.extra}

    def load_state_dict(self, state: dict) -> None:
        """Take the values of a state.json object; ValueError names what is missing or malformed."""
        if not isinstance(state, dict):
            raise ValueError(f"is a {type(state).__name__}, not a JSON object")
        missing = [k for k in REQUIRED if k not in state]
        if missing:
            raise ValueError(f"lacks {', '.join(missing)}")
        _check_types(state, TYPES, "")
        for name, types in (("loader", LOADER_TYPES), ("guard", GUARD_TYPES)):
            if state.get(name) is not None:
                _check_types(state[name], types, f"{name}.")
        for (name, key), (what, fits) in ITEMS.items():
            if not all(fits(v) for v in (state.get(name) or {}).get(key, [])):
                raise ValueError(f"has {name}.{key} holding other things than {what}")
        if state.get("world_size", 1) < 1:
            raise ValueError(f"has world_size {state['world_size']}, not a number of processes")
        names = [f.name for f in dataclasses.fields(self) if f.name != "extra"]
        for name in names:
            if name in state:
                setattr(self, name, state[name])
        self.extra = {k: v for k, v in state.items() if k not in names}

    @classmethod
    def from_state_dict(cls, state: dict) -> TrainState:
        out = cls()
        out.load_state_dict(state)
        return out


def _check_types(values: dict, types: dict, prefix: str) -> None:
    """ValueError naming the first value of `values` whose type is not the one `types` gives its key."""
    for key, allowed in types.items():
        if key not in values:
            continue
        value, allowed = values[key], allowed if isinstance(allowed, tuple) else (allowed,)
        ok = (value is None and None in allowed) or (isinstance(value, tuple(t for t in allowed if t is not None))
                                                      and not isinstance(value, bool))
        if ok and allowed == (int,) and value < 0:
            ok = False  # every count here is >= 0
        if not ok:
            names = {int: "a count" if float not in allowed else "", float: "a number", dict: "an object",
                     list: "a list", None: "null"}
            want = " or ".join(names[t] for t in allowed if names[t])
            raise ValueError(f"has {prefix}{key} = {json.dumps(value)[:40]}, not {want}")


def dataset_entry(dataset) -> dict:
    """The TrainState's record of the dataset a checkpoint was trained on (a data.dataset.Dataset)."""
    return {"path": str(dataset.path), "version": dataset.version, "train_tokens": dataset.train_tokens,
            "identity": dataset.identity}
