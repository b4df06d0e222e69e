"""Batches from host memory to the device without stalling it.

On CUDA a copy from ordinary (pageable) memory blocks the host until it is done; a copy from pinned
memory runs asynchronously. Allocating pinned memory per batch (`x.pin_memory()`) costs a host
allocation and a page-locking call each time, so `HostToDevice` pins a few staging buffers once per
batch shape and reuses them in turn. A buffer is refilled only after the copy that last read from it
has finished (a CUDA event), which with two buffers is the copy of two micro-batches ago: long done.
Elsewhere (CPU, MPS) batches are handed over as they are.
"""

from __future__ import annotations

import torch

SLOTS = 2  # the batch being copied and the one the device is using; a third would never be waited for


class _Slot:
    def __init__(self, x: torch.Tensor, y: torch.Tensor, pin: bool):
        self.x = torch.empty(x.shape, dtype=x.dtype, pin_memory=pin)
        self.y = torch.empty(y.shape, dtype=y.dtype, pin_memory=pin)
        self.copied = torch.cuda.Event() if pin else None  # recorded after the copies that read x and y


class HostToDevice:
    """`to_device(x, y)`: the batch on the device. `stage` (default: on CUDA) copies through reused
    staging buffers (pinned on CUDA) with non-blocking copies; tests stage on the CPU to check the reuse."""

    def __init__(self, device: torch.device, stage: bool | None = None):
        self.device = device
        self.pin = device.type == "cuda"
        self.stage = self.pin if stage is None else stage
        self.slots: dict[tuple, list[_Slot]] = {}  # by (x shape, y shape): the staging buffers
        self.turn = 0

    @property
    def buffers_made(self) -> int:
        return SLOTS * len(self.slots)

    def _slot(self, x: torch.Tensor, y: torch.Tensor) -> _Slot:
        key = (tuple(x.shape), tuple(y.shape), x.dtype)
        if key not in self.slots:
            self.slots[key] = [_Slot(x, y, self.pin) for _ in range(SLOTS)]
        self.turn = (self.turn + 1) % SLOTS
        return self.slots[key][self.turn]

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.stage:
            return x.to(self.device), y.to(self.device)
        slot = self._slot(x, y)
        if slot.copied is not None:
            slot.copied.synchronize()  # the copy from this buffer two batches ago (done long since, in practice)
        slot.x.copy_(x)
        slot.y.copy_(y)
        # copy=True: on the CPU the staging buffer itself must not reach the model (it is refilled)
        x_dev = slot.x.to(self.device, non_blocking=True, copy=True)
        y_dev = slot.y.to(self.device, non_blocking=True, copy=True)
        if slot.copied is not None:
            slot.copied.record()
        return x_dev, y_dev
