"""Opening a VCF/BCF with cyvcf2, and what is checked before its body is read.

:func:`open_vcf` refuses, each with one line, a file that is not a VCF, a truncated gzip/BGZF
stream, a header without samples or without a GT field, and duplicate sample IDs (named from
the ``#CHROM`` line by :func:`header_samples`); :func:`has_index` says whether a region query
can use a tabix/CSI index. The records are read by :mod:`phenoclip.io.vcf`.
"""

from __future__ import annotations

import ctypes
import gzip
import os
from typing import Sequence

from phenoclip.errors import MalformedInputError, require_readable
from phenoclip.io.genotype_source import require_unique_ids


def _silence_htslib() -> None:
    """htslib prints its own ``[E::...]`` lines on stderr; we report errors as one line instead."""
    try:
        # imported here: only VCF/BCF users pay for cyvcf2
        from cyvcf2 import cyvcf2 as _ext

        ctypes.CDLL(_ext.__file__).hts_set_log_level(0)
    except (OSError, AttributeError):  # another cyvcf2 build: the extra lines are only noise
        pass


def header_samples(path: str) -> list[str] | None:
    """Sample names from a text VCF's ``#CHROM`` line (None for BCF), to name duplicates clearly."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    opener = gzip.open if magic[:2] == b"\x1f\x8b" else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("#CHROM"):
                    return line.rstrip("\r\n").split("\t")[9:]
                if not line.startswith("##"):
                    return None
    except (OSError, EOFError):
        return None
    return None


def _gzip_is_broken(path: str) -> bool:
    """True for a gzip/BGZF file that does not decompress to its end (only checked on the error path)."""
    with open(path, "rb") as fh:
        if fh.read(2) != b"\x1f\x8b":
            return False
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except (OSError, EOFError):
        return True
    return False


def open_vcf(path: str | os.PathLike, samples: Sequence[str] | None = None, threads: int | None = None):
    """Open a VCF/BCF with cyvcf2, checking what phenoclip needs of it.

    Raises one-line errors for a file that is not a VCF, a header without samples or without a
    GT field, and duplicate sample IDs. ``samples`` subsets (and keeps the VCF's order).
    """
    # imported here: only VCF/BCF users pay for cyvcf2
    from cyvcf2 import VCF

    p = require_readable(path, "VCF")
    _silence_htslib()
    names = header_samples(p)
    if names:
        require_unique_ids(names, p, " in the header", "rename it, e.g. with bcftools reheader")
    try:
        vcf = VCF(p, gts012=False, lazy=True, threads=threads)
    except OSError:
        raise MalformedInputError("not a VCF or BCF file", p, "give a .vcf, .vcf.gz or .bcf") from None
    except Exception as e:  # cyvcf2 raises bare Exception for header errors
        if _gzip_is_broken(p):
            raise MalformedInputError("truncated or corrupt gzip/BGZF stream", p,
                                      "re-create or re-download the file") from None
        raise MalformedInputError(f"cannot parse the VCF header ({e})", p) from None
    if not vcf.samples:
        raise MalformedInputError("VCF has no samples (no genotype columns)", p,
                                  "phenoclip needs per-sample GT calls")
    if not vcf.contains("GT"):
        raise MalformedInputError("VCF header declares no GT (genotype) FORMAT field", p)
    if samples is not None:
        vcf.set_samples(list(samples))
    return vcf


def has_index(path: str) -> bool:
    """True when a tabix/CSI index sits beside the file (``.tbi`` or ``.csi``)."""
    return os.path.exists(path + ".tbi") or os.path.exists(path + ".csi")
