"""The work folder of a resumable step whose output folder appears whole (finetune, segment train).

Their ``--out`` folder is staged and renamed at the end (:mod:`phenoclip.staging`), so it cannot
hold a checkpoint of unfinished training. Their training checkpoints go to ``.OUT.partial``
beside ``--out`` instead, with ``settings.json`` (what must not change before ``--resume``); a
stop signal leaves it for ``--resume``, success removes it. Under torchrun every rank checks and
rank 0 alone writes. :func:`resumable_run` wraps a whole step in all of that.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path
from typing import Iterator

from phenoclip.errors import InconsistentInputError, UsageError
from phenoclip.progress import info
from phenoclip.train import distributed as dist_utils
from phenoclip.train.loop import Preempted

SETTINGS_FILE = "settings.json"


def work_folder(out: str | Path) -> Path:
    """``.OUT.partial`` beside ``out``."""
    out = Path(out)
    return out.parent / f".{out.name}.partial"


def _occupied(out: Path) -> bool:
    return out.exists() and (not out.is_dir() or any(out.iterdir()))


def prepare(out: str | Path, fingerprint: dict, resume: bool) -> Path:
    """Check ``--resume`` (or its absence) against ``out``'s work folder; create it on a first run.

    ``fingerprint`` is JSON-able: the settings a resumed run must share with the stopped one.
    """
    out, work = Path(out), work_folder(out)
    saved = work / SETTINGS_FILE
    if resume:
        if not saved.exists():
            raise InconsistentInputError("--resume but no interrupted run of this --out", work,
                                         "run once without --resume")
        before, now = json.loads(saved.read_text()), json.loads(json.dumps(fingerprint))
        for name in sorted(set(before) | set(now)):
            if before.get(name) != now.get(name):
                raise InconsistentInputError(f"--resume with other settings: {name} was {before.get(name)!r}, "
                                             f"now {now.get(name)!r}", work,
                                             "resume with the same options, or remove the folder to start again")
        info(f"resuming the interrupted run kept in {work}")
        return work
    if _occupied(out):
        raise UsageError(f"{out} already exists", hint="choose a new --out or remove it")
    if saved.exists():
        raise UsageError(f"an interrupted run of {out} is kept in {work}",
                         hint="add --resume to continue it, or remove that folder to start again")
    dist_utils.barrier()  # every rank has checked before rank 0 writes what they check
    if dist_utils.rank() == 0:
        work.mkdir(parents=True, exist_ok=True)
        tmp = work / f".{SETTINGS_FILE}.tmp"
        tmp.write_text(json.dumps(fingerprint, indent=2))
        tmp.replace(saved)
    dist_utils.barrier()
    return work


def finish(out: str | Path) -> None:
    """Remove the work folder once the output folder is in place (rank 0; the others wait)."""
    dist_utils.barrier()
    if dist_utils.rank() == 0:
        shutil.rmtree(work_folder(out), ignore_errors=True)


def discard_if_unused(out: str | Path) -> None:
    """After a failure: remove the work folder when it holds no training checkpoint yet (bad
    input found before training leaves nothing behind); one with a checkpoint stays for --resume."""
    work = work_folder(out)
    if dist_utils.rank() == 0 and work.is_dir() and not any(work.rglob("model.safetensors")):
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def resumable_run(out: str | Path, fingerprint: dict, resume: bool, uses_work_folder: bool = True) -> Iterator[None]:
    """A step that trains through the loop, from start to end: join torchrun's process group,
    :func:`prepare` the work folder, run the body, then :func:`finish` (success), keep the work
    folder (a stop signal: every rank stopped at the same step, ``--resume`` continues) or
    :func:`discard_if_unused` (any other failure), and leave the process group.

    ``uses_work_folder=False``: a run that keeps no checkpoint (finetune's probes) only joins and
    leaves the process group.
    """
    dist_utils.init_from_env("cpu")
    if uses_work_folder:
        prepare(out, fingerprint, resume)
    try:
        yield
        if uses_work_folder:
            finish(out)
    except Preempted:
        dist_utils.shutdown()
        raise
    except BaseException:
        if uses_work_folder:
            discard_if_unused(out)
        raise
    dist_utils.shutdown()
