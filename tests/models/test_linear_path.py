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
