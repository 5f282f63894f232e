"""``--part K --num-parts N``: individuals split across independent jobs, and ``explain merge``.

The rule (recorded in every part as ``part_rule``): the run's individuals, in the order of the
``--data`` store, are cut into consecutive batches of ``individuals_per_call`` (the unit one
captum call attributes); part ``K`` (0-based) gets batches ``floor(K B / N)`` to
``floor((K + 1) B / N) - 1`` of the ``B`` batches. Every batch is computed exactly as in an
unsharded run, so merging the parts gives the very numbers of a single run.

A part carries the run's *fingerprint*: a SHA-256 over everything that decides its numbers
(checkpoint weights, data and reference stores, method and its settings, target, baseline,
reference set, the individuals and the batch size). ``merge`` refuses parts whose fingerprints
differ (naming the first setting that differs), repeated parts and missing parts (exit 5).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

import numpy as np

from phenoclip.errors import InconsistentInputError, UsageError
from phenoclip.parts import check_part, part_path  # noqa: F401  (explain's public names since before parts.py)
from phenoclip.store import create_store, open_store

PART_RULE = ("individuals in --data store order, in batches of individuals_per_call; part K of N (0-based) "
             "holds batches floor(K*B/N) .. floor((K+1)*B/N)-1 of the B batches")
#: per-sample datasets of an attributions store, copied row by row when merging
PER_SAMPLE = ("attributions", "delta", "target_value", "baseline_value", "index", "affine", "original_affine",
              "original_shape")


def part_range(n_individuals: int, per_call: int, part: int | None, num_parts: int | None) -> tuple[int, int]:
    """``(first, stop)`` individuals of ``part`` under :data:`PART_RULE` (all of them without parts)."""
    if part is None:
        return 0, n_individuals
    n_batches = -(-n_individuals // per_call)
    b0, b1 = part * n_batches // num_parts, (part + 1) * n_batches // num_parts
    return min(b0 * per_call, n_individuals), min(b1 * per_call, n_individuals)


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


def _first_difference(a: dict, b: dict, prefix: str = "") -> str:
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if va != vb:
            if isinstance(va, dict) and isinstance(vb, dict):
                return _first_difference(va, vb, f"{prefix}{k}.")
            return f"{prefix}{k} is {vb!r} there and {va!r} in the first part"
    return "their fingerprints differ"


def read_parts(paths: Sequence[str | os.PathLike]) -> list[tuple[int, str, dict]]:
    """``(part, path, settings)`` sorted by part, after checking they form one complete run."""
    if not paths:
        raise UsageError("give the attr.partK.h5 files to merge")
    found = []
    for p in paths:
        with open_store(p, expect="attributions") as s:
            if "part" not in s.attrs:
                raise InconsistentInputError("not a part of a sharded run (no part attribute)", p,
                                             "merge the OUT.partK.h5 files of explain --part K --num-parts N")
            found.append((int(s.attrs["part"]), int(s.attrs["num_parts"]), str(s.attrs["fingerprint"]),
                          json.loads(str(s.attrs["run_settings"])), os.fspath(p)))
    first = found[0]
    for part, num, fp, settings, p in found[1:]:
        if fp != first[2] or num != first[1]:
            raise InconsistentInputError(f"from another explain run than {first[4]}: "
                                         f"{_first_difference(first[3], settings)}", p,
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


def merge_parts(parts: list[tuple[int, str, dict]], target: str | os.PathLike) -> int:
    """Concatenate the parts' rows (in part order) into one store at ``target``; return the individuals."""
    samples: list[str] = []
    for _, p, _ in parts:
        with open_store(p) as s:
            samples.extend(s.samples)
    first = parts[0][1]
    with open_store(first) as head:
        attrs = {k: head.attrs[k] for k in head.attrs
                 if k not in ("part", "num_parts", "phenoclip_schema", "schema_version", "phenoclip_version",
                              "command", "created")}
        attrs["merged_parts"] = len(parts)
        with create_store(target, "attributions", samples, attrs=attrs) as w:
            for name in head.h5:
                if name == "samples":
                    continue
                obj = head.h5[name]
                if name in PER_SAMPLE:
                    w.per_sample(name, shape=(len(samples), *obj.shape[1:]), dtype=obj.dtype)
                else:                                   # the feature table, reference set, baseline
                    head.h5.copy(obj, w.h5, name)
            row = 0
            for _, p, _ in parts:
                with open_store(p) as s:
                    n = len(s.samples)
                    for name in PER_SAMPLE:
                        if name in s.h5:
                            for a in range(0, n, 64):
                                w.h5[name][row + a:row + min(n, a + 64)] = s.h5[name][a:a + 64]
                    row += n
    return len(samples)


def merged_prefix(out: str) -> str:
    """``--out`` of merge as a prefix (a trailing ``.h5`` is dropped)."""
    return out[:-3] if out.endswith(".h5") else out
