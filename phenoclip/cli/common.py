"""Options and the run wrapper shared by every subcommand."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator, Optional

import typer

from phenoclip import staging
from phenoclip.errors import UsageError, require_writable_parent
from phenoclip.runlog import RunLog, log_path_for

#: ``phenoclip --log FILE``: the run log is also written there (the only place for it when the
#: results go to standard output with ``--out -``)
LOG_FILE: Optional[str] = None

Threads = typer.Option(None, "--threads", min=1, help="CPU threads to use (default: all cores).")
Seed = typer.Option(0, "--seed", help="Random seed; the same seed gives the same output.")


def set_threads(threads: Optional[int]) -> None:
    """Cap BLAS/OpenMP threads before numpy or torch start their pools."""
    if threads:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(threads)
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(threads)


@contextlib.contextmanager
def run_step(command: str, out: str, *, seed: Optional[int] = None, threads: Optional[int] = None,
             device: str = "cpu") -> Iterator[RunLog]:
    """Set up a step and write ``OUT.log`` when it succeeds.

    The store writer (:mod:`phenoclip.store_write`) records the full command line in every file it writes.
    """
    # imported here, not at the top: `phenoclip --help` stays fast (store_write pulls h5py and numpy)
    from phenoclip import progress, store_write

    store_write.current_command = " ".join(["phenoclip"] + sys.argv[1:])
    set_threads(threads)
    # under torchrun every rank runs this; only rank 0 reports and writes the log
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if not rank0:
        progress.QUIET = True
    log = RunLog(command, seed=seed, threads=threads, device=device)
    if rank0 and LOG_FILE:  # checked before any work, like the output itself
        require_writable_parent(LOG_FILE)
    guard = contextlib.nullcontext()
    if rank0 and out != "-":
        staging.current_output = out.rstrip("/")
        # folder outputs are passed with a trailing '/'; a name without a suffix is a folder too
        folder = out.endswith("/") or not os.path.splitext(os.path.basename(out.rstrip("/")))[1]
        staging.check_output_location(out, folder)
        staging.remove_stale_temps(out)  # a killed earlier run of this output left them
        guard = staging.output_lock(out, folder)
    with guard:
        yield log
        if rank0 and out != "-":  # results on stdout: the log would have no place of its own
            log.write(log_path_for(out, command))
        if rank0 and LOG_FILE:
            log.write(LOG_FILE)


#: a cap on every step's epochs, for smoke runs of documented commands (the README test runs the
#: README's commands as written, with their --epochs, on the sample cohort); unset in normal use
MAX_EPOCHS_VAR = "PHENOCLIP_MAX_EPOCHS"


def capped_epochs(epochs: int) -> int:
    """``epochs``, or the cap in ``$PHENOCLIP_MAX_EPOCHS`` when that is lower (said on stderr)."""
    text = os.environ.get(MAX_EPOCHS_VAR, "")
    if not text:
        return epochs
    try:
        cap = int(text)
    except ValueError:
        raise UsageError(f"{MAX_EPOCHS_VAR} must be a whole number, got '{text}'") from None
    if cap < epochs:
        # imported here, not at the top: `phenoclip --help` stays fast and loads only what it needs
        from phenoclip.progress import warn
        warn(f"epochs capped at {cap} by {MAX_EPOCHS_VAR} (asked: {epochs})")
        return cap
    return epochs
