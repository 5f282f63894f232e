"""phenoclip explain: the contrastive target against the training loss, the dense encoders against the
model, completeness of IG and DeepLift, bounded passes, outputs, shards merged into the single run,
planted SNPs recovered, the fine-tuned model target, MRI volumes, and bad input."""

import json
import os
from unittest import mock

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from phenoclip_bench.explain import hit_masks, marginal_order, precision_at, tsv_order
from phenoclip.data.batch import DOSAGE, VALUES
from phenoclip.explain.attribution import DenseEncoder, MethodSettings, attribute_batch, soft_variant_tokens
from phenoclip.explain.targets import ContrastiveTarget, ModelTarget
from phenoclip.models.multimodal import build_model
from phenoclip.models.registry import build_encoder
from phenoclip.objectives.contrastive import clip_pair_loss
from phenoclip.store_read import open_store
from phenoclip.store_write import create_store

REF = "32"


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """300 simulated patients x 3,000 variants, 80 genes, 16^3 volumes: gene, expr and mri stores."""
    import json

    from phenoclip_bench.explain import simulate_stores
    from phenoclip.preprocess.mri import convert_mri

    root = tmp_path_factory.mktemp("explain_cohort")
    # two traits with strong expression effects keep the planted signal clear on 300 patients
    paths = simulate_stores(root, 300, 3000, 80, seed=5, n_traits=2, trait_heritability=0.8,
                            trait_expr_log_fold=1.2)
    paths["mri"] = root / "mri.h5"
    convert_mri(root / "cohort" / "mri" / "manifest.tsv", paths["mri"], spacing=(2.5, 2.5, 2.5), shape=(16, 16, 16))
    paths["dir"] = root / "cohort"
    paths["truth_json"] = json.loads(paths["truth"].read_text())
    return paths


@pytest.fixture(scope="module")
def pre(cohort, tmp_path_factory):
    """gene + expr CLIP pretraining, 100 epochs as by default (about 15 s on 2 cores)."""
    from phenoclip_bench.explain import pretrain_pair

    out = tmp_path_factory.mktemp("explain_pre") / "pre"
    pretrain_pair(cohort, out, 100, seed=0)
    return out


@pytest.fixture(scope="module")
def single(pre, cohort, tmp_path_factory):
    """One full CLI run with --genes; several tests read its files."""
    d = tmp_path_factory.mktemp("explain_single")
    rc, err = cli("explain", "--threads", "1", "--method", "ig", "--checkpoint", pre, "--modality", "gene",
                  "--data", cohort["gene"], "--reference", cohort["expr"], "--reference-size", REF,
                  "--genes", cohort["dir"] / "genes.bed", "--out", d / "attr")
    assert rc == 0, err
    return d / "attr"


def cli(*args) -> tuple[int, list[str]]:
    """``phenoclip ARGS`` through the real entry point, in this process (no seconds of imports per call):
    (exit code, non-empty stderr lines). Thread settings and the environment are restored afterwards."""
    import contextlib
    import io

    from phenoclip import progress
    from phenoclip.cli.main import main

    env = {k: v for k, v in os.environ.items() if k != "PHENOCLIP_DEBUG"}
    threads, err = torch.get_num_threads(), io.StringIO()
    progress.WARNINGS.clear()
    try:
        with mock.patch.dict(os.environ, env, clear=True), contextlib.redirect_stderr(err), \
                pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
    finally:
        torch.set_num_threads(threads)
        progress.QUIET = False
    return exc.value.code, [line for line in err.getvalue().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- units

def test_contrastive_target_is_the_clip_loss_of_reference_batch_plus_individual():
    torch.manual_seed(0)
    n, m, e, v = 4, 7, 8, 5

    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(v, e)

        def raw(self, x):
            return self.lin(x)

        def forward(self, x):
            return nn.functional.normalize(self.raw(x), dim=-1)

    enc = Enc()
    a = nn.functional.normalize(torch.randn(m, e), dim=-1)
    b = nn.functional.normalize(torch.randn(m, e), dim=-1)
    target = ContrastiveTarget(enc, a, b, scale=9.0)
    x = torch.randn(n, v)
    partner = nn.functional.normalize(torch.randn(n, e), dim=-1)
    keep = torch.ones(n, m)
    for r, drop in enumerate((0, 3, 6, 6)):
        keep[r, drop] = 0
    out = target(x, *target.constants(partner, keep))
    for r in range(n):
        k = keep[r].bool()
        za = torch.cat([enc(x[r:r + 1]), a[k]])
        zb = torch.cat([partner[r:r + 1], b[k]])
        torch.testing.assert_close(out[r], clip_pair_loss(za, zb, torch.tensor(9.0)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch,extra", [("transformer", {"patch": 4, "patch_mixing": "linear"}),
                                        ("transformer", {"patch": 4, "patch_mixing": "sum"}),
                                        ("transformer", {"patch": 1}), ("mamba", {"patch": 3})])
def test_soft_variant_tokens_equal_the_encoder_at_integer_dosages(arch, extra):
    torch.manual_seed(1)
    enc = build_encoder("gene", arch, "tiny", {"n_variants": 10}, **extra).eval()
    dosage = torch.randint(0, 3, (3, 10)).float()
    torch.testing.assert_close(soft_variant_tokens(enc.tokens, dosage), enc.tokens(dosage), rtol=1e-5, atol=1e-5)
    # and unlike the class lookup it has a gradient
    x = dosage.clone().requires_grad_(True)
    soft_variant_tokens(enc.tokens, x + 0.3 * (x < 2)).sum().backward()
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("archs", [{"gene": "mlp", "expr": "mlp"}, {"gene": "transformer", "expr": "mamba"}])
def test_dense_encoder_is_the_model_on_observed_inputs(archs):
    torch.manual_seed(2)
    model = build_model({"gene": {"n_variants": 12}, "expr": {"n_genes": 9}}, "tiny", archs).eval()
    dosage = torch.randint(0, 3, (4, 12)).float()
    values = torch.randn(4, 9)
    with torch.no_grad():
        for modality, key, x in (("gene", DOSAGE, dosage), ("expr", VALUES, values)):
            torch.testing.assert_close(DenseEncoder(model, modality)(x), model.encode(modality, {key: x}),
                                       rtol=1e-5, atol=1e-5)
        # a missing call is imputed with the column mean, which the dosage MLP maps to zero as well
        if archs["gene"] == "mlp":
            missing = dosage.clone()
            missing[0, 3] = -1
            dense = DenseEncoder(model, "gene")
            imputed = dense.impute(missing, model.encoders["gene"].column_mean[None])
            torch.testing.assert_close(dense(imputed), model.encode("gene", {DOSAGE: missing}), rtol=1e-5, atol=1e-5)


def _toy_scorer():
    torch.manual_seed(3)
    # the toy keeps the 32-wide space the tiny preset had when its tolerances were measured
    model = build_model({"gene": {"n_variants": 30}, "expr": {"n_genes": 6}}, "tiny", {"gene": "mlp"},
                        embed_dim=32).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    dense = DenseEncoder(model, "gene")
    a = nn.functional.normalize(torch.randn(10, model.embed_dim), dim=-1)
    b = nn.functional.normalize(torch.randn(10, model.embed_dim), dim=-1)
    target = ContrastiveTarget(dense, a, b, 14.0).eval()
    x = torch.randint(0, 3, (5, 30)).float()
    keep = torch.ones(5, 10)
    keep[:, -1] = 0
    extra = target.constants(nn.functional.normalize(torch.randn(5, model.embed_dim), dim=-1), keep)
    return target, x, dense.encoder.column_mean[None].clone(), extra


@pytest.mark.parametrize("method", ["ig", "deeplift", "noise-tunnel"])
def test_attributions_add_up_to_the_change_of_the_output(method):
    target, x, base, extra = _toy_scorer()
    attr, delta = attribute_batch(target, x, base, extra, MethodSettings(method, steps=64, internal_batch_size=40,
                                                                         nt_samples=3, noise_std=0.05))
    with torch.no_grad():
        change = target(x, *extra) - target(base.expand_as(x), *extra)
    assert attr.shape == x.shape and torch.isfinite(attr).all()
    if method != "noise-tunnel":   # noisy inputs move the endpoints: its delta is only reported
        torch.testing.assert_close(attr.sum(1), change, rtol=0.02, atol=2e-4)
        assert (delta.abs() <= 0.02 * change.abs() + 2e-4).all()


def test_one_pass_never_holds_more_rows_than_the_internal_batch_size():
    target, x, base, extra = _toy_scorer()
    seen = []
    hook = target.encoder.projection.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[0]))
    try:
        attribute_batch(target, x, base, extra, MethodSettings("ig", steps=50, internal_batch_size=20))
    finally:
        hook.remove()
    # 4 steps of 5 individuals a pass, each step once, plus the delta's pass over inputs and baselines
    assert max(seen) <= 20 and sum(seen) == 5 * 50 + 2 * 5


# ----------------------------------------------------------------------------- the command

def test_outputs_tables_and_deltas(single):
    with open_store(f"{single}.h5") as s:
        assert s.schema == "attributions" and s.attrs["method"] == "ig" and s.attrs["target"] == "contrastive"
        attr, delta = s["attributions"][...], s["delta"][...]
        change = np.abs(s["target_value"][...] - s["baseline_value"][...])
        ids = s.strings("variants/id")
        assert attr.shape == (len(s.samples), len(ids)) and len(s.strings("reference_samples")) == int(REF) + 1
        # IG's completeness: deltas far below the output change they explain
        assert np.median(np.abs(delta)) < 0.05 * np.median(change)
    lines = open(f"{single}.tsv").read().splitlines()
    assert lines[0].split("\t") == ["chrom", "pos", "id", "ref", "alt", "mean_abs_attr", "mean_attr", "rank"]
    first = lines[1].split("\t")
    order = np.argsort(-np.abs(attr).mean(0), kind="stable")
    assert first[2] == ids[order[0]] and first[-1] == "1" and len(lines) == len(ids) + 1
    np.testing.assert_allclose(float(first[5]), np.abs(attr).mean(0)[order[0]], rtol=1e-5)
    genes = open(f"{single}.genes.tsv").read().splitlines()
    assert genes[0].startswith("gene\tchrom\tstart\tend\tn_variants\tmax_mean_abs_attr") and len(genes) > 10
    assert os.path.getsize(f"{single}.manhattan.png") > 10_000
    log = open(f"{single}.log").read()
    assert "convergence delta" in log and "fingerprint:" in log


def test_attributions_rank_planted_snps_far_above_random(single, cohort):
    hits = hit_masks(cohort["gene"], cohort["truth_json"])
    order = tsv_order(f"{single}.tsv", cohort["gene"])
    snp, locus = precision_at(order, hits["snp"]), precision_at(order, hits["locus"])
    random_snp, random_locus = hits["snp"].mean(), hits["locus"].mean()
    assert snp[1] >= max(3 * random_snp, 0.25), (snp, random_snp)          # precision@20, r2 >= 0.8 proxies
    assert locus[1] >= max(2 * random_locus, 0.8), (locus, random_locus)   # the planted loci themselves
    marginal = precision_at(marginal_order(cohort["gene"], cohort["expr"]), hits["snp"])
    assert marginal[0] > random_snp   # the baseline test is a real baseline, not a straw man


def test_parts_merge_into_the_single_run(single, pre, cohort, tmp_path):
    common = ["explain", "--threads", "1", "--checkpoint", pre, "--data", cohort["gene"], "--reference",
              cohort["expr"], "--reference-size", REF, "--out", tmp_path / "attr", "--num-parts", "3"]
    for k in range(3):
        assert cli(*common, "--part", k)[0] == 0
    assert sorted(p.name for p in tmp_path.glob("attr.part*.h5")) == [f"attr.part{k}.h5" for k in range(3)]
    assert not (tmp_path / "attr.tsv").exists()
    rc, err = cli("explain", "merge", *sorted(tmp_path.glob("attr.part*.h5")), "--out", tmp_path / "attr",
                  "--genes", cohort["dir"] / "genes.bed")
    assert rc == 0, err
    with h5py.File(f"{single}.h5") as a, h5py.File(tmp_path / "attr.h5") as b:
        for name in ("samples", "attributions", "delta", "target_value", "baseline_value", "index"):
            np.testing.assert_array_equal(a[name][...], b[name][...])
        assert a.attrs["fingerprint"] == b.attrs["fingerprint"]
    for suffix in (".tsv", ".genes.tsv", ".manhattan.png"):
        assert open(f"{single}{suffix}", "rb").read() == (tmp_path / f"attr{suffix}").read_bytes(), suffix


def test_model_target_explains_the_fine_tuned_logit(pre, cohort, tmp_path):
    ft_dir = tmp_path / "ft"
    rc, err = cli("finetune", "--threads", "1", "--checkpoint", pre, "--data", cohort["gene"], "--data",
                  cohort["expr"], "--labels", f"{cohort['dir'] / 'labels.tsv'}:disease", "--out", ft_dir,
                  "--label-fractions", "1.0", "--repeats", "1", "--baseline", "none")
    assert rc == 0, err
    # the target's output at the input is the fine-tuned model's logit
    from phenoclip.data.multimodal import CohortStores, MultimodalDataset, collate
    from phenoclip.checkpoint_load import read_data_stats
    from phenoclip.finetune.predict import load_finetuned

    ft, config = load_finetuned(ft_dir)
    stores = CohortStores([cohort["gene"], cohort["expr"]])
    stats = read_data_stats(ft_dir)
    ids = stores.samples[:6]
    batch = collate([MultimodalDataset(stores, ["gene", "expr"], ids,
                                       expr_stats=(stats["expr_mean"], stats["expr_std"]))[i] for i in range(6)])
    # the linear head reads the genotype read-out (models.readout): the explained function is that read-out
    assert ft.readout and ft.model.has_readout("gene")
    dense = DenseEncoder(ft.model, "gene", readout=True)
    assert dense.readout is not None and dense.encoder is None and dense.relu_mlp
    x = dense.impute(batch["gene"][DOSAGE], dense.readout.mean[None])
    assert ft.modalities == ["gene", "expr"]
    with torch.no_grad():
        expected = ft(batch)
        # blocks padded to the widest: expression's holds its principal-component scores too
        assert ft.components == ["expr"] and ft.widths[1] > ft.widths[0] == ft.model.embed_dim
        others = torch.zeros(6, 2, max(ft.widths))
        others[:, 1] = ft.embedding("expr", batch["expr"])
        present = torch.stack([torch.ones(6), batch["expr"]["present"].float()], 1)
        got = ModelTarget(dense, ft, 0)(x, others, present, torch.full((6,), 2))
    torch.testing.assert_close(got, expected[:, 2], rtol=1e-4, atol=1e-5)

    rc, err = cli("explain", "--threads", "1", "--checkpoint", ft_dir, "--data", cohort["gene"], "--with",
                  cohort["expr"], "--class", "neuro", "--method", "deeplift", "--out", tmp_path / "m")
    assert rc == 0, err
    with open_store(tmp_path / "m.h5") as s:
        assert s.attrs["target"] == "model" and "neuro" in s.attrs["explained_output"]
        change = np.abs(s["target_value"][...] - s["baseline_value"][...])
        assert np.median(np.abs(s["delta"][...])) < 0.01 * np.median(change)
    assert "do not add up" not in err  # converged: no warning


def test_an_unconverged_attribution_is_warned_about_on_the_terminal(capsys):
    from phenoclip.explain.convergence import warn_if_not_converged

    warn_if_not_converged(np.array([0.875, 0.9, 0.8]), np.array([0.5, 0.6, 0.4]), "deeplift")
    err = capsys.readouterr().err
    assert "deeplift's attributions do not add up" in err and "175% of the median change 0.5" in err
    assert "--method ig" in err
    warn_if_not_converged(np.array([0.001, 0.002]), np.array([0.5, 0.6]), "ig")
    assert capsys.readouterr().err == ""


def test_mri_attributions_are_written_as_volumes_in_original_space(cohort, tmp_path):
    from phenoclip.pretrain.settings import PretrainSettings
    from phenoclip.pretrain.run import run_pretrain

    run_pretrain(PretrainSettings(modalities=["gene", "mri"], data=[str(cohort["gene"]), str(cohort["mri"])], epochs=1,
                                seed=0, device="cpu"), tmp_path / "pre", log=lambda line: None)
    with open_store(cohort["mri"]) as s:
        ids = s.samples[:3]
    rc, err = cli("explain", "--threads", "1", "--checkpoint", tmp_path / "pre", "--modality", "mri", "--data",
                  cohort["mri"], "--reference", cohort["gene"], "--reference-size", "16", "--samples", ",".join(ids),
                  "--steps", "8", "--out", tmp_path / "v")
    assert rc == 0, err
    assert (tmp_path / "v.slices.png").exists()
    assert open(tmp_path / "v.tsv").readline().split("\t")[:3] == ["d", "h", "w"]
    for x in ids:
        out = nib.load(tmp_path / "v.volumes" / f"{x}.nii.gz")
        original = nib.load(cohort["dir"] / "mri" / "images" / f"{x}_T1.nii.gz")
        assert out.shape == original.shape[:3]
        np.testing.assert_allclose(out.affine, original.affine, atol=1e-4)
        assert np.abs(out.get_fdata()).max() > 0


def test_a_linear_heads_mri_block_is_explained_with_its_principal_component_scores(cohort, tmp_path):
    """A linear head reads MRI's embedding beside its principal-component scores (models.linear_path.
    PROBE_COMPONENTS): explain's model target is that wider block, and its value at the input is the
    fine-tuned model's logit."""
    from phenoclip.data.multimodal import CohortStores, MultimodalDataset, collate
    from phenoclip.finetune.predict import load_finetuned
    from phenoclip.pretrain.run import run_pretrain
    from phenoclip.pretrain.settings import PretrainSettings

    run_pretrain(PretrainSettings(modalities=["gene", "mri"], data=[str(cohort["gene"]), str(cohort["mri"])], epochs=1,
                                seed=0, device="cpu"), tmp_path / "pre", log=lambda line: None)
    rc, err = cli("finetune", "--threads", "1", "--checkpoint", tmp_path / "pre", "--data", cohort["gene"], "--data",
                  cohort["mri"], "--labels", f"{cohort['dir'] / 'labels.tsv'}:disease", "--out", tmp_path / "ft",
                  "--label-fractions", "1.0", "--repeats", "1", "--baseline", "none")
    assert rc == 0, err
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["probe_components"] == ["mri"]
    ft, _ = load_finetuned(tmp_path / "ft")
    k = ft.model.linear_paths["mri"].n_components
    assert ft.widths == [ft.model.embed_dim, ft.model.embed_dim + k] and k == 128
    stores = CohortStores([cohort["gene"], cohort["mri"]])
    ids = stores.samples[:3]
    rc, err = cli("explain", "--threads", "1", "--checkpoint", tmp_path / "ft", "--modality", "mri", "--data",
                  cohort["mri"], "--with", cohort["gene"], "--class", "neuro", "--samples", ",".join(ids),
                  "--steps", "8", "--out", tmp_path / "m")
    assert rc == 0, err
    batch = collate([MultimodalDataset(stores, ["gene", "mri"], ids)[i] for i in range(3)])
    with torch.no_grad():
        logit = ft(batch)[:, config["classes"].index("neuro")].numpy()
    with open_store(tmp_path / "m.h5") as s:
        assert s.attrs["target"] == "model"
        order = [s.samples.index(x) for x in ids]
        np.testing.assert_allclose(s["target_value"][...][order], logit, rtol=1e-4, atol=1e-4)


def test_a_genotype_heads_read_out_and_eqtl_snps_are_explained_together(pre, cohort, tmp_path):
    """A linear head over genotypes alone reads the read-out beside the eQTL-screened SNPs pretraining kept
    (models.readout, eval.gene_probe): explain's model target is that block, linear in the dosages, and its
    value at the input is the fine-tuned model's logit."""
    from phenoclip.data.multimodal import CohortStores, MultimodalDataset, collate
    from phenoclip.finetune.predict import load_finetuned

    rc, err = cli("finetune", "--threads", "1", "--checkpoint", pre, "--data", cohort["gene"], "--data", cohort["expr"],
                  "--modalities", "gene", "--labels", f"{cohort['dir'] / 'labels.tsv'}:disease", "--out",
                  tmp_path / "ft", "--label-fractions", "1.0", "--repeats", "1", "--baseline", "none")
    assert rc == 0, err
    config = json.loads((tmp_path / "ft" / "config.json").read_text())
    assert config["probe_components"] == ["gene"] and config["probe_kinds"] == {"gene": "eqtl"}
    ft, _ = load_finetuned(tmp_path / "ft")
    snps = len(ft.model.readouts["gene"].eqtl_index)
    assert ft.gene_choice and snps > 0 and ft.widths == [ft.model.embed_dim + snps]
    stores = CohortStores([cohort["gene"]])
    ids = stores.samples[:4]
    rc, err = cli("explain", "--threads", "1", "--checkpoint", tmp_path / "ft", "--data", cohort["gene"],
                  "--class", "neuro", "--samples", ",".join(ids), "--method", "ig", "--steps", "8",
                  "--out", tmp_path / "g")
    assert rc == 0, err
    batch = collate([MultimodalDataset(stores, ["gene"], ids)[i] for i in range(4)])
    with torch.no_grad():
        logit = ft(batch)[:, config["classes"].index("neuro")].numpy()
    with open_store(tmp_path / "g.h5") as s:
        assert s.attrs["target"] == "model"
        order = [s.samples.index(x) for x in ids]
        np.testing.assert_allclose(s["target_value"][...][order], logit, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- bad input

def _other_shape_store(path, n_variants):
    samples = ["X1", "X2"]
    with create_store(path, "genotypes", samples) as w:
        w.per_sample("dosage", np.zeros((2, n_variants), np.int8))
        for k, v in (("chrom", ["chr1"] * n_variants), ("pos", np.arange(n_variants) + 1),
                     ("id", [f"v{i}" for i in range(n_variants)]), ("ref", ["A"] * n_variants),
                     ("alt", ["G"] * n_variants)):
            w.array(f"variants/{k}", v)


def test_bad_input_is_one_line_with_its_exit_code_and_no_output(pre, cohort, tmp_path):
    base = ["explain", "--threads", "1", "--checkpoint", pre, "--reference-size", REF, "--out", tmp_path / "bad"]
    _other_shape_store(tmp_path / "short.h5", 17)
    cases = [
        (["--modality", "mri", "--data", cohort["mri"], "--reference", cohort["gene"]], 5, "no 'mri' encoder"),
        (["--data", cohort["gene"], "--reference", cohort["expr"], "--reference-size", "5000"], 5,
         "too few for a reference batch"),
        (["--data", cohort["gene"], "--reference", cohort["expr"], "--baseline", tmp_path / "short.h5"], 5,
         "baseline features have shape 17"),
        (["--data", cohort["gene"], "--reference", cohort["expr"], "--modality", "expr"], 5, "not --modality expr"),
        (["--data", cohort["gene"], "--reference", cohort["expr"], "--part", "2", "--num-parts", "2"], 2, "--part"),
        (["--data", cohort["gene"], "--reference", cohort["expr"], "--target", "model"], 5, "finetune checkpoint"),
    ]
    for extra, code, text in cases:
        rc, lines = cli(*base, *extra)
        assert rc == code and len(lines) == 1 and text in lines[0], (extra, rc, lines)
        assert not list(tmp_path.glob("bad*")) and not list(tmp_path.glob(".bad*"))


def test_merge_refuses_parts_of_other_runs_and_missing_parts(pre, cohort, tmp_path):
    with open_store(cohort["gene"]) as s:
        first = ",".join(s.samples[:40])
    common = ["explain", "--threads", "1", "--checkpoint", pre, "--data", cohort["gene"], "--reference",
              cohort["expr"], "--reference-size", REF, "--num-parts", "2", "--samples", first]
    assert cli(*common, "--out", tmp_path / "a", "--part", "0")[0] == 0
    assert cli(*common, "--out", tmp_path / "b", "--part", "1", "--method", "saliency")[0] == 0
    rc, lines = cli("explain", "merge", tmp_path / "a.part0.h5", tmp_path / "b.part1.h5", "--out", tmp_path / "m")
    assert rc == 5 and len(lines) == 1 and "another explain run" in lines[0] and "method" in lines[0], lines
    rc, lines = cli("explain", "merge", tmp_path / "a.part0.h5", "--out", tmp_path / "m")
    assert rc == 5 and len(lines) == 1 and "part(s) 1 of 2 missing" in lines[0], lines
    assert not list(tmp_path.glob("m*")) and not list(tmp_path.glob(".m*"))


def test_the_ranked_table_goes_to_stdout_through_a_pipe(single, pre, cohort, tmp_path):
    import subprocess
    import sys

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k != "PHENOCLIP_DEBUG"}, "TMPDIR": str(scratch)}
    cmd = (f"'{sys.executable}' -m phenoclip explain --threads 1 --method ig --checkpoint '{pre}' --modality gene "
           f"--data '{cohort['gene']}' --reference '{cohort['expr']}' --reference-size {REF} --out - | cat > piped.tsv")
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    # the very table of the run that wrote files (--genes only adds OUT.genes.tsv)
    assert (tmp_path / "piped.tsv").read_bytes() == open(f"{single}.tsv", "rb").read()
    # nothing else written: no store, plot or log beside it, and the scratch folder is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["piped.tsv", "tmp"] and not list(scratch.iterdir())
