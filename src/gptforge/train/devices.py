"""Devices: which device and dtype a run uses, its autocast, its name, and its peak FLOP/s for MFU."""

from __future__ import annotations

import contextlib
import os
import platform

import torch

from gptforge.errors import UserError


def resolve_device(name: str = "auto") -> torch.device:
    """`auto`: cuda (this process's local rank), then mps, then cpu; an unavailable choice is a UserError."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    kind = name.split(":")[0]
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r}: CUDA is not available on this machine (use --device=cpu or auto)")
        if name == "cuda":
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    elif kind == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise UserError(f"device {name!r}: MPS is not available on this machine (use --device=cpu or auto)")
    elif kind != "cpu":
        raise UserError(f"device {name!r} is not one of auto, cuda, cuda:N, mps, cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on GPUs that have it, fp16 (with a GradScaler) on older ones, fp32 on CPU and MPS."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # CPU autocast is slower than fp32 for small models; MPS autocast is incomplete
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def use_deterministic_kernels() -> None:
    """Kernels that give the same bits every time: on a GPU, atomic adds (in attention's and the embedding's
    backward, split-K matmuls) otherwise sum in a varying order, so two identical runs, or a run and its
    resume, differ in the last bits. torch raises for an op that has no deterministic version. cuBLAS reads
    its setting when first used, so this must come before the first matmul."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)


def set_up_precision(dtype_name: str, device: torch.device, seed: int, deterministic: bool):
    """(dtype, autocast, scaler) for a training step, with the seed and the matmul and determinism settings in
    place: what `train` and `bench` both run with."""
    dtype = resolve_dtype(dtype_name, device)
    torch.manual_seed(seed)  # the same on every rank: FSDP shards one identical initial model
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere and newer
    if deterministic:
        use_deterministic_kernels()
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = True
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    return dtype, autocast(device, dtype), scaler


def use_compile(setting: str, device: torch.device) -> bool:
    """compile "auto": on CUDA only (on the CPU and MPS, compiling costs small models more than it gives)."""
    return setting == "true" or (setting == "auto" and device.type == "cuda")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def autocast(device: torch.device, dtype: torch.dtype):
    """The forward's autocast context for this dtype (none for fp32)."""
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()


# Dense (no sparsity) bf16 tensor-core peak FLOP/s. Consumer GeForce datasheets headline the rate with
# FP16 accumulation or with sparsity; training accumulates in FP32, which runs at half that rate on
# GeForce cards, so those entries use the "BF16 Tensor TFLOPS with FP32 Accumulate", dense.
# Matched against torch.cuda.get_device_name() lower-cased; the first pattern contained in the name wins.
NANOGPT_MFU_PEAK = 312e12  # nanoGPT's estimate_mfu divides by an A100's dense bf16 peak, whatever the GPU
PEAK_BF16_FLOPS: list[tuple[str, float]] = [
    ("gh200", 989e12),  # GH200 datasheet: the H100/H200 SXM tensor core, 989 TFLOPS dense bf16
    ("h200 nvl", 835e12),  # H200 NVL datasheet: 1,671 TFLOPS bf16 with sparsity -> 835 dense
    ("h200", 989e12),  # H200 SXM datasheet: 1,979 TFLOPS bf16 with sparsity -> 989 dense
    ("h100 nvl", 835e12),  # H100 NVL datasheet: 1,671 with sparsity -> 835 dense
    ("h100 pcie", 756e12),  # H100 PCIe datasheet: 1,513 TFLOPS bf16 with sparsity -> 756 dense
    ("h100", 989e12),  # H100 SXM datasheet ("H100 80GB HBM3"): 1,979 with sparsity -> 989 dense
    ("a100", NANOGPT_MFU_PEAK),  # A100 datasheet (SXM and PCIe, 40/80 GB): 312 TFLOPS bf16 dense
    ("l40s", 362e12),  # L40S datasheet: 733 TFLOPS bf16 with sparsity -> 362 dense
    ("l40", 181e12),  # L40 datasheet: 362 TFLOPS bf16 with sparsity -> 181 dense
    ("l4", 121e12),  # L4 datasheet: 242 TFLOPS bf16 with sparsity -> 121 dense
    (
        "rtx 5090",
        209.5e12,
    ),  # RTX Blackwell whitepaper: BF16 with FP32 accumulate 209.5 dense (838 sparse FP16-acc headline)
    ("rtx 4090", 165.2e12),  # Ada whitepaper, RTX 4090: BF16 with FP32 accumulate 165.2 dense
    ("rtx 4080 super", 104.4e12),  # Ada whitepaper per-tensor-core rate: 320 TCs x 2.55 GHz, FP32 accumulate
    ("rtx 4080", 97.5e12),  # Ada whitepaper, RTX 4080: BF16 with FP32 accumulate 97.5 dense
    ("rtx 4070 ti super", 88.2e12),  # Ada per-tensor-core rate: 264 TCs x 2.61 GHz, FP32 accumulate
    ("rtx 4070 ti", 80.2e12),  # Ada per-tensor-core rate: 240 TCs x 2.61 GHz, FP32 accumulate
    ("rtx 4070 super", 71.0e12),  # Ada per-tensor-core rate: 224 TCs x 2.475 GHz, FP32 accumulate
    ("rtx 4070", 58.3e12),  # Ada per-tensor-core rate: 184 TCs x 2.475 GHz (116.6 FP16-acc / 2), FP32 accumulate
    ("rtx 3090", 71e12),  # Ampere GA102 whitepaper, RTX 3090: BF16 with FP32 accumulate 71 dense (142 sparse)
]


def peak_flops(device_name: str | None, override: float = 0.0) -> float | None:
    """The device's dense bf16 peak FLOP/s: the `peak_flops` config value, else the table, else None."""
    if override and override > 0:
        return float(override)
    name = (device_name or "").lower()
    for pattern, flops in PEAK_BF16_FLOPS:
        if pattern in name:
            return flops
    return None


def mfu(flops_per_token: float, tokens_per_s: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation as a fraction (None when the peak is unknown, e.g. on CPU)."""
    if not peak or tokens_per_s <= 0:
        return None
    return flops_per_token * tokens_per_s / peak
