"""``--suite ssl``: the notes say where SSL loses, the raw-feature reference learns planted signal and
scores like scikit-learn, and the fine-tuning runs share one test split and one random-init baseline."""

from __future__ import annotations

import json

import numpy as np
import pytest

from phenoclip_bench import BenchContext
from phenoclip_bench.ssl import (feasible_fractions, finetune_all, labels_in,
                                 raw_features)
from phenoclip_bench.ssl_plots import RANDOM, RAW, compare_to_random, plot_ssl_curves, table_note, tables_for

CLASSES = ["control", "neuro", "cardio"]


def _rows(aurocs: list[float], accs: list[float], fractions=(0.1, 0.5, 1.0)) -> list[dict]:
    return [{"fraction": f, "n_train_mean": 10.0 * (i + 1), "auroc_mean": a, "auroc_sd": 0.01,
             "accuracy_mean": c, "accuracy_sd": 0.02, "n_repeats": 3}
            for i, (f, a, c) in enumerate(zip(fractions, aurocs, accs))]


def _methods() -> dict[str, list[dict]]:
    """SCARF loses to random init in AUROC at 0.5 (a tie) and in accuracy at 0.1; BYOL always wins."""
    return {"scarf": _rows([0.80, 0.70, 0.95], [0.50, 0.60, 0.90]),
            "byol": _rows([0.85, 0.90, 0.97], [0.70, 0.80, 0.95]),
            RANDOM: _rows([0.60, 0.70, 0.80], [0.55, 0.50, 0.70]),
            RAW: _rows([0.90, 0.92, 0.96], [0.80, 0.85, 0.90])}


def test_notes_name_every_fraction_where_ssl_does_not_beat_random_init():
    methods = _methods()
    assert compare_to_random(methods) == {"scarf": {"auroc": [0.5], "accuracy": [0.1]},
                                          "byol": {"auroc": [], "accuracy": []}}
    facts = {"n_test": 36, "n_labelled": 177, "n_test_held_out_of_pretraining": 36}
    cfg = {"repeats": 3, "pretrain_epochs": 40, "full_epochs": 30}
    note = table_note("expr", "linear", methods, facts, cfg)
    assert "**SCARF does not beat random init** in AUROC at fraction(s) 0.5; accuracy at fraction(s) 0.1." in note
    assert "BYOL beats random init at every fraction" in note
    # against raw features: SCARF loses everywhere in AUROC; BYOL only at 0.1 and 0.5
    assert "**SCARF does not beat raw features + LR** in AUROC at fraction(s) 0.1, 0.5, 1" in note
    assert "**BYOL does not beat raw features + LR** in AUROC at fraction(s) 0.1, 0.5;" in note
    assert "Random init itself falls below raw features + LR in AUROC at 3 of 3 fractions" in note
    assert "Caution" not in note  # raw AUROC 0.96: the store carries signal
    weak = {**methods, RAW: _rows([0.50, 0.55, 0.60], [0.3, 0.3, 0.4])}
    assert "little disease signal" in table_note("gene", "full", weak, facts, cfg)


def test_tables_hold_every_method_and_metric_per_fraction(tmp_path):
    facts = {"n_test": 36, "n_labelled": 177, "n_test_held_out_of_pretraining": 36}
    cfg = {"repeats": 3, "pretrain_epochs": 40, "full_epochs": 30}
    tables = tables_for("expr", {"linear": _methods(), "full": _methods()}, facts, cfg)
    assert len(tables) == 2 and "linear" in tables[0].title and "full" in tables[1].title
    t = tables[0]
    assert t.columns == ["method", "metric", "0.1 (n=10)", "0.5 (n=20)", "1 (n=30)"]
    assert [r[:2] for r in t.rows] == [[m, metric] for metric in ("AUROC", "accuracy")
                                       for m in ("scarf", "byol", RANDOM, RAW)]
    assert t.rows[0][2] == "0.800 ± 0.010" and t.rows[6][4] == "0.700 ± 0.020"
    png = plot_ssl_curves({"linear": _methods(), "full": _methods()}, tmp_path / "curves.png", "expr", 36)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> dict:
    """An expression store of 120 patients x 30 genes; disease class c raises genes 3c..3c+2 fourfold."""
    from phenoclip.preprocess.expression import convert_expression

    root = tmp_path_factory.mktemp("ssl_planted")
    rng = np.random.default_rng(0)
    samples = [f"S{i:03d}" for i in range(120)]
    y = np.repeat([0, 1, 2], 40)
    counts = rng.poisson(50, size=(120, 30)).astype(float)
    for c in range(3):
        counts[y == c, 3 * c:3 * c + 3] *= 4
    table = root / "expr.tsv"
    table.write_text("sample\t" + "\t".join(f"G{g}" for g in range(30)) + "\n" + "".join(
        s + "\t" + "\t".join(f"{v:.0f}" for v in row) + "\n" for s, row in zip(samples, counts)))
    convert_expression(table, root / "expr.h5")
    labels = root / "labels.tsv"
    # ten extra labelled patients without expression: they must be left out, as run_finetune does
    labels.write_text("sample\tdisease\n" + "".join(f"{s}\t{CLASSES[c]}\n" for s, c in zip(samples, y))
                      + "".join(f"X{i}\tneuro\n" for i in range(10)))
    return {"root": root, "store": root / "expr.h5", "labels": labels, "samples": samples, "y": y}


def test_labels_and_fractions_of_the_planted_store(planted):
    samples, x = raw_features(planted["store"])
    assert samples == planted["samples"] and x.shape == (120, 30)
    task = labels_in(planted["labels"], samples)
    assert len(task.samples) == 120  # the X* patients (no expression) are gone
    assert feasible_fractions(planted["store"], planted["labels"]) == [0.02, 0.05, 0.1, 0.2, 0.5, 1.0]


def test_finetune_runs_share_split_and_one_random_init(planted, tmp_path):
    """Two tiny SCARF / VIME encoders: one scratch baseline, identical test splits, CLI commands."""
    from phenoclip.pretrain.settings import PretrainSettings
    from phenoclip.pretrain.run import run_pretrain

    checkpoints = {}
    for objective in ("scarf", "vime"):
        out = tmp_path / objective
        run_pretrain(PretrainSettings(modalities=["expr"], data=[str(planted["store"])], objectives=[objective],
                                    architectures={"expr": "mlp"}, epochs=2, seed=0, val_fraction=0.3,
                                    device="cpu"), out, log=lambda s: None)
        checkpoints[objective] = out
    ctx = BenchContext(out=tmp_path, cohort=None, patients=None, variants=None, quick=True, seed=0,
                       work=tmp_path / "work")
    ctx.work.mkdir()
    methods, commands, facts = finetune_all(ctx, "expr", planted["store"], planted["labels"], checkpoints,
                                            "linear", [0.1, 1.0], 2, 5)
    assert list(methods) == ["scarf", RANDOM, RAW, "vime"]
    assert sorted(facts["classes"]) == sorted(CLASSES)
    assert all([r["fraction"] for r in rows] == [0.1, 1.0] for rows in methods.values())
    assert facts["n_test"] == len(facts["test_samples"]) == 24 and facts["n_labelled"] == 120
    # the encoders share their pretraining validation patients (same seed), and the count of test patients
    # among them is what the table note reports
    validation = [json.loads((c / "state.json").read_text())["split"]["validation"] for c in checkpoints.values()]
    assert validation[0] == validation[1]
    assert facts["n_test_held_out_of_pretraining"] == len(set(facts["test_samples"]) & set(validation[0])) > 12
    assert "--baseline scratch,logistic" in commands[0] and "--baseline none" in commands[1]
    assert all("--mode linear --label-fractions 0.1,1 --repeats 2" in c for c in commands)
    # the planted signal survives a 2-epoch encoder's frozen features (chance AUROC: 0.5); the raw-feature
    # regression (C by inner CV) finds it too
    assert methods["scarf"][-1]["auroc_mean"] > 0.8 and methods[RAW][-1]["auroc_mean"] > 0.95
    # the raw-feature rows by hand: the same test split and nested subsets, the shared fitting functions
    from phenoclip.eval.linear_models import fit_logistic
    from phenoclip.eval.metrics import classification_metrics
    from phenoclip.eval.raw_features import fuse
    from phenoclip.finetune.labels import fraction_orders, fraction_subset

    samples, x = raw_features(planted["store"])
    task = labels_in(planted["labels"], samples)
    test = np.array([s in set(facts["test_samples"]) for s in task.samples])
    x = x[[samples.index(s) for s in task.samples]]
    by_hand = []
    for r in range(2):
        idx = fraction_subset(task, fraction_orders(task, ~test, 1000 * (r + 1)), 0.1)
        fit = np.zeros(len(task.samples), bool)
        fit[idx] = True
        z = fuse({"expr": (x, np.ones(len(x), bool))}, fit)
        proba = fit_logistic(z[idx], task.y[idx], 3, 31 * r).predict(z[test])
        by_hand.append(classification_metrics(task.y[test], proba, task.classes)["auroc"])
    assert methods[RAW][0]["auroc_mean"] == pytest.approx(np.mean(by_hand), abs=1e-9)


def test_raw_dosages_keep_missing_calls_for_the_training_imputer(known_vcf, tmp_path):
    """Missing and half-missing calls stay NaN: only the training subset may set their imputed value."""
    from conftest import KNOWN_DOSAGE

    from phenoclip.preprocess.variants import VariantSettings, convert_vcf

    store = tmp_path / "gene.h5"
    convert_vcf(known_vcf, store, VariantSettings())
    samples, x = raw_features(store)
    assert samples == ["s1", "s2", "s3", "s4"]
    expected = np.array(KNOWN_DOSAGE, dtype=np.float64)
    assert np.array_equal(np.isnan(x), expected < 0)
    assert np.array_equal(x[expected >= 0], expected[expected >= 0])
