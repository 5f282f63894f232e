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


class StagedFiles:
    """Several output files written under temporary names beside their targets, renamed together at
    the end (:meth:`commit`) or all removed (:meth:`abort`): a failure leaves none of them behind."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def tmp(self, final: str | os.PathLike, suffix: str = "") -> str:
        """The temporary path to write ``final`` to (``suffix`` keeps an extension some writers need)."""
        final = os.path.abspath(final)
        tmp = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.tmp-{os.getpid()}{suffix}")
        self.items.append((tmp, final))
        return tmp

    def commit(self) -> None:
        for tmp, final in self.items:
            os.replace(tmp, final)
        self.items = []

    def abort(self) -> None:
        for tmp, _ in self.items:
            if os.path.exists(tmp):
                os.remove(tmp)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file: readers never see half a file."""
    path = Path(path)
    if not path.parent.exists():
        raise OutputError("output folder does not exist", path.parent)
    staged = StagedFiles()
    try:
        Path(staged.tmp(path)).write_text(text)
        staged.commit()
    except OSError as e:
        staged.abort()
        raise OutputError(f"cannot write ({e.strerror})", path) from None
