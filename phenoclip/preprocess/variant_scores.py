"""Per-sample scores that ``preprocess variants`` accumulates while it streams variant blocks.

:class:`PgsAccumulator`: polygenic scores from PGS Catalog scoring files (``--pgs``).
:class:`BurdenAccumulator`: per-gene counts of rare ALT alleles (``--genes``).
Both see every variant read (after sample selection), before the ``--maf``/``--max-missing``
filters: a burden test is about the rare variants ``--maf`` would drop.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from phenoclip.io.annotations import GeneIntervals, ScoringFile, normalise_chrom
from phenoclip.io.genotype_source import VariantBlock


class PgsAccumulator:
    """Sums effect-allele dosages x weights per sample; missing calls are mean-imputed (plink2's default).

    Each scoring-file row is scored at most once per site. A multi-allelic site arrives split into
    one variant per ALT with the same REF, so an effect allele equal to REF (and no
    ``other_allele`` to pick one split row) matches every split row; counting it each time would
    multiply its weight by the number of ALTs. Split rows are adjacent, so remembering the rows
    already scored at the current site is enough.
    """

    def __init__(self, scores: Sequence[ScoringFile], n_samples: int):
        self.scores = list(scores)
        self.values = np.zeros((n_samples, len(scores)), dtype=np.float64)
        self.matched = np.zeros(len(scores), dtype=np.int64)
        self._site: list[tuple] = [()] * len(scores)          # (chrom, pos, ref) of the last site seen
        self._done: list[set[int]] = [set() for _ in scores]  # entries already scored there

    def add(self, block: VariantBlock) -> None:
        for j, score in enumerate(self.scores):
            for v in range(len(block)):
                entries = score.by_pos.get((normalise_chrom(block.chrom[v]), block.pos[v]))
                if entries is None and score.by_id:
                    entries = score.by_id.get(block.id[v])
                if not entries:
                    continue
                site = (block.chrom[v], block.pos[v], block.ref[v])
                if site != self._site[j]:
                    self._site[j], self._done[j] = site, set()
                for e, (effect, other, weight) in enumerate(entries):
                    if e in self._done[j]:
                        continue
                    if effect == block.alt[v].upper() and other in ("", block.ref[v].upper()):
                        counts = block.dosage[v]
                    elif effect == block.ref[v].upper() and other in ("", block.alt[v].upper()):
                        counts = block.ref_count[v]
                    else:
                        continue
                    called = counts >= 0
                    mean = counts[called].mean() if called.any() else 0.0
                    self.values[:, j] += weight * np.where(called, counts, mean)
                    self.matched[j] += 1
                    self._done[j].add(e)


class BurdenAccumulator:
    """Per-gene count of rare ALT alleles (ALT frequency < ``max_af``); missing calls count 0."""

    def __init__(self, genes: GeneIntervals, n_samples: int, max_af: float):
        self.genes = genes
        self.max_af = max_af
        self.values = np.zeros((n_samples, len(genes.names)), dtype=np.int32)
        self.n_rare = np.zeros(len(genes.names), dtype=np.int64)
        self._by_chrom: dict[str, np.ndarray] = {}

    def add(self, block: VariantBlock, alt_freq: np.ndarray) -> None:
        chroms = np.asarray(block.chrom)
        pos = np.asarray(block.pos, dtype=np.int64)
        for chrom in dict.fromkeys(block.chrom):
            key = normalise_chrom(chrom)
            if key not in self._by_chrom:
                self._by_chrom[key] = self.genes.on(chrom)
            gene_idx = self._by_chrom[key]
            if gene_idx.size == 0:
                continue
            rows = np.flatnonzero((chroms == chrom) & (alt_freq < self.max_af) & (alt_freq > 0))
            if rows.size == 0:
                continue
            order = np.argsort(pos[rows], kind="stable")
            rows, p = rows[order], pos[rows][order]
            # prefix sums over the rare variants of this contig: each gene is one subtraction
            dos = np.clip(block.dosage[rows].astype(np.int32), 0, None)
            csum = np.vstack([np.zeros((1, dos.shape[1]), np.int32), np.cumsum(dos, axis=0)])
            lo = np.searchsorted(p, self.genes.start[gene_idx], side="left")
            hi = np.searchsorted(p, self.genes.end[gene_idx], side="right")
            hit = hi > lo
            if hit.any():
                g = gene_idx[hit]
                self.values[:, g] += (csum[hi[hit]] - csum[lo[hit]]).T
                self.n_rare[g] += hi[hit] - lo[hit]
