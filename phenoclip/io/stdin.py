"""``-`` as an input path: standard input, as bcftools and plink2 read it.

Readers of stream-shaped inputs (VCF/BCF, text tables) open their file more than once (the VCF
header is checked before cyvcf2 opens it; the expression table is sniffed for its orientation),
so standard input is first copied to a hidden file beside the output, read from there like any
file, and removed when the step ends, whether it succeeds or fails. The copy is named like the
output's other temporary files (``.NAME.tmp-PID.stdin``), so a run that is killed leaves nothing
that the next run of the same output does not clean up. Errors and the store's ``source``
attribute name ``-`` (standard input), never the hidden copy.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from typing import Iterator

from phenoclip.errors import MalformedInputError, PhenoclipError, UsageError

#: the path that means standard input
STDIN = "-"
#: what messages and store attributes call it
STDIN_NAME = "-"
#: hidden copies of standard input that are live now -> the name to show for them
_SPOOLED: dict[str, str] = {}


def display_name(path: str | os.PathLike) -> str:
    """The name to show for an input: ``-`` for a copy of standard input, else the path."""
    p = os.fspath(path)
    return _SPOOLED.get(p, p)


def source_attr(path: str | os.PathLike) -> str:
    """The ``source`` attribute a store records: the absolute path, or ``-`` for standard input."""
    p = os.fspath(path)
    return _SPOOLED[p] if p in _SPOOLED else os.path.abspath(p)


@contextlib.contextmanager
def readable_input(path: str | os.PathLike, out: str | os.PathLike, option: str) -> Iterator[str]:
    """Yield a path to read ``path`` from: ``path`` itself, or for ``-`` a copy of standard input.

    ``out`` is the step's output (the copy goes beside it, where the free space was already
    checked); ``option`` (e.g. ``--vcf``) names the option in the error for a terminal on stdin.
    """
    p = os.fspath(path)
    if p != STDIN:
        yield p
        return
    stdin = sys.stdin.buffer
    if stdin.isatty():
        raise UsageError(f"{option} - reads standard input, but nothing is piped in "
                         f"(e.g. bcftools view in.vcf.gz | phenoclip ... {option} -)")
    final = os.path.abspath(os.fspath(out).rstrip("/"))
    spool = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.tmp-{os.getpid()}.stdin")
    _SPOOLED[spool] = STDIN_NAME
    try:
        with open(spool, "wb") as fh:
            shutil.copyfileobj(stdin, fh, 1 << 20)
            size = fh.tell()
        if size == 0:
            raise MalformedInputError("standard input is empty", STDIN_NAME,
                                      "check the command that pipes into phenoclip")
        try:
            yield spool
        except PhenoclipError as e:  # name stdin, not the hidden copy
            if e.path == spool:
                e.path = STDIN_NAME
                e.args = (e.line(),)
            raise
    finally:
        _SPOOLED.pop(spool, None)
        with contextlib.suppress(OSError):
            os.remove(spool)
