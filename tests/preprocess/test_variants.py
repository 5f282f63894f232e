"""preprocess variants: exact decoding, agreement with bcftools, filters, PGS/burden, bad input."""

import gzip
import subprocess

import numpy as np
import pysam
import pytest

from conftest import KNOWN_DOSAGE, bcftools_dosage, error_lines, needs, run_cli
from phenoclip.preprocess.variants import VariantSettings, convert_vcf
from phenoclip.store_read import open_store

HEADER = ("##fileformat=VCFv4.2\n##contig=<ID=chr1,length=10000000>\n##contig=<ID=chr2,length=10000000>\n"
          "##contig=<ID=chrX,length=10000000>\n"
          '##FORMAT=<ID=GT,Number=1,Type=String,Description="Genotype">\n')


def random_vcf(path, n_samples=40, n_sites=300, seed=0, phased=True):
    """A VCF with missing calls, half-calls, multi-allelic sites and a haploid chrX stretch."""
    rng = np.random.default_rng(seed)
    sep = "|" if phased else "/"
    lines = [HEADER, "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\t"
             + "\t".join(f"S{i:03d}" for i in range(n_samples)) + "\n"]
    males = rng.random(n_samples) < 0.5
    for v in range(n_sites):
        chrom = "chr1" if v < n_sites * 0.45 else ("chr2" if v < n_sites * 0.9 else "chrX")
        pos = 1000 + 137 * v
        n_alt = 2 if rng.random() < 0.08 else 1
        alts = ["C", "T"][:n_alt]
        freqs = rng.dirichlet(np.ones(n_alt + 1) * 2)
        gts = []
        for s in range(n_samples):
            a, b = rng.choice(n_alt + 1, size=2, p=freqs)
            r = rng.random()
            if chrom == "chrX" and males[s]:
                gts.append("." if r < 0.03 else str(a))
            elif r < 0.02:
                gts.append(f".{sep}.")
            elif r < 0.03:
                gts.append(f"{a}{sep}.")
            else:
                gts.append(f"{a}{sep}{b}")
        lines.append(f"{chrom}\t{pos}\trs{v}\tA\t{','.join(alts)}\t.\tPASS\t.\tGT\t" + "\t".join(gts) + "\n")
    path.write_text("".join(lines))
    return path


def convert(vcf, out, **kw):
    convert_vcf(vcf, out, VariantSettings(**kw))
    return open_store(out, expect="genotypes")


def test_known_vcf_decoded_exactly(known_vcf, tmp_path):
    with convert(known_vcf, tmp_path / "g.h5") as s:
        np.testing.assert_array_equal(s["dosage"][:], np.array(KNOWN_DOSAGE, dtype=np.int8))
        assert s["dosage"].dtype == np.int8
        assert s.strings("variants/id") == ["rs1", "rs2", "rs2", "rs4", "rs3"]
        assert s.strings("variants/alt") == ["G", "A", "T", "C", "T"]
        assert s.strings("variants/chrom") == ["chr1", "chr1", "chr1", "chr1", "chrX"]
        np.testing.assert_array_equal(s["variants/pos"][:], [10, 20, 20, 500, 30])
        assert bool(s.attrs["phased"]) and int(s.attrs["multiallelic_split"]) == 1
        haps = s["haplotypes"][:]
        assert haps.shape == (4, 2, 5)
        np.testing.assert_array_equal(haps[0, :, 0], [0, 1])     # s1 rs1 0|1
        np.testing.assert_array_equal(haps[1, :, 2], [0, 1])     # s2 rs2 1|2 -> T on 2nd haplotype
        np.testing.assert_array_equal(haps[3, :, 3], [0, 1])     # s4 rs4 0|1
        np.testing.assert_array_equal(haps[1, :, 4], [1, -1])    # s2 chrX haploid '1'
        # ALT frequency counts called alleles only (haploid calls one allele)
        np.testing.assert_allclose(s["variants/alt_freq"][:], [3 / 4, 2 / 8, 3 / 8, 2 / 8, 2 / 4])


@needs("bcftools")
@pytest.mark.parametrize("phased", [True, False])
def test_matches_bcftools_decoding(tmp_path, phased):
    vcf = random_vcf(tmp_path / "r.vcf", phased=phased)
    keys, expected = bcftools_dosage(vcf)
    with convert(vcf, tmp_path / "g.h5") as s:
        got = s["dosage"][:]
        ours = list(zip(s.strings("variants/chrom"), s["variants/pos"][:].tolist(), s.strings("variants/alt")))
        assert ours == keys
        np.testing.assert_array_equal(got, expected)
        assert ("haplotypes" in s) == phased
        if phased:  # haplotypes add up to the dosage wherever the call is complete
            h = s["haplotypes"][:]
            complete = (h >= 0).all(axis=1) & (got >= 0)
            np.testing.assert_array_equal(h.sum(axis=1)[complete], got[complete])


def test_regions_with_and_without_index(tmp_path):
    vcf = random_vcf(tmp_path / "r.vcf")
    indexed = pysam.tabix_index(str(vcf), preset="vcf", keep_original=True)
    regions = ["chr2:20000-30000", "chr1:1000-2000", "chr2:25000-26000"]  # overlapping pair merges
    with convert(indexed, tmp_path / "a.h5", regions=regions) as a, \
            convert(vcf, tmp_path / "b.h5", regions=regions) as b, \
            convert(vcf, tmp_path / "all.h5") as full:
        pos_all = full["variants/pos"][:]
        chrom_all = np.array(full.strings("variants/chrom"))
        want = ((chrom_all == "chr1") & (pos_all >= 1000) & (pos_all <= 2000)) | \
               ((chrom_all == "chr2") & (pos_all >= 20000) & (pos_all <= 30000))
        assert want.sum() > 10
        for s in (a, b):
            got = sorted(zip(s.strings("variants/chrom"), s["variants/pos"][:].tolist(), s.strings("variants/alt")))
            exp = sorted(zip(chrom_all[want].tolist(), pos_all[want].tolist(),
                             np.array(full.strings("variants/alt"))[want].tolist()))
            assert got == exp
        np.testing.assert_array_equal(np.sort(a["dosage"][:], axis=1), np.sort(full["dosage"][:][:, want], axis=1))


def test_keep_remove_and_filters(tmp_path):
    vcf = random_vcf(tmp_path / "r.vcf", n_samples=30)
    (tmp_path / "keep.txt").write_text("FAM S003\nFAM S001\nFAM S010\nFAM S999\n")
    (tmp_path / "remove.txt").write_text("S010\n")
    with convert(vcf, tmp_path / "all.h5") as full, \
            convert(vcf, tmp_path / "k.h5", keep=tmp_path / "keep.txt", remove=tmp_path / "remove.txt") as k:
        assert k.samples == ["S001", "S003"]  # VCF order, S999 absent, S010 removed
        np.testing.assert_array_equal(k["dosage"][:], full["dosage"][:][[1, 3]])
        dos = full["dosage"][:]
        freq = full["variants/alt_freq"][:]
        miss = (dos < 0).mean(axis=0)
    with convert(vcf, tmp_path / "f.h5", maf=0.1, max_missing=0.02) as f:
        expect = (np.minimum(freq, 1 - freq) >= 0.1) & (miss <= 0.02)
        assert f["dosage"].shape[1] == int(expect.sum())
        np.testing.assert_array_equal(f["dosage"][:], dos[:, expect])
    with convert(vcf, tmp_path / "e.h5", every_kth=5) as e:
        np.testing.assert_array_equal(e["dosage"][:], dos[:, ::5])


def test_pgs_and_burden_known_values(known_vcf, tmp_path):
    pgs = tmp_path / "PGS_T.txt"
    pgs.write_text("#pgs_id=PGS_T\n#genome_build=GRCh38\n"
                   "rsID\tchr_name\tchr_position\teffect_allele\tother_allele\teffect_weight\n"
                   "rs1\t1\t10\tG\tA\t0.5\n"       # ALT is the effect allele
                   "rs4\tchr1\t500\tG\tC\t2.0\n"    # REF is the effect allele
                   "rsX\t1\t999\tT\tC\t9.0\n")      # not in the VCF
    bed = tmp_path / "genes.bed"
    bed.write_text("chr1\t0\t15\tGENE_A\nchr1\t15\t600\tGENE_B\nchr2\t0\t100\tGENE_C\n")
    with convert(known_vcf, tmp_path / "g.h5", pgs_files=[pgs], genes_file=bed, burden_maf=0.4) as s:
        # rs1 dosage [1,2,-1,-1] -> mean of called 1.5 imputed; rs4 REF copies [1,2,2,1]
        expected = 0.5 * np.array([1, 2, 1.5, 1.5]) + 2.0 * np.array([1, 2, 2, 1])
        np.testing.assert_allclose(s["pgs"][:, 0], expected, rtol=1e-6)
        assert s.strings("pgs_names") == ["PGS_T"]
        assert list(s["pgs"].attrs["variants_matched"]) == [2]
        # rare (ALT freq < 0.4) variants: rs2/A (0.25), rs2/T (0.375) at pos 20 and rs4 (0.25) at 500 -> GENE_B
        assert s.strings("burden_genes") == ["GENE_A", "GENE_B", "GENE_C"]
        np.testing.assert_array_equal(s["burden"][:], [[0, 2, 0], [0, 2, 0], [0, 2, 0], [0, 1, 0]])


@needs("plink2")
def test_pgs_scores_a_multiallelic_site_once_as_plink2_does(tmp_path):
    """A -> C,T with effect allele A and no other_allele: both split rows have REF A, and the
    site counts once (A/A, A/C, C/T -> 2, 1, 0), as ``plink2 --score`` counts it."""
    vcf = tmp_path / "m.vcf"
    vcf.write_text(HEADER + "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\tS1\tS2\tS3\n"
                   "chr1\t100\trs1\tA\tC,T\t.\tPASS\t.\tGT\t0/0\t0/1\t1/2\n"
                   "chr1\t200\trs2\tG\tA\t.\tPASS\t.\tGT\t0/1\t1/1\t0/0\n"
                   "chr1\t300\trs3\tC\tG,T\t.\tPASS\t.\tGT\t1/2\t2/2\t0/1\n")
    pgs = tmp_path / "PGS_M.txt"
    pgs.write_text("#pgs_id=PGS_M\nrsID\tchr_name\tchr_position\teffect_allele\teffect_weight\n"
                   "rs1\t1\t100\tA\t1\n"     # REF of a multi-allelic site: once, not once per ALT
                   "rs2\t1\t200\tG\t0.5\n"
                   "rs3\t1\t300\tT\t0.25\n")  # one ALT of a multi-allelic site: its own split row
    with convert(vcf, tmp_path / "g.h5", pgs_files=[pgs]) as s:
        ours = s["pgs"][:, 0]
        assert list(s["pgs"].attrs["variants_matched"]) == [3]
    np.testing.assert_allclose(ours, [2 + 0.5 + 0.25, 1 + 0 + 0.5, 0 + 1 + 0], rtol=1e-6)
    score = tmp_path / "score.txt"
    score.write_text("rs1\tA\t1\nrs2\tG\t0.5\nrs3\tT\t0.25\n")
    subprocess.run(["plink2", "--vcf", str(vcf), "--score", str(score), "1", "2", "3", "cols=+scoresums",
                    "no-mean-imputation", "--out", str(tmp_path / "ref")], capture_output=True, check=True)
    rows = [line.split("\t") for line in (tmp_path / "ref.sscore").read_text().splitlines()[1:]]
    np.testing.assert_allclose(ours, [float(r[-1]) for r in rows], rtol=1e-6)


def test_memory_stays_near_the_output_matrix(tmp_path):
    import tracemalloc

    vcf = random_vcf(tmp_path / "m.vcf", n_samples=200, n_sites=3000, seed=3)
    tracemalloc.start()
    convert_vcf(vcf, tmp_path / "m.h5", VariantSettings(block_size=512))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    with open_store(tmp_path / "m.h5") as s:
        output_bytes = s["dosage"].size + s["haplotypes"].size
    # the output matrix (dosage + haplotypes) plus one decode block and one write batch
    block_bytes = 512 * 200 * 3 * 2 * 4
    assert peak < output_bytes + block_bytes + 8e6, (peak, output_bytes)


# --- valid edge files: read as bcftools reads them ------------------------------------------------

COLUMNS = "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ta\tb\tc\n"
PL = '##FORMAT=<ID=PL,Number=G,Type=Integer,Description="Phred-scaled likelihoods">\n'


@pytest.mark.parametrize("kind", ["vcf", "bcf"])
def test_files_without_alt_alleles_give_an_empty_store(tmp_path, kind):
    """Header-only files and reference-only sites (ALT '.') are valid: an empty store and a warning
    that says why, not a crash."""
    cases = {"header_only": HEADER + COLUMNS,
             "monomorphic": HEADER + COLUMNS + "chr1\t5\t.\tA\t.\t.\tPASS\t.\tGT\t0/0\t0/0\t0|0\n"
                                               "chr1\t9\t.\tC\t.\t.\tPASS\t.\tGT\t0/0\t./.\t0/0\n"}
    for name, text in cases.items():
        vcf = tmp_path / f"{name}.vcf"
        vcf.write_text(text)
        if kind == "bcf":
            subprocess.run(["bcftools", "view", "-Ob", "-o", str(vcf.with_suffix(".bcf")), str(vcf)], check=True)
            vcf = vcf.with_suffix(".bcf")
        out = tmp_path / f"{name}.h5"
        proc = run_cli("preprocess", "variants", "--vcf", vcf, "--out", out)
        assert proc.returncode == 0, proc.stderr
        assert "no variants left" in proc.stderr
        if name == "monomorphic":
            assert "2 record(s) read, none with an ALT allele" in proc.stderr
        with open_store(out, expect="genotypes") as s:
            assert s["dosage"].shape == (3, 0) and s.samples == ["a", "b", "c"]
            assert int(s.attrs["records_without_alt"]) == (2 if name == "monomorphic" else 0)


def test_a_record_without_gt_is_read_as_missing(tmp_path):
    """FORMAT PL only on one record: bcftools prints '.' for every sample, so the dosage is -1 there;
    the other records are read as usual and the log counts and names the record."""
    vcf = tmp_path / "pl.vcf"
    vcf.write_text(HEADER + PL + COLUMNS +
                   "chr1\t5\trs1\tA\tG\t.\tPASS\t.\tGT\t0/0\t0/1\t1/1\n"
                   "chr1\t7\trs2\tA\tC,T\t.\tPASS\t.\tPL\t0,1,2,3,4,5\t.\t9,0,9,9,9,9\n"
                   "chr1\t9\trs3\tC\tT\t.\tPASS\t.\tGT:PL\t0/1:1,0,1\t./.:.\t1/1:9,9,0\n")
    keys, expected = bcftools_dosage(vcf)
    out = tmp_path / "g.h5"
    proc = run_cli("preprocess", "variants", "--vcf", vcf, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "1 record(s)" in proc.stderr and "chr1:7" in proc.stderr
    with open_store(out) as s:
        ours = list(zip(s.strings("variants/chrom"), s["variants/pos"][:].tolist(), s.strings("variants/alt")))
        assert ours == keys
        np.testing.assert_array_equal(s["dosage"][:], expected)
        assert (s["dosage"][:, 1:3] == -1).all() and int(s.attrs["records_without_gt"]) == 1


def test_polyploid_call_is_refused_with_the_site_and_what_to_do(tmp_path):
    vcf = tmp_path / "tri.vcf"
    vcf.write_text(HEADER + COLUMNS + "chr1\t5\t.\tA\tG\t.\tPASS\t.\tGT\t0/0\t0/1\t1/1\n"
                   "chr2\t77\t.\tA\tG\t.\tPASS\t.\tGT\t0/0\t0/1/1\t1/1\n")
    out = tmp_path / "g.h5"
    proc = run_cli("preprocess", "variants", "--vcf", vcf, "--out", out)
    assert proc.returncode == 4
    [line] = error_lines(proc)
    assert "chr2:77" in line and "ploidy 3" in line and "bcftools view -t ^chr2:77" in line and str(vcf) in line
    assert not out.exists()


# --- bad input: one line naming the file, the DESIGN.md exit code, nothing left behind -------------

def _bad_cases(tmp_path, known_vcf):
    truncated = tmp_path / "trunc.vcf.gz"
    data = gzip.compress(("".join(random_vcf(tmp_path / "big.vcf", n_sites=400).read_text())).encode())
    truncated.write_bytes(data[: len(data) // 2])
    bgzf = pysam.tabix_index(str(random_vcf(tmp_path / "b.vcf", n_sites=3000)), preset="vcf")
    bgzf_truncated = tmp_path / "trunc_bgzf.vcf.gz"
    raw = open(bgzf, "rb").read()
    bgzf_truncated.write_bytes(raw[: int(len(raw) * 0.6)])
    not_vcf = tmp_path / "notes.vcf"
    not_vcf.write_text("this is not a VCF\n")
    no_gt = tmp_path / "nogt.vcf"
    no_gt.write_text(HEADER.replace("GT,Number=1,Type=String", "DP,Number=1,Type=Integer")
                     + "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\tFORMAT\ta\nchr1\t5\t.\tA\tG\t.\t.\t.\tDP\t3\n")
    no_samples = tmp_path / "nosamples.vcf"
    no_samples.write_text(HEADER + "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO\nchr1\t5\t.\tA\tG\t.\t.\t.\n")
    dup = tmp_path / "dup.vcf"
    dup.write_text(known_vcf.read_text().replace("\ts3\t", "\ts1\t"))
    return [
        (tmp_path / "absent.vcf.gz", 3, "does not exist"),
        (not_vcf, 4, "not a VCF"),
        (truncated, 4, "truncated or corrupt"),
        (bgzf_truncated, 4, "truncated or corrupt"),
        (no_gt, 4, "no GT"),
        (no_samples, 4, "no samples"),
        (dup, 4, "duplicate sample ID 's1'"),
    ]


def test_bad_inputs_exit_codes(tmp_path, known_vcf):
    outdir = tmp_path / "out"
    outdir.mkdir()
    for path, code, text in _bad_cases(tmp_path, known_vcf):
        proc = run_cli("preprocess", "variants", "--vcf", path, "--out", outdir / "g.h5")
        lines = error_lines(proc)
        assert proc.returncode == code, (path, proc.stderr)
        assert len(lines) == 1 and text in lines[0] and str(path) in lines[0], (path, proc.stderr)
        assert list(outdir.iterdir()) == [], path
    proc = run_cli("preprocess", "variants", "--vcf", known_vcf, "--out", tmp_path / "nowhere" / "g.h5")
    assert proc.returncode == 6 and "output folder does not exist" in proc.stderr


def test_cli_writes_store_and_log(tmp_path, known_vcf):
    proc = run_cli("preprocess", "variants", "--vcf", known_vcf, "--out", tmp_path / "g.h5", "--maf", "0.2")
    assert proc.returncode == 0, proc.stderr
    log = (tmp_path / "g.log").read_text()
    assert "command: phenoclip preprocess variants" in log and "--maf 0.2" in log
    for key in ("host:", "start:", "end:", "seed:", "threads:", "device: cpu"):
        assert key in log
    with open_store(tmp_path / "g.h5") as s:
        assert s.attrs["command"].startswith("phenoclip preprocess variants")
