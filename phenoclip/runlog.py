"""``OUT.log``: what ran, where, when, with which seed, threads and device.

Written beside the output when a step succeeds (plink2's ``PREFIX.log`` habit). A failed step
leaves no log behind, like it leaves no output: the one-line error goes to stderr, which batch
systems capture.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import socket
import sys

from phenoclip import __version__

_SUFFIXES = (".h5", ".hdf5", ".tsv", ".tsv.gz", ".json", ".txt", ".pheno")


def log_path_for(out: str | os.PathLike, command: str) -> str:
    """``gene.h5`` -> ``gene.log``; a folder ``runs/x`` -> ``runs/x/<command>.log``."""
    out = os.fspath(out)
    if os.path.isdir(out) or out.endswith(os.sep):
        return os.path.join(out, f"{command.replace(' ', '-')}.log")
    for suffix in _SUFFIXES:
        if out.endswith(suffix):
            return out[: -len(suffix)] + ".log"
    return out + ".log"


def _now() -> _dt.datetime:
    return _dt.datetime.now().astimezone()


class RunLog:
    """Collects the facts of one run and writes them when :meth:`finish` is called."""

    def __init__(self, command: str, *, seed: int | None = None, threads: int | None = None,
                 device: str = "cpu"):
        self.command = command
        self.seed = seed
        self.threads = threads
        self.device = device
        self.start = _now()
        self.lines: list[str] = []
        self.outputs: list[str] = []

    def note(self, line: str) -> None:
        """Add a line to the log body (a summary figure, a warning)."""
        self.lines.append(line)

    def write(self, path: str) -> None:
        end = _now()
        head = [
            f"phenoclip {__version__}",
            f"command: {' '.join(['phenoclip', *sys.argv[1:]])}",
            f"subcommand: {self.command}",
            f"host: {socket.gethostname()} ({platform.platform()}, Python {platform.python_version()})",
            f"start: {self.start.isoformat(timespec='seconds')}",
            f"end: {end.isoformat(timespec='seconds')}",
            f"elapsed_s: {(end - self.start).total_seconds():.2f}",
            f"seed: {self.seed if self.seed is not None else 'n/a'}",
            f"threads: {self.threads if self.threads else os.cpu_count()}",
            f"device: {self.device}",
            f"working_directory: {os.getcwd()}",
        ]
        if self.outputs:
            head.append("outputs: " + ", ".join(self.outputs))
        # imported here: phenoclip --help imports this module and must not load phenoclip.progress
        from phenoclip.progress import WARNINGS

        body = self.lines + [f"warning: {w}" for w in WARNINGS]
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as fh:
            fh.write("\n".join(head + [""] + body) + "\n")
        os.replace(tmp, path)
