"""Genome annotations used for ContIG's derived genetic modalities.

* PGS Catalog scoring files (``PGS000001.txt[.gz]``): header lines ``#key=value``, then a table
  with ``effect_allele``, ``effect_weight`` and either ``chr_name`` + ``chr_position`` or
  ``rsID`` (``other_allele`` optional). Positions are matched as written: the scoring file and
  the VCF must use the same genome build (the header's ``genome_build`` is kept for the log).
* Gene annotations: BED (chrom, 0-based start, end, name) or GTF (``gene`` features,
  ``gene_name`` or ``gene_id`` attribute). Returned as 1-based inclusive intervals.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import numpy as np

from phenoclip.errors import MalformedInputError, require_readable
from phenoclip.io.tables import iter_rows, open_text


def normalise_chrom(chrom: str) -> str:
    """``chr1`` and ``1`` name the same contig: compare without the ``chr`` prefix."""
    return chrom[3:] if chrom.lower().startswith("chr") else chrom


@dataclass
class ScoringFile:
    """One polygenic score: weights keyed by (chrom, pos) and/or rsID."""

    name: str
    path: str
    genome_build: str
    by_pos: dict[tuple[str, int], list[tuple[str, str, float]]] = field(default_factory=dict)
    by_id: dict[str, list[tuple[str, str, float]]] = field(default_factory=dict)
    n_variants: int = 0


def read_pgs_scoring_file(path: str | os.PathLike) -> ScoringFile:
    """Parse a PGS Catalog scoring file (harmonised or author-reported columns)."""
    p = require_readable(path, "scoring file")
    meta: dict[str, str] = {}
    with open_text(p) as fh:
        for line in fh:
            if not line.startswith("#"):
                break
            m = re.match(r"#\s*([^=]+)=(.*)", line.strip())
            if m:
                meta[m.group(1).strip()] = m.group(2).strip()
    rows = iter_rows(p, delimiter="\t")
    try:
        header = next(rows)
    except StopIteration:
        raise MalformedInputError("empty scoring file", p) from None
    col = {name: i for i, name in enumerate(header)}
    for need in ("effect_allele", "effect_weight"):
        if need not in col:
            raise MalformedInputError(f"not a PGS Catalog scoring file: no '{need}' column", p)
    chrom_col = col.get("hm_chr", col.get("chr_name"))
    pos_col = col.get("hm_pos", col.get("chr_position"))
    id_col = col.get("rsID", col.get("hm_rsID"))
    if (chrom_col is None or pos_col is None) and id_col is None:
        raise MalformedInputError("scoring file needs chr_name + chr_position or rsID columns", p)
    other_col = col.get("other_allele", col.get("hm_inferOtherAllele"))
    name = meta.get("pgs_id") or os.path.basename(p).split(".")[0]
    score = ScoringFile(name=name, path=p, genome_build=meta.get("genome_build", "NR"))
    for lineno, row in enumerate(rows, start=2):
        try:
            weight = float(row[col["effect_weight"]])
        except (ValueError, IndexError):
            raise MalformedInputError(f"row {lineno}: effect_weight is not a number", p) from None
        effect = row[col["effect_allele"]].upper()
        other = row[other_col].upper() if other_col is not None and other_col < len(row) else ""
        entry = (effect, other, weight)
        if chrom_col is not None and pos_col is not None and row[pos_col]:
            try:
                key = (normalise_chrom(row[chrom_col]), int(row[pos_col]))
            except ValueError:
                raise MalformedInputError(f"row {lineno}: chr_position is not an integer", p) from None
            score.by_pos.setdefault(key, []).append(entry)
        elif id_col is not None and row[id_col]:
            score.by_id.setdefault(row[id_col], []).append(entry)
        score.n_variants += 1
    if score.n_variants == 0:
        raise MalformedInputError("scoring file lists no variants", p)
    return score


@dataclass
class GeneIntervals:
    """Gene intervals per contig, 1-based inclusive, sorted by start."""

    names: list[str]
    chrom: list[str]
    start: np.ndarray
    end: np.ndarray

    def on(self, chrom: str) -> np.ndarray:
        """Indices of the genes on ``chrom`` (``chr`` prefix ignored)."""
        c = normalise_chrom(chrom)
        return np.array([i for i, g in enumerate(self.chrom) if normalise_chrom(g) == c], dtype=np.int64)


_GTF_NAME = re.compile(r'gene_name "([^"]+)"')
_GTF_ID = re.compile(r'gene_id "([^"]+)"')


def read_gene_annotation(path: str | os.PathLike) -> GeneIntervals:
    """Read genes from a BED (>= 4 columns) or GTF file; the format is told by its columns."""
    p = require_readable(path, "gene annotation")
    names, chroms, starts, ends = [], [], [], []
    for lineno, row in enumerate(iter_rows(p, delimiter="\t"), start=1):
        if row[0].startswith(("track", "browser")):
            continue
        if len(row) >= 9 and row[2] in ("gene", "exon", "transcript", "CDS"):  # GTF
            if row[2] != "gene":
                continue
            m = _GTF_NAME.search(row[8]) or _GTF_ID.search(row[8])
            if not m:
                raise MalformedInputError(f"line {lineno}: gene without gene_name or gene_id", p)
            try:
                beg, end = int(row[3]), int(row[4])  # GTF is already 1-based inclusive
            except ValueError:
                raise MalformedInputError(f"line {lineno}: start/end are not integers", p) from None
            names.append(m.group(1))
        elif len(row) >= 4:  # BED: 0-based half-open
            try:
                beg, end = int(row[1]) + 1, int(row[2])
            except ValueError:
                raise MalformedInputError(f"line {lineno}: BED start/end are not integers", p) from None
            names.append(row[3])
        else:
            raise MalformedInputError(f"line {lineno}: neither BED (chrom start end name) nor GTF", p)
        chroms.append(row[0])
        starts.append(beg)
        ends.append(end)
    if not names:
        raise MalformedInputError("no genes found", p)
    return GeneIntervals(names, chroms, np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64))
