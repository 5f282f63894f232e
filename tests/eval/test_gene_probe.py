"""The gene probe's honest choice (phenoclip.eval.gene_probe) on planted blocks where the answer is clear."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from phenoclip.eval.gene_probe import fit_gene_probe
from phenoclip.eval.metrics import classification_metrics
from phenoclip.models.readout import GenotypeReadout

E, S = 8, 6


def _auroc(y, p):
    return classification_metrics(y, p, ["a", "b"])["auroc"]


def _cohort(n: int, seed: int, readout_generalises: bool):
    """Binary labels; SNP 0 carries them; the read-out's in-sample block carries them strongly (the
    pull towards the teacher), its cross-fitted block only where ``readout_generalises``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    snps = rng.normal(size=(n, S))
    snps[:, 0] += 0.9 * (2 * y - 1)
    in_sample = rng.normal(size=(n, E))
    in_sample[:, 0] += 2.0 * (2 * y - 1)
    honest = rng.normal(size=(n, E))
    if readout_generalises:
        honest[:, 0] += 2.0 * (2 * y - 1)
    return y, np.hstack([in_sample, snps]), np.hstack([honest, snps])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_read_out_that_only_fits_its_own_patients_loses_the_choice_to_the_snps(seed):
    y, z, z_honest = _cohort(150, seed, readout_generalises=False)
    probe = fit_gene_probe(z, z_honest, y, E, 2, seed)
    assert probe.chosen["gene_probe"] == "eqtl", probe.chosen
    assert np.all(probe.weight[:, :E] == 0) and np.any(probe.weight[:, E:] != 0)
    # judged in-sample it would have looked best: the choice reads the cross-fitted values
    naive = fit_gene_probe(z, z, y, E, 2, seed)
    assert naive.chosen["gene_probe"] != "eqtl"
    # and on new patients (whose read-out is as the cross-fitted one) the SNPs win
    y_new, _, z_new = _cohort(400, seed + 100, readout_generalises=False)
    assert _auroc(y_new, probe.predict(z_new)) > _auroc(y_new, naive.predict(z_new)) + 0.05


@pytest.mark.parametrize("seed", [0, 1])
def test_a_read_out_that_generalises_keeps_its_weight(seed):
    y, z, z_honest = _cohort(150, seed, readout_generalises=True)
    probe = fit_gene_probe(z, z_honest, y, E, 2, seed)
    assert probe.chosen["gene_probe"] in ("readout", "average"), probe.chosen
    assert np.any(probe.weight[:, :E] != 0)
    scores = probe.chosen["gene_probe_scores"]
    assert scores["readout"] > scores["eqtl"]


def test_the_average_is_the_mean_of_the_two_probes_logits_and_few_patients_keep_the_read_out():
    y, z, z_honest = _cohort(150, 0, readout_generalises=True)
    probe = fit_gene_probe(z, z_honest, y, E, 2, 0)
    alone = {b: fit_gene_probe(z[:, cols], z_honest[:, cols], y, len(range(*cols.indices(E + S))), 2, 0)
             for b, cols in (("readout", slice(0, E)), ("eqtl", slice(E, E + S)))}
    if probe.chosen["gene_probe"] == "average":
        expected = 0.5 * np.hstack([alone["readout"].weight, alone["eqtl"].weight])
        np.testing.assert_allclose(probe.weight, expected, atol=1e-10)
    # a block without SNP columns, or too few patients of a class for the folds: the read-out
    assert fit_gene_probe(z[:, :E], z_honest[:, :E], y, E, 2, 0).chosen["gene_probe"] == "readout"
    few = np.r_[np.flatnonzero(y == 0)[:10], np.flatnonzero(y == 1)[:1]]
    assert fit_gene_probe(z[few], z_honest[few], y[few], E, 2, 0).chosen["gene_probe"] == "readout"


def test_a_regression_target_is_chosen_by_r2():
    rng = np.random.default_rng(4)
    n = 160
    snps = rng.normal(size=(n, S))
    target = snps[:, 1] + 0.3 * rng.normal(size=n)
    z = np.hstack([rng.normal(size=(n, E)) + target[:, None], snps])
    z_honest = np.hstack([rng.normal(size=(n, E)), snps])
    probe = fit_gene_probe(z, z_honest, (target - target.mean()) / target.std(), E, None, 0)
    assert probe.chosen["gene_probe"] == "eqtl"
    assert probe.weight.shape == (1, E + S)


def test_the_read_out_keeps_cross_fitted_values_and_eqtl_snps_and_checks_them():
    r = GenotypeReadout(10, 4, n_patients=5)
    assert not r.has_choice and r.config == {"n_features": 10, "n_patients": 5}
    r.set_fit(np.zeros(10), np.ones(10), np.ones((4, 10)), np.zeros(4), 1.0)
    r.set_crossfit(np.array([0, 3]), np.ones((2, 4)))
    r.set_eqtl(np.array([7, 2]))
    assert r.has_choice and list(r.eqtl_index) == [2, 7]
    x = torch.tensor([[0.0, 1, 2, 0, 0, 0, 0, -1, 0, 0]])
    # standardised dosages of the SNPs in ascending order; a missing call (< 0) at the mean, 0
    assert r.eqtl_dosages({"dosage": x}).tolist() == [[2.0, 0.0]]
    with pytest.raises(ValueError):
        r.set_crossfit(np.array([5]), np.ones((1, 4)))
    with pytest.raises(ValueError):
        r.set_eqtl(np.array([10]))
    assert GenotypeReadout(10, 4).config == {"n_features": 10}  # older checkpoints' layout
