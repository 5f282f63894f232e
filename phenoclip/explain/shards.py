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

import os
from typing import Sequence

from phenoclip import parts
# explain's public names since before parts.py held them
from phenoclip.parts import (check_part, digest, file_digest, fingerprint, part_path,  # noqa: F401
                             store_identity)
from phenoclip.store_read import open_store
from phenoclip.store_write import create_store

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


def read_parts(paths: Sequence[str | os.PathLike]) -> list[tuple[int, str, dict]]:
    """``(part, path, settings)`` sorted by part, after checking they form one complete explain run."""
    return parts.read_parts(paths, "attributions", "explain")


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
