"""Expression tables: samples x genes (or genes x samples) TSV/CSV, optionally gzipped.

Contract: the first column holds sample IDs (gene IDs with ``genes_as_rows``), the header row
holds the other axis' IDs; every other cell is a number. Counts or TPM are both accepted; the
transform is chosen at preprocessing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import numpy as np

from phenoclip.errors import MalformedInputError
from phenoclip.io.tables import iter_rows


@dataclass
class ExpressionTable:
    samples: list[str]
    genes: list[str]
    values: np.ndarray  # (samples, genes) float64


def read_expression_table(path: str | os.PathLike, genes_as_rows: bool = False) -> ExpressionTable:
    """Read a numeric matrix with row and column IDs; a non-numeric cell names its row and column."""
    p = os.fspath(path)
    rows = iter_rows(p)
    try:
        header = next(rows)
    except StopIteration:
        raise MalformedInputError("empty table", p) from None
    col_ids = [h.strip() for h in header[1:]]
    if not col_ids:
        raise MalformedInputError("table has a single column: expected IDs then values", p,
                                  "use a tab or comma delimiter")
    row_ids, data = [], []
    for lineno, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise MalformedInputError(f"line {lineno} has {len(row)} fields, the header has {len(header)}", p)
        try:
            data.append(np.asarray(row[1:], dtype=np.float64))
        except ValueError:
            bad = next(i for i, c in enumerate(row[1:]) if not _is_number(c))
            raise MalformedInputError(f"non-numeric value '{row[bad + 1]}' at line {lineno}, column "
                                      f"'{col_ids[bad]}'", p) from None
        row_ids.append(row[0].strip())
    if not data:
        raise MalformedInputError("table has a header but no data rows", p)
    values = np.vstack(data)
    if not np.isfinite(values).all():
        r, c = np.argwhere(~np.isfinite(values))[0]
        raise MalformedInputError(f"NaN or infinite value at row '{row_ids[r]}', column '{col_ids[c]}'", p)
    _check_orientation(header[0].strip(), row_ids, col_ids, genes_as_rows, p)
    if genes_as_rows:
        return ExpressionTable(samples=col_ids, genes=row_ids, values=values.T.copy())
    return ExpressionTable(samples=row_ids, genes=col_ids, values=values)


#: first-column headers of genes x samples tables (featureCounts, DESeq2/edgeR exports, GEO series)
GENE_HEADERS = {"gene", "genes", "gene_id", "geneid", "gene_name", "gene_symbol", "symbol", "ensembl",
                "ensembl_id", "ensembl_gene_id", "id_ref", "probe", "probe_id", "feature", "feature_id"}
#: first-column headers of samples x genes tables
SAMPLE_HEADERS = {"sample", "samples", "sample_id", "sampleid", "patient", "patient_id", "subject", "subject_id",
                  "iid", "individual"}
_ENSEMBL = re.compile(r"ENS[A-Z]*[GT]\d{6,}(\.\d+)?")


def _looks_like_genes(ids: list[str]) -> bool:
    """Most IDs are Ensembl gene or transcript IDs (ENSG00000141510, ENSMUSG..., versioned or not)."""
    return len(ids) > 0 and sum(bool(_ENSEMBL.fullmatch(i)) for i in ids) >= 0.9 * len(ids)


def _check_orientation(corner: str, row_ids: list[str], col_ids: list[str], genes_as_rows: bool, path: str) -> None:
    """Refuse a table read the wrong way round: silently transposed, genes would become patients."""
    why = None
    if not genes_as_rows and (corner.lower() in GENE_HEADERS or _looks_like_genes(row_ids)):
        why = (f"the rows look like genes (first column '{corner}', e.g. '{row_ids[0]}'): the table is genes x "
               "samples", "add --genes-as-rows")
    elif genes_as_rows and (corner.lower() in SAMPLE_HEADERS or _looks_like_genes(col_ids)):
        why = (f"the columns look like genes (first column '{corner}', e.g. '{col_ids[0]}'): the table is "
               "samples x genes", "drop --genes-as-rows")
    if why:
        raise MalformedInputError(why[0], path, why[1])


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
