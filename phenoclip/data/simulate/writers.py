"""Writers for the outside formats of the simulated cohort, and the all-or-nothing output folder.

Everything is written byte-for-byte reproducibly: gzip headers carry no time stamp or name,
and no file records when it was made.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
from typing import Iterable, Iterator, Sequence

import numpy as np

from phenoclip.data.simulate.contigs import CHROMS
from phenoclip.errors import OutputError, require_writable_parent


@contextlib.contextmanager
def staged_folder(out_dir: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary folder beside ``out_dir`` that becomes ``out_dir`` on success.

    ``out_dir`` must not exist or be empty. A failure (or a kill) leaves no ``out_dir`` and the
    temporary ``.NAME.tmp-PID`` is removed on any exception.
    """
    out = os.path.abspath(os.fspath(out_dir))
    require_writable_parent(out)
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise OutputError("exists and is not a folder", out, "choose a new --out")
        if os.listdir(out):
            raise OutputError("output folder exists and is not empty", out, "choose a new --out or remove it")
    tmp = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.tmp-{os.getpid()}")
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.mkdir(tmp)
    try:
        yield tmp
        if os.path.isdir(out):
            os.rmdir(out)     # empty, checked above; fails loudly if someone wrote into it meanwhile
        os.rename(tmp, out)
    except OSError as e:
        # a full disk or a lost mount is the user's to fix, not a bug: one line, exit 6
        shutil.rmtree(tmp, ignore_errors=True)
        raise OutputError(f"could not write the cohort ({e.strerror or e})", e.filename or out) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)


def tsv_text(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    """Tab-separated text with a header line and ``\\n`` line ends."""
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    return "\n".join(lines) + "\n"


def write_tsv(path: str, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    write_text(path, tsv_text(header, rows))


def write_tsv_gz(path: str, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Gzipped TSV with ``mtime=0`` and no file name in the header (reproducible bytes)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as fh:
        fh.write(tsv_text(header, rows).encode("utf-8"))


def write_json(path: str, obj) -> None:
    write_text(path, json.dumps(obj, indent=1) + "\n")


_ALLELE = np.array([".", "0", "1", "2"])   # index = code + 1 (code -1 = missing)


def _gt_strings(calls: np.ndarray) -> np.ndarray:
    """``(N, 2, M)`` codes to GT strings ``(M, N)``: phased ``a|b``, or ``a`` when haploid."""
    first = _ALLELE[np.clip(calls[:, 0, :], -1, 2) + 1].T
    second = _ALLELE[np.clip(calls[:, 1, :], -1, 2) + 1].T
    diploid = (calls[:, 1, :] != -2).T
    return np.where(diploid, np.char.add(np.char.add(first, "|"), second), first)


def write_vcf(folder: str, table, samples: Sequence[str], rows: np.ndarray, contigs: dict[str, int]) -> str:
    """Write ``variants.vcf``, bgzip and tabix-index it; returns the ``.vcf.gz`` path.

    ``rows`` picks the patients (in order) that have variant data; only they get a column.
    """
    # imported here: pysam loads only when the VCF is written
    import pysam

    path = os.path.join(folder, "variants.vcf")
    gts = _gt_strings(table.calls[rows])
    header = [
        "##fileformat=VCFv4.2",
        "##fileDate=20240101",
        "##source=phenoclip simulate",
        "##reference=GRCh38",
        *(f"##contig=<ID={c},length={n},assembly=GRCh38>" for c, n in contigs.items()),
        '##FILTER=<ID=PASS,Description="All filters passed">',
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">',
        "\t".join(["#CHROM", "POS", "ID", "REF", "ALT", "QUAL", "FILTER", "INFO", "FORMAT", *samples]),
    ]
    with open(path, "w", encoding="ascii", newline="\n") as fh:
        fh.write("\n".join(header) + "\n")
        for m in range(len(table.pos)):
            fixed = f"{table.chrom[m]}\t{table.pos[m]}\t{table.id[m]}\t{table.ref[m]}\t{table.alt[m]}\t.\tPASS\t.\tGT\t"
            fh.write(fixed + "\t".join(gts[m]) + "\n")
    return pysam.tabix_index(path, preset="vcf", force=True)


def write_bed(path: str, genes) -> None:
    """BED4 of the genes (0-based start, end exclusive), sorted by contig then start."""
    order = sorted(genes, key=lambda g: (CHROMS.index(g.chrom), g.start, g.name))
    write_text(path, "".join(f"{g.chrom}\t{g.start}\t{g.end}\t{g.name}\n" for g in order))


def write_pgs(path: str, pgs_id: str, rows: list[tuple], trait: str) -> None:
    """A PGS Catalog scoring file (format 2.0); ``chr_name`` without the ``chr`` prefix, as in the
    Catalog's own files."""
    head = [
        "###PGS CATALOG SCORING FILE - see https://www.pgscatalog.org/downloads/#dl_ftp_scoring for additional information",
        "#format_version=2.0",
        "##POLYGENIC SCORE (PGS) INFORMATION",
        f"#pgs_id={pgs_id}",
        "#pgs_name=phenoclip_simulated_cardio",
        f"#trait_reported={trait}",
        "#trait_mapped=atrial fibrillation",
        "#trait_efo=EFO_0000275",
        "#weight_type=beta",
        "#genome_build=GRCh38",
        f"#variants_number={len(rows)}",
        "##SOURCE INFORMATION",
        "#pgp_id=PGP_SIM001",
        "#citation=simulated by phenoclip simulate (not a real score)",
        "#license=CC0",
    ]
    body = tsv_text(["rsID", "chr_name", "chr_position", "effect_allele", "other_allele", "effect_weight"], rows)
    write_text(path, "\n".join(head) + "\n" + body)
