"""``preprocess merge``: stores written by several jobs -> the store one job would have written.

Two directions, chosen from the parts themselves:

* **by variants** (genotype stores of the same samples, in the same order): the parts of one
  ``preprocess variants --part K --num-parts N`` run (any order on the command line; repeated,
  missing or foreign parts are refused), or stores of one job per ``--region`` (concatenated in
  the order given). The variant table, ``dosage``, ``haplotypes`` and ``expected_dosage`` are
  concatenated and equal the single job's byte for byte; PGS sums add (equal to float32
  rounding), burden counts add exactly.
* **by samples** (any schema; disjoint samples): per-sample datasets are concatenated in the
  order given; every other dataset (a variant table, gene list, ontology) must be identical in
  all parts, else the merge is refused naming it, since then one job would have written
  something else (allele frequencies, gene means and other cohort-wide summaries).
"""

from __future__ import annotations

import os
from typing import Sequence

import h5py
import numpy as np

from phenoclip.errors import InconsistentInputError, UsageError
from phenoclip.progress import Progress
from phenoclip.store_read import open_store, Store
from phenoclip.store_write import create_store

_BATCH = 256  # samples per write
#: store attributes that describe one job, not the data (create_store writes them anew)
_JOB_ATTRS = ("phenoclip_schema", "schema_version", "phenoclip_version", "command", "created", "part", "num_parts",
              "part_rule", "part_fingerprint")
#: genotype attributes that count what each part read: the merged store holds their sums
_COUNTS = ("sites_read", "variants_read", "multiallelic_split", "records_without_alt", "records_without_gt")
_VARIANT_TABLE = ("chrom", "pos", "id", "ref", "alt", "alt_freq", "missing_rate")


def merge_stores(paths: Sequence[str | os.PathLike], out: str | os.PathLike, threads: int = 1) -> dict:
    """Merge stores (see the module docstring); returns a summary for the log."""
    if len(paths) < 2:
        raise UsageError("give at least two stores to merge")
    stores = [open_store(p) for p in paths]
    try:
        schemas = {s.schema for s in stores}
        if len(schemas) > 1:
            raise InconsistentInputError(f"holds {stores[-1].schema}, {stores[0].path} holds {stores[0].schema}",
                                         stores[-1].path, "merge stores of one modality")
        same_samples = all(s.samples == stores[0].samples for s in stores[1:])
        if same_samples and stores[0].schema == "genotypes":
            return _by_variants(_part_order(stores), out, threads)
        seen: dict[str, str] = {}
        for s in stores:
            for sample in s.samples:
                if sample in seen:
                    raise InconsistentInputError(
                        f"sample '{sample}' is also in {seen[sample]}", s.path,
                        "merge genotype stores of the same samples (by variants) or stores of disjoint samples")
                seen[sample] = s.path
        return _by_samples(stores, out, threads)
    finally:
        for s in stores:
            s.close()


def _part_order(stores: list[Store]) -> list[Store]:
    """Parts of one ``--num-parts`` run in part order, checked whole; stores without parts as given."""
    with_part = [s for s in stores if "part" in s.attrs]
    if not with_part:
        return stores
    if len(with_part) != len(stores):
        plain = next(s for s in stores if "part" not in s.attrs)
        raise InconsistentInputError("is not a part of a --num-parts run, the others are", plain.path,
                                     "merge the parts of one run")
    first = with_part[0]
    for s in stores[1:]:
        if s.attrs["part_fingerprint"] != first.attrs["part_fingerprint"]:
            raise InconsistentInputError(f"is a part of another run than {first.path} (input, samples, filters or "
                                         "options differ)", s.path, "merge the parts of one run")
    n = int(first.attrs["num_parts"])
    by_part: dict[int, Store] = {}
    for s in stores:
        k = int(s.attrs["part"])
        if k in by_part:
            raise InconsistentInputError(f"is part {k}, as is {by_part[k].path}", s.path, "give each part once")
        by_part[k] = s
    missing = [k for k in range(n) if k not in by_part]
    if missing:
        raise InconsistentInputError(f"part(s) {', '.join(map(str, missing))} of {n} missing", first.path,
                                     "give every OUT.partK.h5 of the run")
    return [by_part[k] for k in range(n)]


def _by_variants(parts: list[Store], out, threads: int) -> dict:
    h = [p.h5 for p in parts]
    widths = [p.h5["dosage"].shape[1] for p in parts]
    n_var = sum(widths)
    samples = parts[0].samples
    for name in ("pgs_names", "burden_genes"):
        present = [name in x for x in h]
        if any(present) and (not all(present) or any(p.strings(name) != parts[0].strings(name) for p in parts[1:])):
            raise InconsistentInputError(f"'{name}' differs between the parts", parts[0].path,
                                         "run every part with the same --pgs/--genes files")
    nonempty = [x for x, w in zip(h, widths) if w]
    complete = all(bool(x.attrs.get("haplotypes_complete", x.attrs.get("phased"))) for x in h)
    phased = n_var > 0 and complete
    expected = bool(nonempty) and all("expected_dosage" in x for x in nonempty)
    attrs = {k: v for k, v in h[0].attrs.items() if k not in _JOB_ATTRS}
    for k in _COUNTS:
        if k in attrs:
            attrs[k] = int(sum(int(x.attrs.get(k, 0)) for x in h))
    if "part" not in h[0].attrs:
        attrs["filters"] = _region_filters(parts)
    attrs["phased"] = phased
    attrs["haplotypes_complete"] = complete
    attrs["merged_from"] = len(parts)
    with create_store(out, "genotypes", samples, attrs=attrs) as w:
        for col in (f"variants/{c}" for c in _VARIANT_TABLE):
            if h[0][col].dtype.kind in ("O", "S"):
                w.array(col, [v for p in parts for v in p.strings(col)])
            else:
                w.array(col, np.concatenate([x[col][()] for x in h]).astype(h[0][col].dtype))
        w.per_sample("dosage", shape=(len(samples), n_var), dtype=np.int8, fillvalue=-1)
        if phased:
            w.per_sample("haplotypes", shape=(len(samples), 2, n_var), dtype=np.int8, fillvalue=-1)
        if expected:
            w.per_sample("expected_dosage", shape=(len(samples), n_var), dtype=np.float32, fillvalue=np.nan,
                         attrs=dict(nonempty[0]["expected_dosage"].attrs))
        with Progress("merging variants", len(samples), "samples") as bar:
            for s0 in range(0, len(samples), _BATCH):
                s1 = min(len(samples), s0 + _BATCH)
                if n_var:
                    w.write_rows("dosage", s0, np.concatenate([x["dosage"][s0:s1] for x in h], axis=1), threads)
                    if phased:
                        w.write_rows("haplotypes", s0, np.concatenate([x["haplotypes"][s0:s1] for x in nonempty],
                                                                       axis=2), threads)
                    if expected:
                        w.write_rows("expected_dosage", s0,
                                     np.concatenate([x["expected_dosage"][s0:s1] for x in nonempty], axis=1), threads)
                bar.advance(s1 - s0)
        if "pgs" in h[0]:
            # parts keep float64 sums: added, then rounded once to float32 as a single job rounds them
            total = sum(x["pgs"][()].astype(np.float64) for x in h)
            pattrs = dict(h[0]["pgs"].attrs)
            pattrs["variants_matched"] = sum(np.asarray(x["pgs"].attrs["variants_matched"]) for x in h)
            w.per_sample("pgs", total.astype(np.float32), attrs=pattrs)
            w.array("pgs_names", parts[0].strings("pgs_names"))
        if "burden" in h[0]:
            battrs = dict(h[0]["burden"].attrs)
            battrs["rare_variants_per_gene"] = sum(np.asarray(x["burden"].attrs["rare_variants_per_gene"]) for x in h)
            w.per_sample("burden", sum(x["burden"][()] for x in h), attrs=battrs)
            w.array("burden_genes", parts[0].strings("burden_genes"))
    return {"merged": len(parts), "by": "variants", "samples": len(samples), "variants": n_var, "phased": phased}


def _region_filters(parts: list[Store]) -> str:
    """The ``filters`` attribute of stores of one job per ``--region``: their regions joined, the
    other filters equal (else they are not one run)."""
    regions, rest = [], None
    for p in parts:
        text = str(p.attrs.get("filters", ""))
        head, _, tail = text.partition(" ")
        if rest is not None and tail != rest:
            raise InconsistentInputError(f"was written with other filters ({tail}) than {parts[0].path} ({rest})",
                                         p.path, "merge stores written with the same --maf/--max-missing/--every-kth")
        rest = tail
        regions.append(head.removeprefix("regions="))
    return f"regions={','.join(regions)} {rest}"


def _is_per_sample(ds: h5py.Dataset, n_samples: int) -> bool:
    return ds.ndim >= 1 and ds.shape[0] == n_samples and (ds.chunks is None or ds.chunks[0] == 1)


def _by_samples(stores: list[Store], out, threads: int) -> dict:
    first = stores[0]
    names: list[str] = []
    first.h5.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    names = [n for n in names if n != "samples"]
    per_sample = [n for n in names if _is_per_sample(first.h5[n], len(first.samples))]
    shared = [n for n in names if n not in per_sample]
    for s in stores[1:]:
        other: list[str] = []
        s.h5.visititems(lambda name, obj: other.append(name) if isinstance(obj, h5py.Dataset) else None)
        if sorted(n for n in other if n != "samples") != sorted(names):
            raise InconsistentInputError(f"holds other datasets than {first.path}", s.path,
                                         "merge stores written by the same command and options")
        for n in per_sample:
            if s.h5[n].shape[1:] != first.h5[n].shape[1:] or s.h5[n].dtype != first.h5[n].dtype:
                raise InconsistentInputError(f"'{n}' has shape {s.h5[n].shape[1:]} per sample, {first.path} "
                                             f"{first.h5[n].shape[1:]}", s.path)
        for n in shared:
            a, b = first.h5[n][()], s.h5[n][()]
            if a.shape != b.shape or not np.array_equal(a, b, equal_nan=a.dtype.kind == "f"):
                raise InconsistentInputError(
                    f"'{n}' differs from {first.path}'s: it is computed over the cohort, so these stores cannot be "
                    "merged by samples into what one job would write", s.path,
                    "preprocess all samples in one job; a genotype store splits by --part/--num-parts instead")
    samples = [x for s in stores for x in s.samples]
    attrs = {k: v for k, v in first.attrs.items() if k not in _JOB_ATTRS}
    attrs["merged_from"] = len(stores)
    with create_store(out, first.schema, samples, attrs=attrs) as w:
        for n in shared:
            ds = first.h5[n]
            data = ds[()]
            w.array(n, first.strings(n) if ds.dtype.kind == "O" else data, attrs=dict(ds.attrs))
        with Progress("merging samples", len(samples), "samples") as bar:
            for n in per_sample:
                src = first.h5[n]
                w.per_sample(n, shape=(len(samples), *src.shape[1:]), dtype=src.dtype, fillvalue=src.fillvalue,
                             attrs=dict(src.attrs))
            row = 0
            for s in stores:
                for s0 in range(0, len(s.samples), _BATCH):
                    s1 = min(len(s.samples), s0 + _BATCH)
                    for n in per_sample:
                        w.write_rows(n, row + s0, s.h5[n][s0:s1], threads)
                    bar.advance(s1 - s0)
                row += len(s.samples)
    return {"merged": len(stores), "by": "samples", "samples": len(samples), "schema": first.schema}
