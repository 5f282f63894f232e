"""Genotype calls of a text VCF whose FORMAT is ``GT`` alone, parsed many records at a time.

Why: htslib turns every text record into its binary form sample by sample before cyvcf2 hands
it over (about 45 µs a record at 1,000 samples, whatever we then read), which is most of the
time of a VCF -> store conversion. A GT-only record whose calls are all ``a|b`` or ``a/b`` with
one-digit alleles (or ``.``) is fixed-width text: a block of such records is one 2-D byte
array and numpy reads the alleles of all of them at once. Any other record (a haploid or
mixed-ploidy call, an allele index of 10 or more, a malformed call) is read by
:func:`parse_gt_fields`, field by field, with htslib's meaning.

Each record comes out as cyvcf2's ``genotype.array()`` would give it: int16 (samples x
ploidy + 1), alleles then the phase flag, -1 for a missing allele and -2 for the absent second
allele of a haploid call in a record that also has diploid ones. :func:`phenoclip.io.vcf.iter_blocks`
decodes them the same way whichever reader produced them; tests compare the two readers'
stores on the peer-suite files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from phenoclip.errors import MalformedInputError

_BATCH_BYTES = 1 << 25  # text of the records parsed together (1,024 records at 8,000 samples)
_TAB, _PIPE, _SLASH, _DOT, _ZERO, _NINE = (ord(c) for c in "\t|/.09")
_SEP = re.compile(r"[/|]")


def gt_only(path: str) -> bool:
    """True for a text VCF (plain or BGZF) whose first record's FORMAT is exactly ``GT``."""
    # imported here: only VCF users pay for pysam
    import pysam

    try:
        with pysam.BGZFile(path, "rb") as fh:
            first = fh.readline()
            if not first.startswith(b"##fileformat=VCF"):
                return False  # BCF, or not a VCF: cyvcf2 reads (or refuses) it
            for line in fh:
                if not line.startswith(b"#"):
                    fields = line.split(b"\t", 9)
                    return len(fields) == 10 and fields[8] == b"GT"
    except (OSError, ValueError):
        return False
    return False


def parse_gt_fields(fields: Sequence[str], fmt: str) -> np.ndarray | None:
    """GT of each sample column of one record, as cyvcf2's ``genotype.array()``; None without GT."""
    keys = fmt.split(":")
    if "GT" not in keys:
        return None
    at = keys.index("GT")
    calls = []
    for field in fields:
        sub = field.split(":")
        gt = sub[at] if at < len(sub) else "."
        alleles = _SEP.split(gt)
        phased = 1 if "|" in gt else 0
        calls.append(([-1 if a in (".", "") else int(a) for a in alleles], phased))
    ploidy = max(len(a) for a, _ in calls)
    out = np.full((len(calls), ploidy + 1), -2, dtype=np.int16)
    for i, (alleles, phased) in enumerate(calls):
        out[i, :len(alleles)] = alleles
        out[i, ploidy] = phased
    return out


def iter_text_records(path: str, n_samples: int, columns: np.ndarray | None):
    """Data records in file order: a :class:`TextBatch` per run of fixed-width records, and
    ``(chrom, pos, id, ref, alts, gt)`` for any other record (``gt`` None without GT).

    ``columns``: the sample columns to keep (sorted), or None for all.
    """
    # imported here: only text-VCF reading pays for isal
    from isal.isal_zlib import error as InflateError

    width = 4 * n_samples - 1  # 'a|b' per sample, tab-separated
    per_batch = max(1, min(1024, _BATCH_BYTES // (width + 1)))
    batch: list[list[bytes]] = []
    line_no = 0
    try:
        with _open_records(path) as fh:
            for line in fh:
                line_no += 1
                if line[:1] == b"#":
                    continue
                fields = line.rstrip(b"\r\n").split(b"\t", 9)
                if len(fields) < 10:
                    raise MalformedInputError(f"line {line_no} has {len(fields)} columns, fewer than 10", path,
                                              "check it with bcftools view")
                batch.append(fields)
                if len(batch) == per_batch:
                    yield from _parse_batch(batch, width, n_samples, columns, path)
                    batch = []
    except (OSError, EOFError, InflateError):
        raise MalformedInputError(f"truncated or corrupt gzip/BGZF stream (after line {line_no})", path,
                                  "re-create or re-download the file") from None
    if batch:
        yield from _parse_batch(batch, width, n_samples, columns, path)


def _open_records(path: str):
    """The file's lines: BGZF (or any gzip) inflated by ISA-L on a reader thread, so that this
    thread parses while the next megabytes are inflated (htslib's reading, one line per call,
    was a third of this thread's time); a plain text VCF as it is."""
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    if not gzipped:
        return open(path, "rb")
    # imported here: only gzipped text VCFs pay for isal
    from isal import igzip_threaded

    return igzip_threaded.open(path, "rb", threads=1)


@dataclass
class TextBatch:
    """Consecutive fixed-width records, parsed together: ``gt`` is (3 x records x samples) int16,
    three planes (first allele, second allele, phase flag), already cut to the kept sample columns."""

    chrom: list[str]
    pos: list[int]
    id: list[str | None]
    ref: list[str]
    alts: list[list[str]]
    gt: np.ndarray

    def __len__(self) -> int:
        return len(self.pos)


def _record(f: list[bytes], path: str) -> tuple[str, int, str | None, str, list[str]]:
    chrom, pos, vid, ref, alt = (x.decode() for x in f[:5])
    try:
        pos = int(pos)
    except ValueError:
        raise MalformedInputError(f"record on {chrom} has position '{pos}'", path) from None
    return chrom, pos, (None if vid == "." else vid), ref, ([] if alt == "." else alt.split(","))


_BAD = -100  # a table entry that is not part of a call


def _columns(rows: list[list[bytes]], path: str) -> tuple[list, list, list, list, list]:
    """CHROM, POS, ID, REF and ALT columns of many records: :func:`_record` column by column."""
    try:
        pos = [int(f[1]) for f in rows]
    except ValueError:  # the record-by-record reading raises for the first bad position, naming it
        pos = [_record(f, path)[1] for f in rows]
    return ([f[0].decode() for f in rows], pos, [None if f[2] == b"." else f[2].decode() for f in rows],
            [f[3].decode() for f in rows], [[] if f[4] == b"." else f[4].decode().split(",") for f in rows])


def _call_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lookup tables over the two 16-bit halves of a fixed-width call ``a|b<TAB>``.

    A call's first half (bytes ``a`` and the separator, read little-endian) gives the first
    allele and the phase flag; its second half (``b`` and the tab) the second allele. An allele
    is 0-9 or -1 (``.``); :data:`_BAD` marks a half that is not a call, so a record whose
    smallest allele is below -1 goes to the field-by-field parser.
    """
    half = np.arange(1 << 16)
    first, second = half & 0xFF, half >> 8
    allele = np.full(256, _BAD, dtype=np.int16)
    allele[_ZERO:_NINE + 1] = np.arange(10)
    allele[_DOT] = -1
    a = np.where((second == _PIPE) | (second == _SLASH), allele[first], _BAD).astype(np.int16)
    b = np.where(second == _TAB, allele[first], _BAD).astype(np.int16)
    return a, (second == _PIPE).astype(np.int16), b


_FIRST_ALLELE, _PHASE, _SECOND_ALLELE = _call_tables()


def _parse_batch(batch: list[list[bytes]], width: int, n_samples: int, columns: np.ndarray | None, path: str):
    """Runs of fixed-width records as :class:`TextBatch`; any other record as one tuple, in file order."""
    fast = [i for i, f in enumerate(batch) if f[8] == b"GT" and len(f[9]) == width]
    ok = np.zeros(len(batch), dtype=bool)
    gt = None
    row = np.full(len(batch), -1)
    if fast:
        # each record's calls and a closing tab: 4 bytes a call, read as two 16-bit table indices
        # (three table lookups instead of a dozen strided comparisons over the bytes)
        text = np.frombuffer(b"\t".join([*(batch[i][9] for i in fast), b""]), dtype="<u2")
        halves = text.reshape(len(fast), 2 * n_samples)
        first, second = halves[:, 0::2], halves[:, 1::2]
        # three planes (first allele, second allele, phase), not an interleaved (records,
        # samples, 3) array: the lookups write straight into them, and the decoder compares
        # contiguous rows. mode="clip": every 16-bit index is in the tables, and the bounds
        # check doubles the time (np.take also buffers `out` under the default mode)
        if columns is None:
            gt = np.empty((3, len(fast), n_samples), dtype=np.int16)
            a0 = np.take(_FIRST_ALLELE, first, mode="clip", out=gt[0])
            a1 = np.take(_SECOND_ALLELE, second, mode="clip", out=gt[1])
            good = (a0.min(axis=1) > _BAD) & (a1.min(axis=1) > _BAD)
            np.take(_PHASE, first, mode="clip", out=gt[2])
        else:
            a0 = np.take(_FIRST_ALLELE, first, mode="clip")
            a1 = np.take(_SECOND_ALLELE, second, mode="clip")
            good = (a0.min(axis=1) > _BAD) & (a1.min(axis=1) > _BAD)
            first = first[:, columns]
            gt = np.stack([a0[:, columns], a1[:, columns], np.take(_PHASE, first, mode="clip")])
        idx = np.asarray(fast)
        ok[idx[good]] = True
        row[idx] = np.arange(len(fast))
    i = 0
    while i < len(batch):
        if ok[i]:
            j = i
            while j < len(batch) and ok[j]:
                j += 1
            # consecutive fixed-width records have consecutive rows: a view, not a copy
            yield TextBatch(*_columns(batch[i:j], path), gt[:, row[i]:row[i] + j - i])
            i = j
            continue
        f = batch[i]
        samples = f[9].decode().split("\t")
        if len(samples) != n_samples:
            raise MalformedInputError(f"record {f[0].decode()}:{f[1].decode()} has {len(samples)} sample "
                                      f"columns, the header names {n_samples}", path, "check it with bcftools view")
        try:
            g = parse_gt_fields(samples, f[8].decode())
        except ValueError:
            raise MalformedInputError(f"record {f[0].decode()}:{f[1].decode()} has a genotype that is not "
                                      "ALLELE[/|]ALLELE with integer alleles or '.'", path,
                                      "check it with bcftools view") from None
        if g is not None and columns is not None:
            g = g[columns]
        yield (*_record(f, path), g)
        i += 1
