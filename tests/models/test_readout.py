"""The genotype read-out (phenoclip.models.readout, phenoclip.pretrain.readout): fitting, use, compatibility."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import RidgeCV
from sklearn.metrics import roc_auc_score

from phenoclip.data.batch import DOSAGE, PRESENT
from phenoclip.eval.linear_models import fit_logistic, probe_scaling
from phenoclip.models.finetune import FinetuneModel
from phenoclip.models.multimodal import MultimodalModel, build_model
from phenoclip.models.readout import GenotypeReadout, fits_gene_readout
from phenoclip.pretrain import readout as fitting

SHAPES = {"gene": {"n_variants": 40}, "expr": {"n_genes": 12}}


def _planted(n: int, v: int = 400, causal: int = 5, seed: int = 0):
    """Dosages, a liability from ``causal`` SNPs, and an 8-wide teacher embedding that carries it noisily."""
    rng = np.random.default_rng(seed)
    freq = rng.uniform(0.1, 0.5, v)
    dos = rng.binomial(2, freq, size=(n, v)).astype(np.float32)
    effects = np.zeros(v)
    effects[:causal] = rng.choice([-1.0, 1.0], causal)
    liability = (dos - 2 * freq) @ effects
    liability /= liability.std()
    teacher = np.c_[liability + 0.7 * rng.normal(size=n), rng.normal(size=(n, 7))]
    teacher /= np.linalg.norm(teacher, axis=1, keepdims=True)
    label = (liability + 0.5 * rng.normal(size=n) > 0).astype(int)
    return dos, teacher, label


def test_the_read_out_carries_a_planted_liability_to_new_patients_better_than_few_labels_do():
    # 600 unlabelled patients teach the read-out; 30 labelled ones fit each probe; 400 new ones score them
    dos, teacher, label = _planted(1030)
    unl, lab, new = slice(0, 600), slice(600, 630), slice(630, 1030)
    fit = fitting.fit_gene_readout(lambda r: dos[unl][r], dos.shape[1], np.ones(600, bool),
                                   {"expr": (teacher[unl], np.ones(600, bool))})
    # five causal SNPs of 400: the folds prefer the multi-task elastic net to the screened ridge
    assert fit is not None and fit.patients == 600 and fit.method == fitting.SPARSE and fit.alpha > 0
    r = GenotypeReadout(dos.shape[1], 8)
    r.set_fit(fit.mean, fit.scale, fit.weight, fit.bias, fit.alpha)
    z = r({DOSAGE: torch.as_tensor(dos)}).double().numpy()

    def probe_auc(x):
        mean, scale = probe_scaling(x[lab])
        xs = (x - mean) / scale
        return roc_auc_score(label[new], fit_logistic(xs[lab], label[lab], 2).predict(xs[new])[:, 1])

    read_out, raw = probe_auc(z), probe_auc(dos.astype(np.float64))
    # few of the 400 variants kept, the 5 causal ones among them
    assert fit.variants < 100 and set(range(5)) <= set(np.flatnonzero(np.abs(fit.weight).sum(0) > 0))
    # measured: 0.930 against 0.575 (the teacher's own liability dimension: 0.854; the screened ridge,
    # the read-out before the elastic net was a candidate, 0.817; the ridge over every variant 0.734)
    assert read_out > 0.78 and read_out > raw + 0.15, (read_out, raw)


def test_screening_beats_the_dense_ridge_on_new_patients_and_keeps_every_variant_when_few_patients():
    """The teacher's liability from 5 of 400 SNPs: the screened read-out predicts it on new patients
    better than a ridge over every variant; below SCREEN_MIN_PATIENTS nothing is screened."""
    dos, teacher, _ = _planted(1000, seed=1)
    x = (dos - dos.mean(0)) / dos.std(0)
    fit_rows, new = slice(0, 600), slice(600, 1000)
    k = fitting.screened_count(x[fit_rows], teacher[fit_rows])
    assert k < 400 and k in fitting.screen_grid(400)
    order = fitting.association_order(x[fit_rows], teacher[fit_rows])
    assert set(order[:5]) == set(range(5))          # the causal SNPs rank first

    def held_out_error(keep):
        m = RidgeCV(alphas=fitting.ALPHAS).fit(x[fit_rows][:, keep], teacher[fit_rows])
        # the liability's dimension: the other 7 are noise no read-out can predict
        return float(((m.predict(x[new][:, keep]) - teacher[new])[:, 0] ** 2).sum())

    screened, dense = held_out_error(order[:k]), held_out_error(np.arange(400))
    assert screened < 0.7 * dense, (screened, dense)     # measured: 28.1 against 58.1 (k = 25)
    assert fitting.screened_count(x[:fitting.SCREEN_MIN_PATIENTS - 1], teacher[:fitting.SCREEN_MIN_PATIENTS - 1]) == 400
    assert fitting.screen_grid(100) == [25, 50, 100] and fitting.screen_grid(20) == [20]


def _teacher_error(fit, dos, teacher):
    x = (dos - fit.mean) / fit.scale
    return float(((x @ fit.weight.T + fit.bias - teacher) ** 2).sum())


@pytest.mark.parametrize("causal", [5, 400])
def test_the_folds_choose_the_elastic_net_for_few_causal_variants_and_the_ridge_for_many(causal, monkeypatch):
    """A liability from 5 of 400 SNPs: the multi-task elastic net is chosen, keeps the causal ones
    and predicts the teacher on new patients better than the screened ridge would; from all 400
    (each small) the ridge is chosen, reading every variant."""
    dos, teacher, _ = _planted(1000, v=400, causal=causal, seed=1)
    everyone = np.ones(600, bool)

    def fit():
        return fitting.fit_gene_readout(lambda r: dos[:600][r], 400, everyone, {"expr": (teacher[:600], everyone)})

    chosen = fit()
    if causal == 5:
        assert chosen.method == fitting.SPARSE and chosen.variants < fitting.SCREEN_MIN_VARIANTS
        assert set(range(5)) <= set(np.flatnonzero(np.abs(chosen.weight).sum(0) > 0))
        monkeypatch.setattr(fitting, "SPARSE_ALPHAS", 0)  # no penalty to try: the screened ridge alone
        ridge = fit()
        assert ridge.method == fitting.RIDGE and ridge.variants == 25
        # measured: 368.9 against 378.5 on the 400 new patients (8 kept against 25; 7 of the 8
        # teacher dimensions are noise that no read-out predicts)
        assert _teacher_error(chosen, dos[600:], teacher[600:]) < _teacher_error(ridge, dos[600:], teacher[600:]) - 4
    else:
        assert chosen.method == fitting.RIDGE and chosen.variants == 400


def test_the_elastic_net_must_win_by_more_than_the_folds_noise():
    # per-fold held-out errors (folds x settings); each candidate judged at its best setting
    ridge = np.array([[10.0, 9.0], [11.0, 9.5], [10.5, 9.2], [10.2, 9.1], [10.8, 9.4]])
    steady = ridge[:, [1]] - np.array([[0.5], [0.6], [0.4], [0.5], [0.55]])  # the 2,000-patient cohort's kind
    noisy = ridge[:, [1]] - np.array([[0.6], [-0.5], [0.4], [-0.3], [0.2]])  # lower in sum, within noise
    assert fitting.clearly_better(ridge, np.c_[steady, steady + 1])
    assert noisy.sum() < ridge[:, 1].sum() and not fitting.clearly_better(ridge, noisy)
    assert not fitting.clearly_better(ridge, np.zeros((5, 0)))


def test_missing_calls_add_nothing_and_shapes_are_checked():
    dos, teacher, _ = _planted(60, v=30)
    dos[3, :5] = -1
    fit = fitting.fit_gene_readout(lambda r: dos[r], 30, np.ones(60, bool), {"expr": (teacher, np.ones(60, bool))})
    r = GenotypeReadout(30, 8)
    assert not r.is_fitted
    r.set_fit(fit.mean, fit.scale, fit.weight, fit.bias, fit.alpha)
    row = torch.as_tensor(dos[3:4])
    imputed = row.clone()
    imputed[0, :5] = torch.as_tensor(fit.mean[:5], dtype=torch.float32)
    assert torch.allclose(r({DOSAGE: row}), r({DOSAGE: imputed}), atol=1e-5)
    with pytest.raises(ValueError, match="weight must have shape"):
        r.set_fit(fit.mean, fit.scale, fit.weight[:, :5], fit.bias, 1.0)


def test_too_few_patients_give_no_read_out_and_large_inputs_are_subsampled(monkeypatch):
    dos, teacher, _ = _planted(40, v=30)
    present = np.zeros(40, bool)
    present[:fitting.MIN_PATIENTS - 1] = True
    read = []

    def reader(rows):
        read.append(np.asarray(rows).copy())
        return dos[rows]

    assert fitting.fit_gene_readout(reader, 30, present, {"expr": (teacher, np.ones(40, bool))}) is None
    # a patient with genotypes but no teacher modality is not used
    assert fitting.fit_gene_readout(reader, 30, np.ones(40, bool), {"expr": (teacher, present)}) is None
    assert not read                                   # nothing read when no fit can be made
    monkeypatch.setattr(fitting, "MAX_CELLS", 20 * 30)
    fit = fitting.fit_gene_readout(reader, 30, np.ones(40, bool), {"expr": (teacher, np.ones(40, bool))})
    # only the picked rows are read: a seeded subset of 20
    assert fit.patients == 20 and len(read) == 1 and len(read[0]) == 20
    assert np.array_equal(read[0], fitting.fit_rows(np.ones(40, bool), np.ones(40), 30))


def test_consensus_averages_the_modalities_each_patient_has():
    a, b = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.0, 1.0], [1.0, 1.0]])
    mean, count = fitting.consensus({"expr": (a, np.array([True, False])), "mri": (b, np.array([True, True]))})
    assert np.allclose(mean, [[0.5, 0.5], [1.0, 1.0]]) and list(count) == [2, 1]


def test_probe_embedding_uses_a_fitted_read_out_and_encode_never_does():
    torch.manual_seed(0)
    model = build_model(SHAPES, "tiny", readouts=True)
    assert set(model.readouts) == {"gene"} and not model.has_readout("gene")
    batch = {DOSAGE: torch.randint(0, 3, (5, 40)).float(), PRESENT: torch.ones(5, dtype=torch.bool)}
    model.eval()
    with torch.no_grad():
        enc = model.encode("gene", batch)
        assert torch.equal(model.probe_embedding("gene", batch), enc)     # unfitted: the encoder
        rng = np.random.default_rng(0)
        model.readouts["gene"].set_fit(np.ones(40), np.full(40, 0.5), rng.normal(size=(64, 40)), np.zeros(64), 10.0)
        probe = model.probe_embedding("gene", batch)
        assert torch.equal(model.encode("gene", batch), enc)
        # the read-out's linear score, not normalised (its norm carries the strength of the prediction)
        assert torch.allclose(probe, model.readouts["gene"](batch)) and not torch.allclose(probe.norm(dim=1), torch.ones(5))
        ft = FinetuneModel(model, ["gene"], "concat", 2, readout=True)
        assert torch.allclose(ft.features({"gene": batch}), probe)
        assert torch.allclose(FinetuneModel(model, ["gene"], "concat", 2).features({"gene": batch}), enc)
    # the read-out survives the model's config round trip and its state dict
    twin = MultimodalModel.from_config(model.config)
    twin.load_state_dict(model.state_dict())
    assert twin.has_readout("gene")


def test_the_read_out_is_built_only_where_it_can_be_fitted():
    assert fits_gene_readout(True, ["clip"], ["gene", "expr"])
    assert not fits_gene_readout(False, ["clip"], ["gene", "expr"])
    assert not fits_gene_readout(True, ["scarf"], ["gene"])
    assert not fits_gene_readout(True, ["clip"], ["expr", "mri"])
    assert not build_model(SHAPES, "tiny").readouts


def test_ridge_takes_the_svd_path_with_more_patients_than_variants_and_agrees_with_the_default():
    """``ridge_cv`` only changes how RidgeCV's GCV is computed (3.3-3.8x faster at n > p), not its answer."""
    dos, teacher, _ = _planted(300, v=60)
    x = (dos - dos.mean(0)) / dos.std(0)
    long, wide = fitting.ridge_cv(300, 60), fitting.ridge_cv(40, 60)
    assert long.gcv_mode == "svd" and wide.gcv_mode is None
    fast, default = long.fit(x, teacher), RidgeCV(alphas=fitting.ALPHAS).fit(x, teacher)
    assert fast.alpha_ == default.alpha_ and fast.alpha_ != fitting.ALPHAS[0]
    np.testing.assert_allclose(fast.coef_, default.coef_, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(fast.intercept_, default.intercept_, rtol=1e-7, atol=1e-10)
