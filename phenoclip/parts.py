"""``--part K --num-parts N``: one step split across independent jobs (array jobs on a cluster).

Parts are numbered from 0, so ``--part $SLURM_ARRAY_TASK_ID`` works with ``--array=0-(N-1)``.
Each step that offers parts writes ``OUT.partK.h5`` and has a ``merge`` that refuses parts of
different runs, repeated parts and missing ones (``explain merge``, ``preprocess merge``).
"""

from __future__ import annotations

from phenoclip.errors import UsageError


def check_part(part: int | None, num_parts: int | None) -> None:
    """Both or neither; ``0 <= part < num_parts`` (exit 2 otherwise)."""
    if (part is None) != (num_parts is None):
        raise UsageError("--part and --num-parts go together")
    if part is not None and (num_parts < 1 or not 0 <= part < num_parts):
        raise UsageError(f"--part must be 0 .. --num-parts - 1 (parts are numbered from 0), got --part {part} "
                         f"--num-parts {num_parts}")


def part_path(prefix: str, part: int) -> str:
    """``PREFIX.partK.h5``."""
    return f"{prefix}.part{part}.h5"


def store_part_path(out: str, part: int) -> str:
    """The part of a store ``OUT``: ``gene.h5`` -> ``gene.partK.h5`` (``OUT`` without ``.h5``: ``OUT.partK.h5``)."""
    return part_path(out[:-3] if out.endswith(".h5") else out, part)
