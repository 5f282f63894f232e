"""The simulated contigs: GRCh38-sized chr1, chr2 and chrX, and where sites and genes may go on them.

Males are haploid on chrX past the pseudo-autosomal region PAR1, so every chrX site lies in
``[CHRX_NONPAR_START, CHRX_NONPAR_END]``.
"""

from __future__ import annotations

CHROM_LENGTHS = {"chr1": 248_956_422, "chr2": 242_193_529, "chrX": 156_040_895}
CHROMS = tuple(CHROM_LENGTHS)
#: chrX sites start past the pseudo-autosomal region PAR1 (ends at 2,781,479), so males are haploid there
CHRX_NONPAR_START = 5_000_000
CHRX_NONPAR_END = 150_000_000


def span(chrom: str) -> tuple[int, int]:
    """Where sites and genes may go: 1 Mb from the contig ends; past PAR1 on chrX."""
    if chrom == "chrX":
        return CHRX_NONPAR_START, CHRX_NONPAR_END
    return 1_000_000, CHROM_LENGTHS[chrom] - 1_000_000
