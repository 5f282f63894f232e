"""phenoclip.eval.metrics and phenoclip.eval.plots: hand-computed numbers, sklearn parity, valid PNGs."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from phenoclip.eval.metrics import (classification_metrics, expected_calibration_error, mean_sd, regression_metrics,
                                    reliability_bins)
from phenoclip.eval.plots import plot_label_fraction_curve, plot_regression, plot_reliability, plot_roc


def _binary(p1) -> np.ndarray:
    p1 = np.asarray(p1, dtype=float)
    return np.stack([1 - p1, p1], axis=1)


def _random_multiclass(n: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, size=n)
    # informative but imperfect scores: a Dirichlet draw nudged towards the true class
    p = rng.dirichlet(np.ones(c), size=n)
    p[np.arange(n), y] += 0.3
    return y, p / p.sum(axis=1, keepdims=True)


# --- calibration ---------------------------------------------------------------------------------------------

def test_ece_hand_computed():
    # conf  correct  bin
    # .95   yes      9    bin 9: n=2, acc 1/2, conf (.95+.92)/2 = .935, gap .435 -> 2/5 * .435 = .174
    # .92   no       9
    # .65   yes      6    bin 6: n=2, acc 2/2, conf (.65+.62)/2 = .635, gap .365 -> 2/5 * .365 = .146
    # .62   yes      6
    # .55   no       5    bin 5: n=1, acc 0,   conf .55,              gap .55  -> 1/5 * .55  = .110
    # ECE = .174 + .146 + .110 = .430
    proba = np.array([[0.05, 0.95], [0.92, 0.08], [0.35, 0.65], [0.62, 0.38], [0.45, 0.55]])
    y = np.array([1, 1, 1, 0, 0])
    assert expected_calibration_error(y, proba) == pytest.approx(0.43, abs=1e-12)

    bins = reliability_bins(y, proba)
    assert bins["count"].tolist() == [0, 0, 0, 0, 0, 1, 2, 0, 0, 2]
    np.testing.assert_allclose(bins["accuracy"][[5, 6, 9]], [0.0, 1.0, 0.5])
    np.testing.assert_allclose(bins["confidence"][[5, 6, 9]], [0.55, 0.635, 0.935])
    assert np.isnan(bins["accuracy"][0]) and np.isnan(bins["confidence"][7])
    np.testing.assert_allclose(bins["lower"], np.arange(10) / 10)
    np.testing.assert_allclose(bins["upper"], np.arange(1, 11) / 10)


def test_ece_three_classes_two_bins():
    # 3 classes, 4 bins of width .25:
    # conf .5 (bin 2) correct, .4 (bin 1) wrong, .8 (bin 3) correct, .9 (bin 3) wrong
    # bin 1: 1/4 * |0 - .4| = .1; bin 2: 1/4 * |1 - .5| = .125; bin 3: 2/4 * |.5 - .85| = .175 -> ECE .4
    proba = np.array([[0.5, 0.3, 0.2], [0.3, 0.3, 0.4], [0.1, 0.8, 0.1], [0.05, 0.05, 0.9]])
    y = np.array([0, 0, 1, 0])
    assert expected_calibration_error(y, proba, n_bins=4) == pytest.approx(0.4, abs=1e-12)


def test_ece_zero_when_calibrated_by_construction():
    # bin 7: ten predictions at confidence .7, seven right; bin 5: two at .5 (argmax -> class 0), one right
    proba = np.vstack([_binary(np.full(10, 0.7)), _binary(np.full(2, 0.5))])
    y = np.array([1] * 7 + [0] * 3 + [0, 1])
    bins = reliability_bins(y, proba)
    assert bins["count"][7] == 10 and bins["count"][5] == 2
    assert expected_calibration_error(y, proba) == pytest.approx(0.0, abs=1e-12)


def test_confidence_edges_land_in_end_bins():
    # confidence exactly 1.0 and wrong: last bin, ECE = 1
    proba = np.array([[0.0, 1.0]])
    bins = reliability_bins([0], proba, n_bins=10)
    assert bins["count"].tolist() == [0] * 9 + [1]
    assert expected_calibration_error([0], proba) == 1.0
    # a confidence on an inner edge goes to the bin that starts there (bins are [lo, hi))
    assert reliability_bins([0], _binary([0.5]), n_bins=10)["count"][5] == 1
    assert reliability_bins([0], _binary([0.5]), n_bins=2)["count"].tolist() == [0, 1]


@pytest.mark.parametrize("y, proba, match", [
    ([0, 1], np.array([[0.5, 0.5]]), "rows"),
    ([[0, 1]], _binary([0.5, 0.5]), "1-D"),
    ([0, 2], _binary([0.5, 0.5]), "outside"),
    ([0, 1], np.array([[2.0, 1.0], [0.5, 0.5]]), "sum to 1"),
    ([0, 1], np.array([0.5, 0.5]), "2-D"),
    ([0.5, 1.0], _binary([0.5, 0.5]), "integer"),
    ([], np.zeros((0, 2)), "no samples"),
])
def test_ill_arguments_raise(y, proba, match):
    with pytest.raises(ValueError, match=match):
        expected_calibration_error(y, proba)


# --- classification --------------------------------------------------------------------------------------------

def test_binary_hand_example():
    y = np.array([0, 0, 1, 1])
    proba = _binary([0.1, 0.4, 0.35, 0.8])
    m = classification_metrics(y, proba, ["neg", "pos"])
    # pairs (pos, neg) ranked right: (.35>.1), (.8>.1), (.8>.4); wrong: (.35<.4) -> 3/4
    assert m["auroc"] == pytest.approx(0.75)
    # argmax predictions 0, 0, 0, 1: three right; positive class TP 1, FP 0, FN 1 -> P 1, R 1/2, F1 2/3
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(2 / 3)
    # confidences .9 (bin 9, right), .6 and .65 (bin 6, one right), .8 (bin 8, right):
    # 1/4 * .1 + 2/4 * |.5 - .625| + 1/4 * .2 = .025 + .0625 + .05
    assert m["ece"] == pytest.approx(0.1375)
    assert m["n"] == 4
    assert set(m) == {"accuracy", "f1", "auroc", "ece", "n"}


def test_binary_matches_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=200)
    p1 = np.clip(0.3 * y + rng.uniform(0, 0.7, size=200), 0, 1)
    m = classification_metrics(y, _binary(p1), ["a", "b"])
    pred = (p1 > 0.5).astype(int)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p1))
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))


def test_multiclass_matches_sklearn_one_vs_rest():
    classes = ["a", "b", "c", "d"]
    y, p = _random_multiclass(300, 4, seed=1)
    m = classification_metrics(y, p, classes)
    per_class = [roc_auc_score(y == c, p[:, c]) for c in range(4)]
    for name, ref in zip(classes, per_class):
        assert m[f"auroc/{name}"] == pytest.approx(ref)
    assert m["auroc"] == pytest.approx(np.mean(per_class))
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    pred = p.argmax(axis=1)
    assert m["f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    per_f1 = f1_score(y, pred, average=None)
    assert [m[f"f1/{c}"] for c in classes] == pytest.approx(list(per_f1))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["ece"] == pytest.approx(expected_calibration_error(y, p))


def test_multiclass_absent_class_is_nan_and_left_out_of_the_macro():
    y, p = _random_multiclass(120, 4, seed=2)
    keep = y != 2
    y, p = y[keep], p[keep]
    # class 2 is absent from y_true; make sure it is never predicted either
    p[:, 2] = 0.0
    p /= p.sum(axis=1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no sklearn "only one class present" warning either
        m = classification_metrics(y, p, ["a", "b", "c", "d"])
    assert math.isnan(m["auroc/c"]) and math.isnan(m["f1/c"])
    present = [roc_auc_score(y == c, p[:, c]) for c in (0, 1, 3)]
    assert [m["auroc/a"], m["auroc/b"], m["auroc/d"]] == pytest.approx(present)
    assert m["auroc"] == pytest.approx(np.mean(present))
    assert m["f1"] == pytest.approx(f1_score(y, p.argmax(axis=1), average="macro"))


def test_single_class_gives_nan_auroc_not_an_error():
    y = np.zeros(5, dtype=int)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        binary = classification_metrics(y, _binary([0.1, 0.2, 0.7, 0.3, 0.4]), ["neg", "pos"])
        multi = classification_metrics(y, np.full((5, 3), 1 / 3), ["a", "b", "c"])
    assert math.isnan(binary["auroc"]) and binary["accuracy"] == pytest.approx(0.8)
    assert math.isnan(multi["auroc"]) and all(math.isnan(multi[f"auroc/{c}"]) for c in "abc")
    assert multi["accuracy"] == 1.0  # ties go to the first column, class 0


def test_class_names_must_match_columns():
    with pytest.raises(ValueError, match="class names"):
        classification_metrics([0, 1], _binary([0.2, 0.7]), ["only-one"])


# --- regression and repeats ---------------------------------------------------------------------------------------

def test_regression_hand_example():
    # errors .5, 0, .5, 1 -> MAE .5; SS_res = .25 + 0 + .25 + 1 = 1.5; mean 2.5 -> SS_tot = 5; R2 = 1 - 1.5/5
    m = regression_metrics([1, 2, 3, 4], np.array([[1.5], [2.0], [2.5], [5.0]]))
    assert m == {"r2": pytest.approx(0.7), "mae": pytest.approx(0.5), "n": 4}
    with pytest.raises(ValueError, match="values"):
        regression_metrics([1, 2], [1, 2, 3])


def test_mean_sd_groups_in_first_seen_order():
    rows = [
        {"fraction": 0.1, "model": "pretrained", "seed": 0, "auroc": 0.7, "f1": 0.5},
        {"fraction": 0.1, "model": "scratch", "seed": 0, "auroc": 0.6, "f1": float("nan")},
        {"fraction": 0.1, "model": "pretrained", "seed": 1, "auroc": 0.8, "f1": 0.6},
        {"fraction": 1.0, "model": "pretrained", "seed": 0, "auroc": 0.9, "f1": float("nan")},
        {"fraction": 0.1, "model": "scratch", "seed": 1, "auroc": float("nan"), "f1": float("nan")},
        {"fraction": 0.1, "model": "pretrained", "seed": 2, "auroc": 0.9, "f1": 0.7},
    ]
    out = mean_sd(rows, by=["fraction", "model"], metrics=["auroc", "f1"])
    assert [(r["fraction"], r["model"]) for r in out] == [(0.1, "pretrained"), (0.1, "scratch"), (1.0, "pretrained")]
    pre, scratch, full = out
    # .7, .8, .9: mean .8; deviations -.1, 0, .1 -> sd = sqrt(.02 / (3 - 1)) = .1
    assert pre["auroc_mean"] == pytest.approx(0.8) and pre["auroc_sd"] == pytest.approx(0.1)
    assert pre["f1_mean"] == pytest.approx(0.6) and pre["f1_sd"] == pytest.approx(0.1)
    assert pre["n_repeats"] == 3
    # one value left after dropping NaN: sd 0; every value NaN: both NaN
    assert scratch["auroc_mean"] == pytest.approx(0.6) and scratch["auroc_sd"] == 0.0
    assert math.isnan(scratch["f1_mean"]) and math.isnan(scratch["f1_sd"]) and scratch["n_repeats"] == 2
    assert full["auroc_mean"] == pytest.approx(0.9) and full["auroc_sd"] == 0.0 and full["n_repeats"] == 1
    assert list(pre) == ["fraction", "model", "auroc_mean", "auroc_sd", "f1_mean", "f1_sd", "n_repeats"]


# --- plots ----------------------------------------------------------------------------------------------------------

def _assert_png(path, folder):
    import matplotlib.image

    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    assert 300 <= img.shape[0] <= 2000 and 300 <= img.shape[1] <= 2000
    assert sorted(p.name for p in folder.iterdir()) == [path.name]  # no temporary file left behind


def test_plot_roc_binary_and_multiclass(tmp_path):
    y, p = _random_multiclass(80, 3, seed=3)
    for name, yy, pp, classes in [("multi", y, p, ["a", "b", "c"]),
                                  ("binary", (y == 1).astype(int), _binary(p[:, 1]), ["no", "yes"]),
                                  ("absent", np.where(y == 2, 0, y), p, ["a", "b", "c"])]:
        folder = tmp_path / name
        folder.mkdir()
        out = plot_roc(yy, pp, classes, folder / "roc.png", title=name)
        assert out == folder / "roc.png"
        _assert_png(out, folder)


def test_plot_roc_models_draws_one_panel_per_model(tmp_path):
    import matplotlib.image

    from phenoclip.eval.plots import plot_roc_models

    y, p = _random_multiclass(80, 3, seed=3)
    _, q = _random_multiclass(80, 3, seed=4)
    long_title = "disease, test split (n=40), fraction 1, repeat 0, " * 3
    out = plot_roc_models(y, {"pretrained": p, "scratch": q, "logistic_raw": p[:, ::-1]}, ["a", "b", "c"],
                          tmp_path / "roc.png", title=long_title)
    img = matplotlib.image.imread(out)
    assert img.shape[1] > 2.5 * img.shape[0]  # three panels side by side
    with pytest.raises(ValueError, match="scratch"):
        plot_roc_models(y, {"scratch": q[:, :2]}, ["a", "b", "c"], tmp_path / "bad.png")


def test_long_titles_are_wrapped_not_cut():
    from phenoclip.eval.plots import wrap_title

    title = "disease, test split (n=40), pretrained, fraction 1: ECE 0.052 (10 bins)"
    lines = wrap_title(title, 55).split("\n")
    assert len(lines) == 2 and all(len(line) <= 55 for line in lines) and " ".join(lines) == title


def test_plot_reliability(tmp_path):
    y, p = _random_multiclass(80, 3, seed=4)
    _assert_png(plot_reliability(y, p, tmp_path / "rel.png", n_bins=5, title="test"), tmp_path)


def test_plot_label_fraction_curve(tmp_path):
    gain = {"pretrained": 0.05, "scratch": 0.0}
    rows = [{"fraction": f, "model": m, "seed": s, "auroc": 0.6 + 0.2 * f + gain[m] + 0.01 * s}
            for f in (0.01, 0.1, 1.0) for m in gain for s in range(3)]
    summary = mean_sd(rows, by=["fraction", "model"], metrics=["auroc"])
    _assert_png(plot_label_fraction_curve(summary, "auroc", tmp_path / "curve.png"), tmp_path)
    with pytest.raises(ValueError, match="f1_mean"):
        plot_label_fraction_curve(summary, "f1", tmp_path / "other.png")


def test_plot_regression(tmp_path):
    rng = np.random.default_rng(5)
    t = rng.normal(size=50)
    _assert_png(plot_regression(t, t + rng.normal(scale=0.3, size=50), tmp_path / "reg.png"), tmp_path)


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def half_write(self, fname, **kwargs):
        with open(fname, "wb") as fh:
            fh.write(b"\x89PN")
        raise RuntimeError("simulated crash while writing")

    monkeypatch.setattr(Figure, "savefig", half_write)
    with pytest.raises(RuntimeError, match="simulated"):
        plot_regression([1.0, 2.0, 3.0], [1.0, 2.5, 2.0], tmp_path / "reg.png")
    assert list(tmp_path.iterdir()) == []


def test_plots_module_does_not_import_matplotlib():
    code = "import sys, phenoclip.eval.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
