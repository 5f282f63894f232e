"""Sizes taken from files or options checked against this machine's memory before allocating.

A 1 KB ``.nii.gz`` whose header claims 2000^3 voxels, a checkpoint whose ``config.json`` says
``embed_dim`` 1e9, or ``--window 1e8`` at ``--rate 1e9`` would each ask for tens of gigabytes
and die in the allocator (or the kernel's OOM killer) long after the cause is gone from view.
Every such size is checked here first and refused in one line that names the source.
"""

from __future__ import annotations

import os

from phenoclip.errors import MalformedInputError, UsageError


def available_bytes() -> int:
    """Memory the kernel says can be allocated now (``MemAvailable``), else total physical memory."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 1 << 40


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} PiB"


def require_memory(nbytes: float, what: str, source: str | os.PathLike | None = None, *,
                   from_option: bool = False, hint: str | None = None) -> None:
    """Refuse ``what`` (one line, exit 4 for a size a file states, 2 for options) when it needs
    more than the memory available now."""
    have = available_bytes()
    if nbytes <= have:
        return
    text = f"{what} needs {_human(nbytes)} of memory, more than the {_human(have)} available"
    if from_option:
        raise UsageError(text, source, hint)
    raise MalformedInputError(text, source, hint or "check the file; a damaged or hostile header can claim any size")
