"""``--suite classify``: hand-made features, the ElasticNet baseline, the scratch networks, the verdict."""

from __future__ import annotations

import numpy as np
import pytest

from phenoclip_bench import classify_report
from phenoclip_bench.classify_features import (channel_features, early_fusion, fit_elasticnet, full_proba,
                                               gene_features, volume_features)
from phenoclip_bench.classify_scratch import (TrainSettings, predict_proba, signal_cnn1d, train_classifier,
                                              validation_slice)
from phenoclip.eval.metrics import classification_metrics


def _spikes(beat_times: np.ndarray, rate: float, seconds: float) -> np.ndarray:
    x = np.random.default_rng(0).normal(0, 0.05, int(rate * seconds))
    for t in beat_times:
        x[int(round(t * rate))] += 5.0
    return x


def test_channel_features_heart_rate_and_irregularity():
    rate, seconds = 100.0, 10.0
    regular = channel_features(_spikes(np.arange(0.5, 9.6, 1.0), rate, seconds), rate)
    assert regular[0] == pytest.approx(60.0, abs=0.1)      # one beat a second
    assert regular[1] == pytest.approx(1.0, abs=0.02)      # mean RR
    assert regular[2] < 0.02 and regular[3] < 0.02         # RR SD and RMSSD of a regular rhythm
    rr = np.random.default_rng(1).uniform(0.5, 1.3, 12)
    irregular = channel_features(_spikes(0.3 + np.cumsum(rr)[np.cumsum(rr) < 9.5], rate, seconds), rate)
    assert irregular[2] > 0.1 and irregular[3] > 0.1
    bands = regular[6:12]
    assert bands.sum() == pytest.approx(1.0, abs=1e-6)     # relative band powers


def test_volume_features_see_the_lateral_lesion():
    rng = np.random.default_rng(0)
    brain = rng.normal(0, 1, (16, 16, 16))
    left, right = brain.copy(), brain.copy()
    left[2:5, 6:9, 6:9] += 6.0
    right[11:14, 6:9, 6:9] += 6.0
    fl, fr = volume_features(left), volume_features(right)
    # bright_left, bright_right follow 16 histogram bins, 7 percentiles, mean and sd
    assert fl[25] - fl[26] > 15 and fr[26] - fr[25] > 15
    assert fl[:16].sum() == pytest.approx(1.0, abs=0.01)
    assert len(fl) == 16 + 7 + 2 + 2 + 4 ** 3


def test_gene_features_impute_with_training_means_and_mark_absent(known_vcf, tmp_path):
    from phenoclip.preprocess.variants import VariantSettings, convert_vcf

    store = tmp_path / "gene.h5"
    convert_vcf(known_vcf, store, VariantSettings())
    samples = ["s1", "s2", "s3", "s4", "absent"]
    train = np.array([True, True, True, False, True])
    x, present, names = gene_features(store, samples, train)
    assert present.tolist() == [True, True, True, True, False]
    assert np.isnan(x[4]).all() and not np.isnan(x[:4]).any()
    dos = [i for i, n in enumerate(names) if n.startswith("dosage:")]
    assert len(dos) == 5 and names[dos[0]] == "dosage:rs1"
    # rs1: s3 and s4 are missing; the training mean of rs1 is (1 + 2) / 2 over s1, s2 -> standardised 0
    assert x[2, dos[0]] == pytest.approx(0.0) and x[3, dos[0]] == pytest.approx(0.0)
    assert x[0, dos[0]] == pytest.approx(-x[1, dos[0]])


def test_early_fusion_imputes_training_means_and_adds_indicators():
    a = np.array([[1.0, 2.0], [3.0, 4.0], [np.nan, np.nan], [100.0, 100.0]])
    b = np.array([[0.0], [np.nan], [2.0], [4.0]])
    train = np.array([True, True, True, False])
    x = early_fusion({"a": a, "b": b}, train)
    assert x.shape == (4, 2 + 1 + 1 + 1)
    assert x[2, :2].tolist() == [2.0, 3.0] and x[2, 2] == 1.0   # mean of training rows 0 and 1, missing flag
    assert x[1, 3] == 1.0 and x[1, 4] == 1.0                    # b: mean of 0 and 2, missing flag
    assert x[3, :3].tolist() == [100.0, 100.0, 0.0]             # test rows keep their values


def test_elasticnet_recovers_planted_signal_and_matches_sklearn_metrics():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    n, p = 240, 300
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 1, (n, p))
    x[:, 0] += 1.5 * (y == 1)
    x[:, 1] += 1.5 * (y == 2)
    train = np.arange(n) < 180
    model, chosen = fit_elasticnet(x[train], y[train], {"C": [0.05, 0.5], "l1_ratio": [0.5]}, seed=0)
    proba = full_proba(model, x[~train], 3)
    m = classification_metrics(y[~train], proba, ["a", "b", "c"])
    assert m["auroc"] == pytest.approx(roc_auc_score(y[~train], proba, multi_class="ovr", average="macro"))
    assert m["auroc"] > 0.8 and chosen["C"] in (0.05, 0.5)
    coef = np.abs(model[-1].coef_)
    assert coef[:, :2].max() > 5 * np.median(coef[:, 2:])      # the planted features carry the weight
    shuffled, _ = fit_elasticnet(x[train], rng.permutation(y[train]), {"C": [0.05], "l1_ratio": [0.5]}, seed=0)
    assert classification_metrics(y[~train], full_proba(shuffled, x[~train], 3), list("abc"))["auroc"] < 0.7


def test_scratch_cnn_learns_planted_rhythm_and_stops_early():
    import torch

    torch.set_num_threads(1)  # as the suite runs; several threads only fight over a small machine
    rng = np.random.default_rng(0)
    n, length = 120, 128
    y = np.arange(n) % 2
    t = np.arange(length) / 50.0
    freq = np.where(y == 1, 6.0, 2.0)[:, None]
    x = np.stack([np.sin(2 * np.pi * freq * t + rng.uniform(0, 6, (n, 1))) + rng.normal(0, 0.5, (n, length)),
                  rng.normal(0, 1, (n, length))], axis=1).astype(np.float32)
    val = validation_slice(y[:90], 0.2, seed=0)
    assert val.sum() == 18 and y[:90][val].sum() == 9          # stratified
    torch.manual_seed(0)  # the network's initial weights: without it they depend on what ran before
    net = signal_cnn1d(2, 2, width=8)
    log = train_classifier(net, x[:90], y[:90], TrainSettings(max_epochs=10, patience=3), seed=0)
    assert 1 <= log.best_epoch <= log.epochs_run <= 10 and log.n_fit == 72 and log.n_val == 18
    proba = predict_proba(net, x[90:])
    assert np.allclose(proba.sum(1), 1.0)
    assert classification_metrics(y[90:], proba, ["slow", "fast"])["auroc"] > 0.9


def _row(modality, method, auroc, f1):
    return [modality, method, auroc, f1, 100, 20]


def test_note_says_where_pretrained_falls_short():
    rows = [_row("mri", classify_report.PROBE, 0.6, 0.4), _row("mri", classify_report.ENET, 0.8, 0.6),
            _row("expr", classify_report.PROBE, 0.95, 0.9), _row("expr", classify_report.ENET, 0.9, 0.95)]
    text = classify_report.shortfalls(rows, ["expr", "mri"])
    auroc_part, f1_part = text.split("On macro F1")
    assert "falls short of a baseline on 1 of 2 rows: mri (0.600 vs 0.800" in auroc_part
    assert "expr (0.950 vs 0.900" in auroc_part.split("matches or beats")[1]
    assert "falls short of a baseline on 2 of 2 rows" in f1_part
    clean = classify_report.shortfalls([_row("gene", classify_report.PROBE, 0.7, 0.5), _row("gene", classify_report.ENET, 0.6, 0.4)],
                                ["gene"])
    assert "falls short" not in clean and "no baseline beats" in clean


def test_best_baseline_ignores_the_pretrained_rows():
    r = classify_report.Rows(["a", "b"])
    r.rows = [_row("all", classify_report.PROBE, 0.99, 0.9), _row("mri", classify_report.ENET, 0.7, 0.5),
              _row("signal", classify_report.SCRATCH["signal"], 0.8, 0.5), _row("all", classify_report.ENET, 0.75, 0.5)]
    assert classify_report.best_baseline(r) == ("signal", classify_report.SCRATCH["signal"])
    assert classify_report.best_baseline(r, "all") == ("all", classify_report.ENET)
