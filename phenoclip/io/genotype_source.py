"""What every genotype reader offers ``preprocess variants`` (VCF, PLINK 1/2, BGEN).

A source knows its file's ``path`` and ``samples`` (file order) and streams
:class:`phenoclip.io.vcf.VariantBlock`s in file order; the conversion to a store, filters,
PGS and burden scores are shared (:func:`phenoclip.preprocess.variants.convert_genotypes`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from phenoclip.errors import MalformedInputError

if TYPE_CHECKING:  # io.vcf imports this module: only the annotations name its types
    from phenoclip.io.vcf import Region, SkipCounts, VariantBlock


#: how ``--part K --num-parts N`` cuts the variants (recorded in each part store as ``part_rule``)
PART_RULE = {
    "index": "sites in file order (after --region) cut into N consecutive runs of near-equal count "
             "(numpy.array_split); part K (0-based) reads run K",
    "genome": "the genome (the VCF header's ##contig lines with length=, in header order) cut into N "
              "consecutive pieces of equal length; part K (0-based) reads the records in piece K",
}


def part_of(n: int, part: tuple[int, int] | None) -> tuple[int, int]:
    """``(first, stop)`` of the ``n`` selected sites that part ``(K, N)`` reads (:data:`PART_RULE` index)."""
    if part is None:
        return 0, n
    k, parts = part
    bounds = np.array_split(np.arange(n), parts)[k]
    return (int(bounds[0]), int(bounds[-1]) + 1) if bounds.size else (n, n)


def require_unique_ids(ids: Sequence[str], path: str, what: str, fix: str) -> None:
    """Raise one line naming the first sample ID that occurs twice in ``path``."""
    seen: set[str] = set()
    for s in ids:
        if s in seen:
            raise MalformedInputError(f"duplicate sample ID '{s}'{what}", path, fix)
        seen.add(s)


class GenotypeSource:
    """Base of the readers: ``path``, ``samples``, :meth:`iter_blocks`, :meth:`close`."""

    path: str
    samples: list[str]
    part_rule = PART_RULE["index"]
    _reader = None  # the format library's open file, once there is one

    def sample_columns(self, samples: Sequence[str] | None) -> np.ndarray | None:
        """Sorted file columns of ``samples`` (a subset of :attr:`samples`), or None for all."""
        if samples is None:
            return None
        index = {s: i for i, s in enumerate(self.samples)}
        return np.sort(np.fromiter((index[s] for s in samples), dtype=np.int64, count=len(samples)))

    def iter_blocks(self, regions: Sequence[Region] = (), samples: Sequence[str] | None = None,
                    block_size: int = 2048, want_ref_count: bool = False,
                    skipped: SkipCounts | None = None, part: tuple[int, int] | None = None
                    ) -> Iterator[VariantBlock]:
        """Decoded blocks of at most about ``block_size`` variants, in file order; ``part`` = (K, N)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file."""
        if self._reader is not None:
            self._reader.close()
