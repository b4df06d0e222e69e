"""GPUs a user can name to `gptforge plan --gpu`: memory size here, dense bf16 peak from train/devices.py.

The peak-FLOPs table lives in train/devices.py (MFU is measured against it during training); this module only
adds what sizing also needs, the card's memory, and turns what a user types ("4070", "RTX 4070",
"NVIDIA H100 80GB HBM3", "A100 40GB") into one known card.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gptforge.errors import UserError
from gptforge.train.devices import peak_flops

# Memory in GB as the vendor sells it (GeForce "12 GB" cards report ~11.99 GiB, an H100 80GB ~79.6 GiB).
# Matched like metrics.PEAK_BF16_FLOPS: the first pattern contained in the normalised name wins, so the
# longer names come first. Cards sold with two sizes take the size written in the name, else the default.
GPU_MEMORY_GB: list[tuple[str, float]] = [
    ("gh200", 96), ("h200 nvl", 141), ("h200", 141), ("h100 nvl", 94), ("h100 pcie", 80), ("h100", 80),
    ("a100", 80), ("a10g", 24), ("a10", 24), ("l40s", 48), ("l40", 48), ("l4", 24), ("t4", 16), ("v100", 32),
    ("rtx 6000 ada", 48), ("rtx a6000", 48), ("rtx 5090", 32), ("rtx 5080", 16),
    ("rtx 4090", 24), ("rtx 4080 super", 16), ("rtx 4080", 16), ("rtx 4070 ti super", 16), ("rtx 4070 ti", 12),
    ("rtx 4070 super", 12), ("rtx 4070", 12), ("rtx 4060 ti", 8), ("rtx 4060", 8),
    ("rtx 3090", 24), ("rtx 3080 ti", 12), ("rtx 3080", 10), ("rtx 3070", 8), ("rtx 3060", 12),
]
CUDA_CONTEXT_GIB = 0.6  # CUDA context, cuBLAS/cuDNN workspaces: taken before the first tensor
ALLOCATOR_SLACK = 1.05  # the caching allocator's fragmentation on top of the live tensors


@dataclass(frozen=True)
class Gpu:
    name: str  # the pattern that matched, e.g. "rtx 4070"
    memory_gb: float  # as sold
    peak_flops: float | None  # dense bf16 FLOP/s from train/devices.py; None when that table lacks the card

    @property
    def capacity_gib(self) -> float:
        """The memory the driver reports: a "12 GB" card has 11.99 GiB, an "80GB" H100 79.6 GiB."""
        return self.memory_gb * 0.995

    @property
    def label(self) -> str:
        name = self.name.upper() if len(self.name) <= 5 else self.name.replace("rtx", "RTX")
        return f"{name} ({self.memory_gb:g} GB)"


def normalise(name: str) -> str:
    text = name.lower().replace("nvidia", "").replace("geforce", "").replace("-", " ").replace("_", " ")
    text = re.sub(r"\s+", " ", text).strip()
    if re.fullmatch(r"[2345]0[5-9]0( ti)?( super)?( \d+ ?gb)?", text):  # "4070" -> "rtx 4070"
        text = "rtx " + text
    return text


def find_gpu(name: str) -> Gpu:
    """The card a user named, or a UserError listing the names we know."""
    text = normalise(name)
    for pattern, memory in GPU_MEMORY_GB:
        if pattern in text:
            stated = re.search(r"(\d+)\s*gb", text)
            if stated:
                memory = float(stated.group(1))
            return Gpu(pattern, float(memory), peak_flops(text))
    known = ", ".join(p for p, _ in GPU_MEMORY_GB)
    raise UserError(f"--gpu {name!r}: unknown GPU; known names: {known} (add the memory, e.g. 'RTX 4060 Ti 16GB')")


REFERENCE_GPUS = ("rtx 4070", "rtx 4090", "a100", "h100")  # the time table shown when no --gpu is given
