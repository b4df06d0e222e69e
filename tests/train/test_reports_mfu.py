"""The start report says which peak the log line's mfu is against, and how to compare it with nanoGPT's."""

import dataclasses

from gptforge.train.events import from_dict
from gptforge.train.reports import mfu_basis


def test_mfu_basis_names_the_peak_and_nanogpts_convention():
    start = from_dict({"event": "start", "step": 0, "device_name": "NVIDIA H100 80GB HBM3", "peak_flops": 989e12})
    assert mfu_basis(start) == ("mfu: against 989 TFLOPS per GPU, its dense bf16 peak (train/devices.py); nanoGPT's "
                                "mfu is against an A100's 312 whatever the GPU: x 3.17 gives that figure")
    assert "the peak_flops setting" in mfu_basis(dataclasses.replace(start, peak_flops=58.3e12), 58.3e12)
    cpu = dataclasses.replace(start, device_name="CPU (x86_64, 2 threads)", peak_flops=None)
    assert mfu_basis(cpu) == "mfu: n/a, no peak FLOP/s known for CPU (x86_64, 2 threads) (set peak_flops to measure " \
                             "against one)"
