"""Output folders that appear whole or not at all.

A step writes into a hidden temporary folder beside ``--out`` and renames it onto ``--out`` only
when everything succeeded, so a failed or interrupted run never leaves a half-written folder that
a batch script could mistake for a result.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from phenoclip.errors import OutputError, UsageError


@contextmanager
def staged_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes ``out``, on any exception it is removed.

    ``out`` must not exist yet (an empty folder is accepted) and its parent must exist.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} already exists", hint="choose a new --out or remove it")
    if not out.parent.exists():
        raise OutputError("output folder's parent does not exist", out.parent)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
