"""Output folders that appear whole or not at all.

A step writes into a hidden temporary folder beside ``--out`` and renames it onto ``--out`` only
when everything succeeded, so a failed or interrupted run never leaves a half-written folder that
a batch script could mistake for a result.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from phenoclip.errors import OutputError, UsageError


@contextmanager
def staged_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; on success it becomes ``out``, on any exception it is removed.

    ``out`` must not exist yet (an empty folder is accepted); missing parent folders are created.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{out} already exists", hint="choose a new --out or remove it")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)   # like mkdir -p: runs/ft needs no runs/ first
    except OSError as e:
        raise OutputError(f"cannot create the output's parent folder ({e.strerror})", out.parent) from None
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
    the end (:meth:`commit`) or all removed (:meth:`abort`): a failure leaves none of them behind.

    As a context manager it commits when the block ends normally and aborts when it raises; an
    ``OSError`` on one of its temporary files (disk full) becomes one line naming the final file
    (:class:`~phenoclip.errors.OutputError`, exit 6).
    """

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def __enter__(self) -> "StagedFiles":
        return self

    def __exit__(self, kind, error, tb) -> bool:
        if kind is None:
            self.commit()
            return False
        finals = dict(self.items)
        self.abort()
        if isinstance(error, OSError) and getattr(error, "filename", None) in finals:
            raise OutputError(f"cannot write ({error.strerror})", finals[error.filename]) from None
        return False

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


#: below this much free space a step is refused before it starts (a disk that fills during the
#: write is still caught, with exit 6 and nothing kept)
MIN_FREE_BYTES = int(os.environ.get("PHENOCLIP_MIN_FREE_KIB", "1024")) << 10

#: the output of the running step (set by ``cli.common.run_step``), named in disk-full errors
current_output: str | None = None


def pid_alive(pid: int) -> bool:
    """Whether a process with this ID runs on this machine (a writer's temporary files are its own)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(final: str | os.PathLike) -> int:
    """Remove ``.NAME.tmp-PID*`` left beside ``final`` by writers that were killed (their PID is
    gone); a live writer's files are kept. Returns how many were removed."""
    final = os.path.abspath(os.fspath(final).rstrip("/"))
    prefix = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.tmp-")
    removed = 0
    for path in glob.glob(glob.escape(prefix) + "*"):
        digits = ""
        for ch in path[len(prefix):]:
            if not ch.isdigit():
                break
            digits += ch
        if not digits or int(digits) == os.getpid() or pid_alive(int(digits)):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(path)
        removed += 1
    return removed


def check_output_location(out: str, folder: bool) -> None:
    """Before any work: the output's folder must exist (for a file; a folder output may create its
    missing parents) and be writable, tried with a real file, so a read-only mount or a path like
    ``a/missing/../b.h5`` is refused in the first second rather than after the work."""
    target = out.rstrip("/") or "/"
    if folder:
        where = target
        while not os.path.isdir(where):
            if os.path.exists(where):
                raise OutputError("exists and is not a folder", where, "choose another --out")
            parent = os.path.dirname(where) or "."
            if parent == where:
                break
            where = parent
    else:
        # the literal parent: the OS resolves "missing/.." only if "missing" exists, unlike abspath
        where = os.path.dirname(target) or "."
        if not os.path.isdir(where):
            raise OutputError("output folder does not exist", where, "create it first")
    free = shutil.disk_usage(where).free
    if free < MIN_FREE_BYTES:
        raise OutputError(f"only {free // 1024} KiB free on the output's file system", where,
                          "free space or choose another --out")
    try:
        fd, probe = tempfile.mkstemp(prefix=".phenoclip-probe-", dir=where)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        why = "read-only file system" if e.errno == errno.EROFS else (e.strerror or type(e).__name__)
        raise OutputError(f"output folder is not writable ({why})", where) from None


@contextmanager
def output_lock(out: str, folder: bool) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` for the whole step: a second phenoclip run writing to the
    same output is refused at once instead of both reporting success with one result lost. The
    lock file ``.NAME.lock`` sits beside the output (inside it would make a new folder non-empty)."""
    target = os.path.abspath(out.rstrip("/"))
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):  # a folder output whose parents the step will create: nothing to lock yet
        yield
        return
    lock = os.path.join(parent, f".{os.path.basename(target)}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise OutputError(f"another phenoclip run (pid {holder}) is writing this output", out,
                          "wait for it to finish or choose another --out") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.remove(lock)
        os.close(fd)
