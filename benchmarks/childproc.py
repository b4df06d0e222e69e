"""Running a benchmarked command as a child process: wall time, CPU seconds and the child's own peak memory.

The peak is the child's VmHWM, read from /proc while it runs: ru_maxrss would not do, because Linux keeps
the high-water mark of the process before exec (a benchmark parent that holds gigabytes of text when it
starts the child would be counted as the child's peak).
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class Child:
    seconds: float
    cpu_seconds: float  # user + system
    peak_mb: float  # VmHWM of the child's own program; 0 where /proc is not available
    exit_code: int
    output: str


def _hwm_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM")), 0.0)
    except OSError:
        return 0.0


def run_child(cmd: list[str], kill_when: Callable[[], bool] | None = None) -> Child:
    """Run `cmd` (stdout and stderr collected), killing it with SIGKILL as soon as kill_when() is true."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.append(proc.stdout.read()), daemon=True)
    reader.start()  # keeps the pipe from filling while we poll
    peak, killed = 0.0, False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, _hwm_mb(proc.pid))
        if not killed and kill_when is not None and kill_when():
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    reader.join(timeout=10)
    return Child(seconds, usage.ru_utime + usage.ru_stime, peak, proc.returncode, "".join(output))
