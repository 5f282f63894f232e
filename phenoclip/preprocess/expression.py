"""``preprocess expression``: table -> expression store (values float32, samples x genes).

Transforms: ``log1p`` (log(1 + x)), ``cpm-log1p`` (counts per million, then log1p: removes
library-size differences between samples), ``none``. ``--top-genes N`` keeps the N genes of
highest variance after the transform (ties broken by gene order), in their original order.
"""

from __future__ import annotations

import os

import numpy as np

from phenoclip.errors import InconsistentInputError, MalformedInputError, UsageError
from phenoclip.io.expression import read_expression_table
from phenoclip.io.stdin import source_attr
from phenoclip.store_write import check_unique_samples, create_store

TRANSFORMS = ("log1p", "cpm-log1p", "none")


def transform_values(values: np.ndarray, transform: str) -> np.ndarray:
    """Apply a named transform to a (samples x genes) matrix of non-negative values."""
    if transform == "none":
        return values
    if transform == "log1p":
        return np.log1p(values)
    if transform == "cpm-log1p":
        libsize = values.sum(axis=1, keepdims=True)
        return np.log1p(values / np.maximum(libsize, 1e-12) * 1e6)
    raise UsageError(f"unknown --transform '{transform}': use one of {', '.join(TRANSFORMS)}")


def top_variable_genes(values: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` most variable columns, returned in increasing (original) order."""
    var = values.var(axis=0)
    order = np.argsort(-var, kind="stable")[:n]
    return np.sort(order)


def convert_expression(table: str | os.PathLike, out: str | os.PathLike, *, transform: str = "log1p",
                       top_genes: int | None = None, genes_as_rows: bool = False) -> dict:
    """Read, check, transform and store an expression table. Returns a summary dict."""
    if transform not in TRANSFORMS:
        raise UsageError(f"unknown --transform '{transform}': use one of {', '.join(TRANSFORMS)}")
    table = os.fspath(table)
    data = read_expression_table(table, genes_as_rows=genes_as_rows)
    check_unique_samples(data.samples, table)
    if len(set(data.genes)) != len(data.genes):
        dup = next(g for i, g in enumerate(data.genes) if g in data.genes[:i])
        raise MalformedInputError(f"duplicate gene ID '{dup}'", table)
    if transform != "none" and (data.values < 0).any():
        raise MalformedInputError(f"negative values cannot be {transform}-transformed", table,
                                  "give counts/TPM, or --transform none for already-normalised data")
    values = transform_values(data.values, transform)
    genes = data.genes
    if top_genes is not None:
        if top_genes > len(genes):
            raise InconsistentInputError(f"--top-genes {top_genes} but the table has {len(genes)} genes", table)
        keep = top_variable_genes(values, top_genes)
        values, genes = values[:, keep], [genes[i] for i in keep]
    with np.errstate(over="ignore"):  # an overflow is reported below, naming the cell
        values32 = values.astype(np.float32)
    if not np.isfinite(values32).all():
        r, c = np.argwhere(~np.isfinite(values32))[0]
        raise MalformedInputError(f"value {values[r, c]:.3g} at sample '{data.samples[r]}', gene '{genes[c]}' does "
                                  f"not fit a float32 store (|x| > 3.4e38) after --transform {transform}", table,
                                  "rescale the table, or use --transform log1p")
    mean, std = values.mean(axis=0), values.std(axis=0)
    with create_store(out, "expression", data.samples, source=table,
                      attrs={"source": source_attr(table), "transform": transform,
                             "top_genes": top_genes or 0, "genes_as_rows": genes_as_rows}) as w:
        w.array("genes", genes)
        w.per_sample("values", values32)
        # per-gene statistics: models standardise with these without re-reading every sample
        w.array("gene_mean", mean.astype(np.float32))
        w.array("gene_std", std.astype(np.float32))
    return {"samples": len(data.samples), "genes": len(genes), "transform": transform}
