"""PLINK 1 (.bed/.bim/.fam) and PLINK 2 (.pgen/.pvar/.psam) genotypes through pgenlib.

pgenlib is plink2's own reader: it decodes the genotype bits, we only parse the text tables
beside them. The blocks follow :mod:`phenoclip.io.vcf`'s contract (:class:`VariantBlock`), so a
PLINK fileset and the VCF it came from give the same store:

* REF/ALT as the files state them: ``.pvar`` REF and ALT columns; ``.bim`` column 6 (A2) as REF
  and column 5 (A1) as ALT, which is how ``plink2 --make-bed`` writes a VCF's alleles;
* a multi-allelic ``.pvar`` row is split into one variant per ALT, each counting its own ALT
  (pgenlib's ``allele_idx``), as the VCF reader splits it;
* missing calls (pgenlib's -9) are -1; haplotypes only from a ``.pgen`` that stores phase, and
  only when no heterozygous call lacks it (as for a VCF).

PLINK stores a haploid call as a homozygous diploid one (0 or 2): a male's chrX dosage read here
is 0/2 where the VCF store has 0/1.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from phenoclip.errors import InconsistentInputError, MalformedInputError, require_readable
from phenoclip.io.genotype_source import (GenotypeSource, Region, SkipCounts, VariantBlock, merge_regions, part_of,
                                          require_unique_ids, row_counts)

_MISSING = -9  # pgenlib's missing genotype / allele code


@dataclass
class VariantTable:
    """One row per site of a ``.pvar``/``.bim`` (before multi-allelic splitting)."""

    chrom: list[str]
    pos: np.ndarray          # int64
    id: list[str]
    ref: list[str]
    alts: list[list[str]]

    def __len__(self) -> int:
        return len(self.chrom)


def _open_text(path: str):
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"\x28\xb5\x2f\xfd":
        raise MalformedInputError("is zstd-compressed", path,
                                  "decompress it first (zstd -d), or rewrite the fileset with plink2 --make-pgen")
    return open(path, encoding="utf-8", errors="replace")


def read_bim(path: str) -> VariantTable:
    """``.bim``: CHROM ID CM POS A1 A2 (A1 = ALT, A2 = REF, as ``plink2 --make-bed`` writes them)."""
    chrom, pos, ids, ref, alts = [], [], [], [], []
    with _open_text(path) as fh:
        for n, line in enumerate(fh, start=1):
            f = line.split()
            if not f:
                continue
            if len(f) != 6:
                raise MalformedInputError(f"line {n} has {len(f)} columns, a .bim has 6 (CHROM ID CM POS A1 A2)", path)
            chrom.append(f[0])
            pos.append(_position(f[3], path, n))
            ids.append(f[1])
            ref.append(f[5])
            alts.append([f[4]])
    return VariantTable(chrom, np.asarray(pos, dtype=np.int64), ids, ref, alts)


def read_pvar(path: str) -> VariantTable:
    """``.pvar``: ``##`` meta lines, a ``#CHROM`` header naming the columns; without a header the
    columns are the ``.bim`` order (plink2 accepts both)."""
    chrom, pos, ids, ref, alts = [], [], [], [], []
    cols = None
    with _open_text(path) as fh:
        for n, line in enumerate(fh, start=1):
            if line.startswith("##"):
                continue
            if line.startswith("#"):
                names = line[1:].split()
                need = ("CHROM", "POS", "ID", "REF", "ALT")
                if any(c not in names for c in need):
                    raise MalformedInputError(f"header line lacks one of {', '.join(need)}", path)
                cols = tuple(names.index(c) for c in need)
                continue
            f = line.split()
            if not f:
                continue
            if cols is None:  # headerless: .bim column order
                cols = (0, 3, 1, 5, 4)
            if len(f) <= max(cols):
                raise MalformedInputError(f"line {n} has {len(f)} columns, fewer than the header names", path)
            c, p, i, r, a = (f[k] for k in cols)
            chrom.append(c)
            pos.append(_position(p, path, n))
            ids.append(i)
            ref.append(r)
            alts.append([] if a == "." else a.split(","))
    return VariantTable(chrom, np.asarray(pos, dtype=np.int64), ids, ref, alts)


def _position(text: str, path: str, line: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise MalformedInputError(f"line {line}: position '{text}' is not an integer", path) from None


def _text(error: Exception) -> str:
    """pgenlib's message, which it sometimes raises as bytes, as one line of text."""
    arg = error.args[0] if error.args else error
    text = arg.decode(errors="replace") if isinstance(arg, bytes) else str(arg)
    return " ".join(text.split())


def read_plink_samples(path: str) -> list[str]:
    """IIDs of a ``.fam`` (FID IID PAT MAT SEX PHENO) or ``.psam`` (header names the IID column)."""
    ids: list[str] = []
    iid_col = 1
    with _open_text(path) as fh:
        for n, line in enumerate(fh, start=1):
            f = line.split()
            if not f:
                continue
            if n == 1 and f[0].startswith("#"):
                names = [f[0][1:]] + f[1:]
                if "IID" not in names:
                    raise MalformedInputError("header line has no IID column", path)
                iid_col = names.index("IID")
                continue
            if len(f) <= iid_col:
                raise MalformedInputError(f"line {n} has no IID column", path)
            ids.append(f[iid_col])
    if not ids:
        raise MalformedInputError("no samples", path)
    require_unique_ids(ids, path, "", "make the IIDs unique (plink2 --double-id on import keeps FIDs in them)")
    return ids


class PlinkGenotypes(GenotypeSource):
    """A PLINK fileset opened for block-wise reading (see the module docstring).

    ``prefix`` is the path without extension; ``kind`` is ``bfile`` (.bed/.bim/.fam) or
    ``pfile`` (.pgen/.pvar/.psam).
    """

    def __init__(self, prefix: str | os.PathLike, kind: str):
        prefix = os.fspath(prefix)
        exts = (".bed", ".bim", ".fam") if kind == "bfile" else (".pgen", ".pvar", ".psam")
        geno, var, sam = (require_readable(prefix + e, f"--{kind} {e[1:]}") for e in exts)
        self.path = geno
        self.samples = read_plink_samples(sam)
        self.table = read_bim(var) if kind == "bfile" else read_pvar(var)
        n_alleles = np.fromiter((1 + len(a) for a in self.table.alts), dtype=np.uint64, count=len(self.table))
        # imported here: only PLINK users pay for pgenlib
        import pgenlib

        kwargs = {"raw_sample_ct": len(self.samples), "variant_ct": len(self.table)}
        if n_alleles.size and n_alleles.max() > 2:
            kwargs["allele_idx_offsets"] = np.concatenate([[0], np.cumsum(n_alleles)]).astype(np.uint64)
        try:
            self._reader = pgenlib.PgenReader(geno.encode(), **kwargs)
        except RuntimeError as e:
            raise MalformedInputError(f"pgenlib cannot open it ({_text(e)}); does it belong with "
                                      f"{os.path.basename(var)} and {os.path.basename(sam)}?", geno) from None
        if self._reader.get_variant_ct() != len(self.table) or self._reader.get_raw_sample_ct() != len(self.samples):
            raise InconsistentInputError(
                f"holds {self._reader.get_variant_ct()} variants x {self._reader.get_raw_sample_ct()} samples; "
                f"{os.path.basename(var)} lists {len(self.table)} and {os.path.basename(sam)} {len(self.samples)}",
                geno, "use the three files written together")
        self.phased = kind == "pfile" and bool(self._reader.hardcall_phase_present())

    def iter_blocks(self, regions: Sequence[Region] = (), samples: Sequence[str] | None = None,
                    block_size: int = 2048, want_ref_count: bool = False,
                    skipped: SkipCounts | None = None, part: tuple[int, int] | None = None
                    ) -> Iterator[VariantBlock]:
        """Decoded blocks in file order (regions select by position; the variant table is in memory)."""
        skipped = skipped if skipped is not None else SkipCounts()
        t = self.table
        if samples is not None:
            self._reader.change_sample_subset(self.sample_columns(samples).astype(np.uint32))
        n_samples = len(samples) if samples is not None else len(self.samples)
        sites = np.arange(len(t))
        if regions:
            chroms = np.asarray(t.chrom)
            keep = np.zeros(len(t), dtype=bool)
            for r in merge_regions(regions):
                keep |= (chroms == r.chrom) & (t.pos >= r.start) & (t.pos <= (r.end if r.end is not None else np.inf))
            sites = sites[keep]
        first, stop = part_of(sites.size, part)
        sites = sites[first:stop]
        # one output row per (site, ALT); sites without ALT ('.') are skipped as in a VCF
        rows_site, rows_allele = [], []
        for s in sites:
            k = len(t.alts[s])
            if k == 0:
                skipped.no_alt += 1
                continue
            rows_site.extend([s] * k)
            rows_allele.extend(range(1, k + 1))
        rows_site = np.asarray(rows_site, dtype=np.uint32)
        rows_allele = np.asarray(rows_allele, dtype=np.int64)
        phased_so_far = self.phased
        start = 0
        while start < rows_site.size:
            stop = min(rows_site.size, start + block_size)
            # never cut a multi-allelic site between blocks (its ALTs are adjacent rows)
            while stop < rows_site.size and rows_site[stop] == rows_site[stop - 1]:
                stop += 1
            blk = self._block(rows_site[start:stop], rows_allele[start:stop], n_samples, phased_so_far,
                              want_ref_count)
            phased_so_far = phased_so_far and blk.unphased_het == 0
            yield blk
            start = stop

    def _block(self, site: np.ndarray, allele: np.ndarray, n_samples: int, want_haplotypes: bool,
               want_ref_count: bool) -> VariantBlock:
        try:
            return self._decode_block(site, allele, n_samples, want_haplotypes, want_ref_count)
        except RuntimeError as e:  # pgenlib's read errors: a truncated or corrupt genotype file
            raise MalformedInputError(f"cannot read the genotypes of variants {int(site[0]) + 1}-{int(site[-1]) + 1} "
                                      f"({_text(e)}); truncated or corrupt?", self.path,
                                      "re-create it (plink2 --make-pgen / --make-bed) or check it with plink2") from None

    def _decode_block(self, site: np.ndarray, allele: np.ndarray, n_samples: int, want_haplotypes: bool,
                      want_ref_count: bool) -> VariantBlock:
        t = self.table
        n = site.size
        blk = VariantBlock()
        uniq = np.unique(site)
        blk.n_sites = int(uniq.size)
        blk.n_multiallelic = int(sum(1 for s in uniq if len(t.alts[s]) > 1))
        for s, k in zip(site.tolist(), allele.tolist()):
            blk.add(t.chrom[s], int(t.pos[s]), None if t.id[s] == "." else t.id[s], t.ref[s], t.alts[s][k - 1])
        if want_haplotypes:
            # one read gives both: the haplotypes, and the dosage as their sum (no second pass of
            # pgenlib over the same genotypes)
            alleles = np.empty((n, 2 * n_samples), dtype=np.int32)
            present = np.empty((n, n_samples), dtype=np.uint8)
            self._reader.read_alleles_and_phasepresent_list(np.ascontiguousarray(site), alleles, present)
            a0, a1 = alleles[:, 0::2], alleles[:, 1::2]
            k = allele[:, None]
            hap = np.empty((n, 2, n_samples), dtype=np.int8)
            np.equal(a0, k, out=hap[:, 0].view(bool))
            np.equal(a1, k, out=hap[:, 1].view(bool))
            dosage = hap[:, 0] + hap[:, 1]
            missing0, missing1 = a0 == _MISSING, a1 == _MISSING
            hap[:, 0][missing0] = -1
            hap[:, 1][missing1] = -1
            missing = missing0 | missing1
            dosage[missing] = -1
            blk.haplotypes = hap
            blk.unphased_het = int(np.count_nonzero((a0 != a1) & (a0 >= 0) & (a1 >= 0) & (present == 0)))
        else:
            dosage = np.empty((n, n_samples), dtype=np.int8)
            for k in np.unique(allele):
                rows = np.flatnonzero(allele == k)
                out = np.empty((rows.size, n_samples), dtype=np.int8)
                self._reader.read_list(np.ascontiguousarray(site[rows]), out, allele_idx=int(k))
                dosage[rows] = out
            missing = dosage == _MISSING
            dosage[missing] = -1
            blk.unphased_het = 0 if self.phased else int(np.count_nonzero(dosage == 1))
        blk.dosage = dosage
        blk.n_alleles = 2 * row_counts(~missing)
        if want_ref_count:
            refc = np.empty((n, n_samples), dtype=np.int8)
            self._reader.read_list(np.ascontiguousarray(site), refc, allele_idx=0)
            refc[refc == _MISSING] = -1
            blk.ref_count = refc
        return blk
