"""``--part K --num-parts N``: one step split across independent jobs (array jobs on a cluster).

Parts are numbered from 0, so ``--part $SLURM_ARRAY_TASK_ID`` works with ``--array=0-(N-1)``.
Each step that offers parts writes ``OUT.partK.h5`` and has a ``merge`` that refuses parts of
different runs, repeated parts and missing ones (``explain merge``, ``retrieve merge``,
``preprocess merge``). A part carries its run's *fingerprint*, a SHA-256 over everything that
decides its numbers, and the settings it was made from, so a refusal can name what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

import numpy as np

from phenoclip.errors import InconsistentInputError, UsageError
from phenoclip.store_read import open_store


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


def digest(values: Sequence[str] | np.ndarray | bytes) -> str:
    """Short SHA-256 of a list of strings or an array's bytes."""
    h = hashlib.sha256()
    if isinstance(values, bytes):
        h.update(values)
    elif isinstance(values, np.ndarray) and values.dtype.kind not in ("U", "O"):
        h.update(np.ascontiguousarray(values).tobytes())
        h.update(str(values.shape).encode())
    else:
        for v in values:
            h.update(str(v).encode())
            h.update(b"\0")
    return h.hexdigest()[:16]


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (a checkpoint's weights)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def store_identity(path: str | os.PathLike) -> dict:
    """What identifies a store's content without reading it all: name, creation time, samples, shapes."""
    with open_store(path) as s:
        shapes = {k: list(s.h5[k].shape) for k in s.h5 if hasattr(s.h5[k], "shape")}
        return {"file": os.path.basename(os.fspath(path)), "schema": s.schema,
                "created": str(s.attrs.get("created", "")), "samples": digest(s.samples), "shapes": shapes}


def fingerprint(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def first_difference(a: dict, b: dict, prefix: str = "") -> str:
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if va != vb:
            if isinstance(va, dict) and isinstance(vb, dict):
                return first_difference(va, vb, f"{prefix}{k}.")
            return f"{prefix}{k} is {vb!r} there and {va!r} in the first part"
    return "their fingerprints differ"


def read_parts(paths: Sequence[str | os.PathLike], schema: str, step: str) -> list[tuple[int, str, dict]]:
    """``(part, path, settings)`` sorted by part, after checking that the ``schema`` stores ``paths``
    form one complete run of ``step`` (same fingerprint, each part once, none missing; exit 5)."""
    if not paths:
        raise UsageError(f"give the OUT.partK.h5 files of {step} to merge")
    found = []
    for p in paths:
        with open_store(p, expect=schema) as s:
            if "part" not in s.attrs:
                raise InconsistentInputError("not a part of a sharded run (no part attribute)", p,
                                             f"merge the OUT.partK.h5 files of {step} --part K --num-parts N")
            found.append((int(s.attrs["part"]), int(s.attrs["num_parts"]), str(s.attrs["fingerprint"]),
                          json.loads(str(s.attrs["run_settings"])), os.fspath(p)))
    first = found[0]
    for part, num, fp, settings, p in found[1:]:
        if fp != first[2] or num != first[1]:
            raise InconsistentInputError(f"from another {step} run than {first[4]}: "
                                         f"{first_difference(first[3], settings)}", p,
                                         "merge the parts of one run only")
    seen: dict[int, str] = {}
    for part, _, _, _, p in found:
        if part in seen:
            raise InconsistentInputError(f"part {part} given twice (also {seen[part]})", p)
        seen[part] = p
    missing = sorted(set(range(first[1])) - set(seen))
    if missing:
        raise InconsistentInputError(f"part(s) {', '.join(map(str, missing))} of {first[1]} missing from the files "
                                     "given", first[4], "run the missing parts, then merge all of them")
    return sorted(((part, p, settings) for part, _, _, settings, p in found), key=lambda t: t[0])
