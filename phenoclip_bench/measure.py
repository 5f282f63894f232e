"""Wall time and peak memory of a child process, measured with ``os.wait4`` (per child, exact)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass
class Measurement:
    seconds: float
    peak_rss_mb: float
    returncode: int
    stderr: str


def _vm_hwm_mb(pid: int) -> float | None:
    """The process' own peak resident set (VmHWM) from /proc, in MiB; None once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def measure(cmd: list[str], *, env: dict | None = None, stdout=subprocess.DEVNULL, poll_s: float = 0.01
            ) -> Measurement:
    """Run ``cmd``; return its wall time and peak resident memory.

    Memory is the child's VmHWM polled from /proc while it runs. ``ru_maxrss`` from ``wait4`` is
    not used: Linux carries the high-water mark of the forked (pre-exec) copy of this Python
    process into it, which would charge our own memory to every tool measured.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
    peak = 0.0
    err_chunks = []
    os.set_blocking(proc.stderr.fileno(), False)
    while proc.poll() is None:
        hwm = _vm_hwm_mb(proc.pid)
        if hwm is not None:
            peak = max(peak, hwm)
        chunk = proc.stderr.read()
        if chunk:
            err_chunks.append(chunk)
        time.sleep(poll_s)
    seconds = time.perf_counter() - t0
    rest = proc.stderr.read()
    if rest:
        err_chunks.append(rest)
    return Measurement(seconds, peak, proc.returncode, b"".join(err_chunks).decode(errors="replace"))


def python_cmd(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def best_of(n: int, cmd: list[str], **kw) -> Measurement:
    """The fastest of ``n`` runs (start-up timings are noisy; the minimum is the repeatable figure)."""
    runs = [measure(cmd, **kw) for _ in range(n)]
    return min(runs, key=lambda m: m.seconds)
