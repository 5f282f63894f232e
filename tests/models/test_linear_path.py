"""The linear path of an embedding (phenoclip.models.linear_path) and its place in the multimodal model."""

import numpy as np
import pytest
import torch

from phenoclip.data.batch import DOSAGE, IMAGES, PRESENT, SIGNALS, VALUES
from phenoclip.models.linear_path import PCAPath, build_linear_path, flat_input, mri_pool_factor, n_raw_features
from phenoclip.models.multimodal import MultimodalModel, build_model

SHAPES = {"gene": {"n_variants": 50}, "expr": {"n_genes": 30}, "signal": {"n_channels": 2, "length": 64}}


def test_scores_keep_the_top_components_of_the_training_rows():
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(80, 3)) * np.array([5.0, 2.0, 1.0])
    x = latent @ rng.normal(size=(3, 30)) + 0.1 * rng.normal(size=(80, 30)) + 7.0
    path = PCAPath("expr", 30, 3, 8)
    assert path.fit(x) == 3
    s = path.scores({VALUES: torch.as_tensor(x, dtype=torch.float32)}).double().numpy()
    assert np.allclose(s.mean(0), 0, atol=1e-4)
    cov = np.cov(s.T)
    # uncorrelated scores, variances in the order of the components, their mean 1 (one common scale)
    assert np.allclose(cov - np.diag(np.diag(cov)), 0, atol=1e-3)
    assert np.diag(cov)[0] > np.diag(cov)[1] > np.diag(cov)[2] and np.diag(cov).mean() == pytest.approx(1, rel=1e-3)
    # the three components span the planted latent space: it is a linear function of the scores
    beta, res, *_ = np.linalg.lstsq(np.c_[s, np.ones(80)], latent, rcond=None)
    assert 1 - res.sum() / ((latent - latent.mean(0)) ** 2).sum() > 0.999


def test_components_beyond_the_rank_stay_zero_and_missing_dosages_add_nothing():
    rng = np.random.default_rng(1)
    dos = rng.integers(0, 3, size=(6, 50)).astype(np.float64)
    values = PCAPath("expr", 50, 10, 4)
    assert values.fit(dos) == 5                    # 6 patients: rank 5 after centring
    assert torch.all(values.components[5:] == 0)
    path = PCAPath("gene", 50, 10, 4)
    assert path.fit(dos) == 5                      # genotypes keep every component too
    assert torch.all(path.components[5:] == 0)
    row = torch.as_tensor(dos[:1], dtype=torch.float32)
    missing = row.clone()
    missing[0, :10] = -1                           # missing calls sit at the training mean
    imputed = row.clone()
    imputed[0, :10] = path.mean[:10]
    assert torch.allclose(path.scores({DOSAGE: missing}), path.scores({DOSAGE: imputed}), atol=1e-5)


def test_the_signal_path_keeps_one_component_per_four_training_patients_and_the_others_keep_their_rank():
    """A spectrum per patient has nearly as many components as patients: the signal path keeps
    N/4 of them (the rest stay zero, so the checkpoint's shapes do not depend on N)."""
    rng = np.random.default_rng(2)
    n = 40
    spectra = np.abs(rng.normal(size=(n, 66)))
    signal = PCAPath("signal", 66, 32, 8)
    assert signal.fit(spectra) == n // 4
    assert torch.all(signal.components[n // 4:] == 0) and torch.all(signal.components[:n // 4].abs().sum(1) > 0)
    expr = PCAPath("expr", 66, 32, 8)
    assert expr.fit(spectra) == 32                 # rank 39 > 32 components: all kept
    gene = PCAPath("gene", 66, 32, 8)
    assert gene.fit(spectra) == 32                 # genotypes are not capped
    small = PCAPath("signal", 66, 32, 8)
    assert small.fit(spectra[:3]) == 1             # never fewer than one component


def test_signal_path_reads_a_shift_invariant_spectrum_and_mri_is_pooled():
    x = torch.randn(3, 2, 64)
    shifted = torch.roll(x, 17, dims=-1)  # the training augmentation: a recording's start is arbitrary
    assert torch.allclose(flat_input("signal", {SIGNALS: x}), flat_input("signal", {SIGNALS: shifted}), atol=1e-4)
    assert n_raw_features("signal", SHAPES["signal"]) == 2 * 33
    assert mri_pool_factor((32, 32, 32)) == 1 and mri_pool_factor((64, 64, 64)) == 2
    assert mri_pool_factor((96, 96, 96)) == 3
    path = build_linear_path("mri", {"volume_shape": (64, 64, 32), "in_channels": 1}, 4, 8)
    assert path.pool == 2 and path.n_features == 32 * 32 * 16
    assert path.scores({IMAGES: torch.randn(2, 1, 64, 64, 32)}).shape == (2, 4)


def _batch(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"gene": {DOSAGE: torch.randint(0, 3, (n, 50), generator=g).float(), PRESENT: torch.ones(n, dtype=torch.bool)},
            "expr": {VALUES: torch.randn(n, 30, generator=g), PRESENT: torch.ones(n, dtype=torch.bool)},
            "signal": {SIGNALS: torch.randn(n, 2, 64, generator=g), PRESENT: torch.ones(n, dtype=torch.bool)}}


def test_model_adds_the_path_and_rebuilds_from_its_config():
    torch.manual_seed(0)
    model = build_model(SHAPES, "tiny", {"expr": "mlp"}, linear_components=4).eval()
    assert set(model.linear_paths) == {"gene", "expr", "signal"}
    batch = _batch()
    for m in model.linear_paths:
        model.linear_paths[m].fit(flat_input(m, batch[m]).double().numpy())
    z = model.encode("expr", batch["expr"], normalize=False)
    deep = model.projections["expr"](model.encoders["expr"](batch["expr"]))
    assert torch.allclose(z, deep + model.linear_paths["expr"](batch["expr"]), atol=1e-6)
    twin = MultimodalModel.from_config(model.config).eval()
    twin.load_state_dict(model.state_dict())
    for m in SHAPES:
        assert torch.allclose(twin.encode(m, batch[m]), model.encode(m, batch[m]), atol=1e-6)
    assert build_model(SHAPES, "tiny").linear_paths.keys() == set()   # 0 components: no path


def test_scratch_twin_keeps_the_principal_axes_and_redraws_the_map(tmp_path):
    from phenoclip.pretrained import Pretrained, random_init_like

    torch.manual_seed(0)
    config = {"modalities": ["gene", "expr"], "data_shapes": SHAPES, "preset": "tiny",
              "architectures": {"expr": "mlp"}, "linear_path": 4}
    model = build_model({m: SHAPES[m] for m in ("gene", "expr")}, "tiny", {"expr": "mlp"}, linear_components=4)
    batch = _batch()
    for m in model.linear_paths:
        model.linear_paths[m].fit(flat_input(m, batch[m]).double().numpy())
    scratch = random_init_like(Pretrained(tmp_path, config, {}, model, {}), seed=3)
    for m in ("gene", "expr"):
        ours, theirs = model.linear_paths[m], scratch.linear_paths[m]
        # the data-derived part (principal axes, means) is the pretrained model's; the learned map is not
        assert torch.equal(ours.components, theirs.components) and torch.equal(ours.mean, theirs.mean)
        assert not torch.allclose(ours.linear.weight, theirs.linear.weight)


def test_scratch_twin_gets_the_ontology_graph_initialisation(sample_stores, tmp_path):
    """The scratch baseline starts where pretraining starts: the HPO table from the ontology graph, not N(0, 1)."""
    from phenoclip.data.multimodal import CohortStores
    from phenoclip.pretrained import Pretrained, random_init_like
    from phenoclip.models.phenotype import HpoEncoder, ontology_init

    stores = CohortStores([sample_stores["pheno"]])
    data = stores.by_modality["hpo"].meta["phenotypes"]
    enc = HpoEncoder.from_phenotypes(data, width=32, hidden=64)
    shapes = {"hpo": {"n_ontology_terms": len(data.ontology), "n_vocab": enc.table.shape[0]}}
    model = build_model(shapes, "tiny")
    model.encoders["hpo"].load_state_dict(enc.state_dict())
    pre = Pretrained(tmp_path, {"modalities": ["hpo"], "data_shapes": shapes, "preset": "tiny"}, {}, model, {})
    vocab = enc.vocab_terms.numpy()
    expected = ontology_init(data.ontology, vocab, 32, torch.Generator().manual_seed(5))
    scratch = random_init_like(pre, 5, stores).encoders["hpo"]
    assert torch.equal(scratch.vocab_terms, enc.vocab_terms) and torch.allclose(scratch.table, expected)
    plain = random_init_like(pre, 5).encoders["hpo"]   # without the store: no ontology to start from
    assert not torch.allclose(plain.table, expected)


def test_explain_attributes_the_embedding_with_its_linear_path():
    from phenoclip.explain.attribution import DenseEncoder

    torch.manual_seed(0)
    model = build_model(SHAPES, "tiny", {"expr": "mlp"}, linear_components=4).eval()
    batch = _batch()
    model.linear_paths["expr"].fit(flat_input("expr", batch["expr"]).double().numpy())
    x = batch["expr"][VALUES]
    with torch.no_grad():
        assert torch.allclose(DenseEncoder(model, "expr")(x), model.encode("expr", batch["expr"]), atol=1e-6)


def _mri_model(k=4):
    torch.manual_seed(0)
    shapes = {"expr": {"n_genes": 30}, "mri": {"volume_shape": (16, 16, 16), "in_channels": 1}}
    model = build_model(shapes, "tiny", {"expr": "mlp"}, embed_dim=8, linear_components=k).eval()
    g = torch.Generator().manual_seed(1)
    batch = {"expr": {VALUES: torch.randn(6, 30, generator=g), PRESENT: torch.ones(6, dtype=torch.bool)},
             "mri": {IMAGES: torch.randn(6, 1, 16, 16, 16, generator=g),
                     PRESENT: torch.tensor([True, True, True, True, False, True])}}
    for m in model.linear_paths:
        model.linear_paths[m].fit(flat_input(m, batch[m]).double().numpy())
    return model, batch


def test_the_mri_and_expression_probes_read_their_principal_component_scores_beside_the_embedding():
    from phenoclip.models.finetune import FinetuneModel

    model, batch = _mri_model(k=4)
    assert model.probe_components("mri") and model.probe_components("expr")
    assert model.probe_width("mri") == 8 + 4 and model.probe_width("mri", components=False) == 8
    assert model.probe_width("expr") == 8 + 4
    # expression's scores keep their own scale in a probe, MRI's are z-scored like the embedding
    assert model.probe_natural("expr") == [False] * 8 + [True] * 4 and model.probe_natural("mri") == [False] * 12
    assert model.probe_natural("expr", components=False) == [False] * 8
    with torch.no_grad():
        got = model.probe_features("mri", batch["mri"])
        scores = model.linear_paths["mri"].scores(batch["mri"])
        assert torch.equal(got[:, :8], model.probe_embedding("mri", batch["mri"])) and torch.equal(got[:, 8:], scores)
        # the scores are the training rows' principal components: uncorrelated, of mean variance 1
        assert abs(float(scores.var(0).mean()) - 1.0) < 1e-4
        expr = model.probe_features("expr", batch["expr"])
        assert torch.equal(expr, torch.cat([model.probe_embedding("expr", batch["expr"]),
                                            model.linear_paths["expr"].scores(batch["expr"])], dim=1))
    # a linear head gets the wider blocks; a mean fusion, full fine-tuning or an old head does not
    for fusion in ("concat", "stack"):
        blocks = FinetuneModel.default_components(model, ["expr", "mri"], fusion, readout=True)
        ft = FinetuneModel(model, ["expr", "mri"], fusion, 3, readout=True, components=blocks)
        assert ft.components == ["expr", "mri"] and ft.widths == [12, 12] and ft.in_features == 24
        assert ft.natural == [False] * 8 + [True] * 4 + [False] * 12
        with torch.no_grad():
            feats = ft.features(batch)
            assert feats.shape == (6, 24) and torch.equal(feats[4], torch.cat([feats[4, :12], torch.zeros(12)]))
            assert torch.allclose(feats[:4, 12:], got[:4], atol=1e-6) and torch.allclose(feats[:, :12], expr, atol=1e-6)
            assert ft.features({"expr": batch["expr"]}).shape == (6, 24)   # no MRI store: a zero block
            assert ft(batch).shape == (6, 3)
    assert FinetuneModel.default_components(model, ["expr", "mri"], "mean", readout=True) == []
    assert FinetuneModel.default_components(model, ["expr", "mri"], "stack", readout=False) == []
    old = FinetuneModel(model, ["expr", "mri"], "stack", 3, readout=True)
    assert old.widths == [8, 8] and old.natural == [False] * 16
    for fusion, readout, blocks in (("mean", True, ["mri"]), ("stack", False, ["mri"]), ("stack", True, ["signal"])):
        with pytest.raises(ValueError, match="component blocks"):
            FinetuneModel(model, ["expr", "mri"], fusion, 3, readout=readout, components=blocks)


def test_a_stacked_head_over_a_wider_mri_block_predicts_what_the_stacked_fit_predicts():
    from phenoclip.eval.stacking import fit_stacked
    from phenoclip.finetune.heads import HeadSettings, fit_linear_head, scores_from_features
    from phenoclip.models.finetune import FinetuneModel

    model, _ = _mri_model(k=4)
    ft = FinetuneModel(model, ["expr", "mri"], "stack", 3, readout=True, components=["mri"])
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=90)
    x = rng.normal(size=(90, 20))
    x[:, 8] += 3.0 * y              # the label sits in one principal-component score of the MRI block
    fit_linear_head(ft, x[:60], y[:60], True, HeadSettings(), seed=0)
    ours = scores_from_features(ft, x[60:], True)
    ref = fit_stacked(x[:60], [8, 12], y[:60], 3, 0).predict(x[60:])
    assert np.allclose(ours, ref, atol=1e-5)
    assert (ours.argmax(1) == y[60:]).mean() > 0.5     # measured 0.63 (chance 0.33; the block alone 0.73)


@pytest.mark.parametrize("fusion", ["concat", "stack"])
def test_a_linear_head_keeps_the_expression_scores_at_their_own_scale(fusion):
    """The expression block's principal-component scores are centred, not z-scored, by the head's
    fit (models.linear_path.PROBE_COMPONENTS): a score of variance 25 keeps scale 1, so the L2 penalty
    favours the directions with the data's variance, as a logistic regression on the raw genes does."""
    from phenoclip.eval.stacking import fit_stacked
    from phenoclip.finetune.heads import HeadSettings, fit_linear_head, scores_from_features
    from phenoclip.models.finetune import FinetuneModel

    model, _ = _mri_model(k=4)
    ft = FinetuneModel(model, ["expr", "mri"], fusion, 2, readout=True, components=["expr", "mri"])
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=90)
    x = rng.normal(size=(90, 24)) * 5.0
    x[:, 8] += 15.0 * y             # the label in the first expression score
    fit_linear_head(ft, x[:60], y[:60], True, HeadSettings(), seed=0)
    sd = x[:60].std(0)
    scale = ft.feature_scale.numpy()
    assert np.allclose(scale[8:12], 1.0) and np.allclose(scale[:8], sd[:8]) and np.allclose(scale[12:], sd[12:])
    assert np.allclose(ft.feature_mean.numpy(), x[:60].mean(0))
    ours = scores_from_features(ft, x[60:], True)
    if fusion == "stack":
        ref = fit_stacked(x[:60], [12, 12], y[:60], 2, 0, natural=np.array(ft.natural)).predict(x[60:])
        assert np.allclose(ours, ref, atol=1e-5)
    assert (ours.argmax(1) == y[60:]).mean() > 0.8      # measured 0.93 for both fusions (chance 0.5)


def test_explain_attributes_the_mri_block_with_its_scores():
    from phenoclip.explain.attribution import DenseEncoder
    from phenoclip.explain.targets import ModelTarget
    from phenoclip.models.finetune import FinetuneModel

    model, batch = _mri_model(k=4)
    dense = DenseEncoder(model, "mri", components=True).eval()
    x = batch["mri"][IMAGES]
    with torch.no_grad():
        assert torch.allclose(dense(x), model.probe_features("mri", batch["mri"]), atol=1e-6)
        ft = FinetuneModel(model, ["expr", "mri"], "concat", 3, readout=True, components=["mri"]).eval()
        torch.nn.init.normal_(ft.head.weight)
        expected = ft(batch)
        others = torch.zeros(6, 2, 12)
        others[:, 0, :8] = ft.embedding("expr", batch["expr"])
        present = torch.ones(6, 2)
        got = ModelTarget(dense, ft, 1)(x, others, present, torch.full((6,), 2))
    torch.testing.assert_close(got[:4], expected[:4, 2], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(DenseEncoder(model, "expr", components=True)(batch["expr"][VALUES]),
                              model.probe_features("expr", batch["expr"]), atol=1e-6)
    gene = build_model(SHAPES, "tiny", {"expr": "mlp"}, linear_components=4)
    with pytest.raises(ValueError, match="principal-component"):
        DenseEncoder(gene, "gene", components=True)   # genotypes read their embedding alone


def test_the_signal_probe_reads_its_encoder_output_beside_its_component_scores():
    """Signals' kind is "encoder" (PROBE_COMPONENTS): a linear head reads the deep encoder's pooled
    output (before the projection head) beside the linear path's principal-component scores, the
    scores only centred (their own scale: logistic regression on them alone is the spectral baseline),
    while retrieval keeps the normalised sum of both paths."""
    from phenoclip.models.finetune import FinetuneModel

    torch.manual_seed(0)
    shapes = {"expr": {"n_genes": 30}, "signal": {"n_channels": 2, "length": 64}}
    model = build_model(shapes, "tiny", {"expr": "mlp"}, embed_dim=8, linear_components=5).eval()
    g = torch.Generator().manual_seed(2)
    batch = {"expr": {VALUES: torch.randn(7, 30, generator=g), PRESENT: torch.ones(7, dtype=torch.bool)},
             "signal": {SIGNALS: torch.randn(7, 2, 64, generator=g),
                        PRESENT: torch.tensor([True, True, False, True, True, True, True])}}
    for m in model.linear_paths:
        model.linear_paths[m].fit(flat_input(m, batch[m]).double().numpy())
    w = model.encoders["signal"].width
    assert model.probe_components("signal") and w != 8
    assert model.probe_width("signal") == w + 5 and model.probe_width("signal", components=False) == 8
    assert model.probe_natural("signal") == [False] * w + [True] * 5
    assert model.probe_natural("signal", components=False) == [False] * 8
    with torch.no_grad():
        got = model.probe_features("signal", batch["signal"])
        h = model.encoders["signal"](batch["signal"])
        scores = model.linear_paths["signal"].scores(batch["signal"])
        assert got.shape == (7, w + 5) and not torch.allclose(scores, torch.zeros_like(scores))
        assert torch.allclose(got[:, :w], h, atol=1e-6) and torch.allclose(got[:, w:], scores, atol=1e-6)
        # retrieval (and a head without component blocks) still reads the normalised sum of both paths
        summed = model.encode("signal", batch["signal"])
        deep = model.projections["signal"](h)
        path = model.linear_paths["signal"](batch["signal"])
        assert torch.allclose(summed, torch.nn.functional.normalize(deep + path, dim=-1), atol=1e-6)
        assert torch.equal(model.probe_embedding("signal", batch["signal"]), summed)
    # a head over signals alone reads that block; one that fuses several modalities keeps the
    # signal block at the summed embedding (the stack lost with a wider signal block at 16 labels)
    for fusion in ("concat", "stack"):
        assert FinetuneModel.default_components(model, ["signal"], fusion, readout=True) == ["signal"]
        assert FinetuneModel.default_components(model, ["expr", "signal"], fusion, readout=True) == ["expr"]
    alone = FinetuneModel(model, ["signal"], "concat", 2, readout=True, components=["signal"])
    fused = FinetuneModel(model, ["expr", "signal"], "stack", 2, readout=True, components=["expr"])
    assert alone.widths == [w + 5] and fused.widths == [8 + 5, 8]
    with torch.no_grad():
        feats = alone.features(batch)
        assert feats.shape == (7, w + 5) and torch.equal(feats[2], torch.zeros(w + 5))
        assert torch.allclose(feats[[0, 1, 3]], got[[0, 1, 3]], atol=1e-6)
        assert torch.allclose(fused.features(batch)[[0, 1, 3], 13:], summed[[0, 1, 3]], atol=1e-6)
    # an explicit request still gets the wider block beside other modalities
    both = FinetuneModel(model, ["expr", "signal"], "stack", 2, readout=True, components=["expr", "signal"])
    assert both.widths == [8 + 5, w + 5]
