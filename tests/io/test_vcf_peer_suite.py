"""A peer suite for the VCF reader: the kinds of records htslib's and bcftools' own test files
exercise (written here, not copied), each read as VCF, bgzipped VCF and BCF and compared with
``bcftools norm -m-any | bcftools query``, the reference every dosage must equal."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from conftest import bcftools_dosage, needs
from phenoclip.preprocess.variants import VariantSettings, convert_vcf
from phenoclip.store_read import open_store

META = ("##fileformat=VCFv4.2\n##contig=<ID=1,length=1000000>\n##contig=<ID=2,length=1000000>\n"
        "##contig=<ID=X,length=1000000>\n"
        '##INFO=<ID=END,Number=1,Type=Integer,Description="End">\n'
        '##INFO=<ID=DP,Number=1,Type=Integer,Description="Depth">\n'
        '##ALT=<ID=DEL,Description="Deletion">\n##ALT=<ID=*,Description="Any other allele">\n'
        '##ALT=<ID=NON_REF,Description="Any other allele">\n'
        '##FILTER=<ID=LowQual,Description="Low quality">\n'
        '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n'
        '##FORMAT=<ID=DP,Number=1,Type=Integer,Description="Depth">\n'
        '##FORMAT=<ID=GQ,Number=1,Type=Integer,Description="Quality">\n'
        '##FORMAT=<ID=AD,Number=R,Type=Integer,Description="Allele depths">\n'
        '##FORMAT=<ID=PL,Number=G,Type=Integer,Description="Likelihoods">\n')
SAMPLES = ["s1", "s2", "s3", "s4"]


def _vcf(records: list[str]) -> str:
    return META + "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t" + "\t".join(SAMPLES) + "\n" + \
        "".join(r.replace(" ", "\t") + "\n" for r in records)


# name -> records (fields separated by single spaces here for legibility)
CASES = {
    "biallelic_unphased": ["1 100 rs1 A G 50 PASS . GT 0/0 0/1 1/1 ./.",
                           "1 200 rs2 C T 50 PASS . GT 1/0 0/0 0/1 1/1"],
    "biallelic_phased": ["1 100 rs1 A G 50 PASS . GT 0|0 0|1 1|0 1|1",
                         "1 150 rs2 G A 50 PASS . GT 1|1 0|0 1|0 0|1"],
    "mixed_phase_separators": ["1 100 . A G . PASS . GT 0|1 0/1 1/1 0|0"],
    "multiallelic_3_alts": ["1 300 . A C,G,T . PASS . GT 0/1 1/2 2/3 3/3",
                            "1 301 . G A,C . PASS . GT 2/2 0/2 1/1 ./2"],
    "multiallelic_5_alts": ["2 10 . A C,G,T,AT,ATT . PASS . GT 4/5 0/5 3/1 2/2"],
    "half_calls": ["1 400 . A G . PASS . GT ./1 0/. ./. 1/."],
    "all_missing": ["1 500 . C T . PASS . GT ./. ./. ./. ./."],
    "haploid_chrX": ["X 1000 . A G . PASS . GT 0 1 . 1", "X 2000 . C T . PASS . GT 1 1 0 0"],
    "mixed_ploidy_in_a_record": ["X 3000 . A G . PASS . GT 0/1 1 0 1/1"],
    "symbolic_alts": ["1 600 sv1 A <DEL> . PASS END=700 GT 0/1 0/0 1/1 0/0",
                      "1 800 . G A,<*> . PASS . GT 0/1 1/2 2/2 0/0"],
    "gvcf_blocks_and_sites": ["1 900 . A <NON_REF> . PASS END=950 GT:DP:GQ 0/0:30:99 0/0:25:80 0/0:31:90 0/0:20:60",
                              "1 960 . C T,<NON_REF> . PASS . GT:AD:DP:GQ:PL 0/1:5,5,0:10:50:50,0,50,60,70,80 "
                              "0/0:9,0,0:9:30:0,30,300,30,300,300 1/1:0,8,0:8:24:300,24,0,300,30,300 "
                              "0/0:7,0,0:7:21:0,21,210,21,210,210"],
    "spanning_deletion": ["1 1000 . ACGT A . PASS . GT 0/1 0/0 1/1 0/1",
                          "1 1002 . G T,* . PASS . GT 1/2 0/2 2/2 0/1"],
    "long_indels": ["2 500 . ACGTACGTACGTACGTACGTACGTACGT A . PASS . GT 0/1 1/1 0/0 ./1",
                    "2 600 . T TGGGGGGGGGGGGGGGGGGGGGGGGG . PASS . GT 1/1 0/1 0/0 0/0"],
    "ref_n_and_lowercase": ["1 1100 . N A . PASS . GT 0/1 0/0 1/1 0/0",
                            "1 1200 . a g . PASS . GT 0/1 1/1 0/0 0/0"],
    "same_position_twice": ["1 1300 . A G . PASS . GT 0/1 0/0 1/1 0/0",
                            "1 1300 . A AT . PASS . GT 0/0 1/1 0/1 0/0"],
    "filtered_and_ids": ["1 1400 rs9;rs10 C A 3 LowQual DP=4 GT 0/1 0/0 0/0 1/1",
                         "1 1500 . G C . . . GT 1/1 0/1 0/0 0/0"],
    "extra_format_fields": ["1 1600 . A G 99 PASS DP=40 GT:AD:DP:GQ:PL 0/1:5,5:10:40:40,0,40 0/0:9,0:9:27:0,27,270 "
                            "1/1:0,8:8:24:240,24,0 ./.:.:.:.:."],
    "missing_sample_columns": ["1 1700 . A T . PASS . GT:DP . 0/1:3 . 1/1:9"],
    "no_gt_record_among_others": ["1 1800 . A G . PASS . GT 0/1 0/0 1/1 0/0",
                                  "1 1850 . C T . PASS . PL 0,10,100 10,0,100 100,10,0 0,30,300",
                                  "1 1900 . G A . PASS . GT 1/1 0/1 0/0 0/0"],
    "monomorphic_sites_among_others": ["1 2000 . A . . PASS . GT 0/0 0/0 0/0 0/0",
                                       "1 2100 . C G . PASS . GT 0/1 0/0 0/0 1/1",
                                       "1 2200 . T . . PASS . GT 0/0 ./. 0/0 0/0"],
    "two_contigs": ["1 2300 . A G . PASS . GT 0/1 0/0 1/1 0/0", "2 10 . C T . PASS . GT 1/1 0/1 0/0 0/0",
                    "2 20 . G A,T . PASS . GT 0/2 1/2 0/0 2/2"],
}


def _forms(tmp_path, name: str, text: str) -> list:
    vcf = tmp_path / f"{name}.vcf"
    vcf.write_text(text)
    gz, bcf = tmp_path / f"{name}.vcf.gz", tmp_path / f"{name}.bcf"
    subprocess.run(["bcftools", "view", "-Oz", "-o", str(gz), str(vcf)], check=True, capture_output=True)
    subprocess.run(["bcftools", "view", "-Ob", "-o", str(bcf), str(vcf)], check=True, capture_output=True)
    return [vcf, gz, bcf]


@needs("bcftools")
@pytest.mark.parametrize("name", sorted(CASES))
def test_every_form_reads_as_bcftools_reads_it(tmp_path, name):
    text = _vcf(CASES[name])
    forms = _forms(tmp_path, name, text)
    keys, expected = bcftools_dosage(forms[0])
    # bcftools keeps ALT '.' records; phenoclip skips them (no ALT allele to count), and says so
    keep = [i for i, k in enumerate(keys) if k[2] != "."]
    keys, expected = [keys[i] for i in keep], expected[:, keep]
    for path in forms:
        out = tmp_path / f"{path.name}.h5"
        convert_vcf(path, out, VariantSettings())
        with open_store(out, expect="genotypes") as s:
            ours = list(zip(s.strings("variants/chrom"), s["variants/pos"][:].tolist(), s.strings("variants/alt")))
            assert [(c, p, a.upper()) for c, p, a in ours] == [(c, p, a.upper()) for c, p, a in keys], path.name
            np.testing.assert_array_equal(s["dosage"][:], expected, err_msg=path.name)
            assert s.samples == SAMPLES


@needs("bcftools")
@pytest.mark.parametrize("name", sorted(CASES))
def test_the_text_reader_and_htslib_give_the_same_store(tmp_path, name, monkeypatch):
    """The GT-only text fast path (phenoclip.io.vcf_text), forced on every case, against htslib's reading."""
    import h5py

    import phenoclip.io.vcf as vcf_module

    gz = _forms(tmp_path, name, _vcf(CASES[name]))[1]
    stores = {}
    for reader, use_text in (("text", True), ("htslib", False)):
        monkeypatch.setattr(vcf_module, "gt_only", lambda path, use=use_text: use)
        stores[reader] = tmp_path / f"{reader}.h5"
        convert_vcf(gz, stores[reader], VariantSettings(keep=None))
    with h5py.File(stores["text"], "r") as a, h5py.File(stores["htslib"], "r") as b:
        names: list[str] = []
        b.visititems(lambda k, o: names.append(k) if isinstance(o, h5py.Dataset) else None)
        assert names and set(names) == {k for k in a if not isinstance(a[k], h5py.Group)} | {
            f"variants/{k}" for k in a["variants"]}
        for k in names:
            assert np.array_equal(a[k][()], b[k][()]), k
        for k in ("phased", "records_without_alt", "records_without_gt", "sites_read", "multiallelic_split"):
            assert a.attrs[k] == b.attrs[k], k


@pytest.mark.parametrize("block_size", [7, 2048])
def test_the_text_reader_equals_htslib_on_the_sample_vcf_with_samples_regions_and_small_blocks(
        tmp_path, monkeypatch, block_size):
    """2,000 records: multi-allelic sites across block boundaries, haploid chrX, half-calls, a sample
    subset and regions read by streaming (the copy has no index)."""
    import shutil

    import h5py

    import phenoclip.io.vcf as vcf_module
    from conftest import SAMPLE

    vcf = tmp_path / "v.vcf.gz"
    shutil.copy(SAMPLE / "variants.vcf.gz", vcf)
    keep = tmp_path / "keep.txt"
    keep.write_text("P0100\nP0003\nP0051\nP0200\nP0007\n")
    opts = VariantSettings(keep=keep, regions=["chr2", "chrX:1-60000000", "chr1:3000000-"], block_size=block_size,
                          pgs_files=[SAMPLE / "pgs" / "PGS_SIM001.txt"])
    for reader, use_text in (("text", True), ("htslib", False)):
        monkeypatch.setattr(vcf_module, "gt_only", lambda path, use=use_text: use)
        convert_vcf(vcf, tmp_path / f"{reader}.h5", opts)
    with h5py.File(tmp_path / "text.h5", "r") as a, h5py.File(tmp_path / "htslib.h5", "r") as b:
        names: list[str] = []
        b.visititems(lambda k, o: names.append(k) if isinstance(o, h5py.Dataset) else None)
        assert "haplotypes" in names and b["dosage"].shape[0] == 4 and b["dosage"].shape[1] > 500
        for k in names:
            assert np.array_equal(a[k][()], b[k][()]), k
        for k in ("multiallelic_split", "sites_read", "phased"):
            assert a.attrs[k] == b.attrs[k], k
