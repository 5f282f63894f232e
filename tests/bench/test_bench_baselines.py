"""``--suite baselines``: pretrained probe and retrieval against logistic regression, elastic net, CCA, MOFA+."""

import json

import numpy as np

from phenoclip_bench import baselines


def _seed_result(probe, logistic, enet=np.nan, ours=(3.0, 0.3), cca=(2.5, 0.25), mofa=(1.0, 0.1), random=0.5):
    auroc = {str(f): {baselines.PROBE: probe, baselines.LOGISTIC: logistic, baselines.ENET: enet,
                      baselines.RANDOM: random} for f in baselines.FRACTIONS}
    return {"classification": {"task": "disease", "n_test": 40, "expr": {"elasticnet_run": enet == enet,
                                                                         "auroc": auroc}},
            "retrieval": {"expr-mri": {baselines.OURS: {"x_chance": ours[0], "MRR": ours[1]},
                                       baselines.CCA: {"x_chance": cca[0], "MRR": cca[1]},
                                       baselines.MOFA_R: {"x_chance": mofa[0], "MRR": mofa[1]}}}}


def test_tables_state_wins_and_losses_over_seeds():
    won = [_seed_result(0.9, 0.8, 0.85), _seed_result(0.92, 0.85, 0.8)]
    table, short = baselines.classification_table(won, "labels.tsv")
    assert not short and all(r[-1] == "win" for r in table.rows)
    assert table.rows[0][2] == "0.910 ± 0.014"      # mean ± sd over the two seeds
    lost = [_seed_result(0.8, 0.9), _seed_result(0.82, 0.86)]
    table, short = baselines.classification_table(lost, "labels.tsv")
    assert len(short) == len(baselines.FRACTIONS) and "0.810 below logistic regression, raw 0.880" in short[0]
    assert "elastic net is not run on expr" in table.note
    # random init above the probe: said beside the verdict (the weak claim lost), not counted as a baseline
    table, short = baselines.classification_table([_seed_result(0.9, 0.8, random=0.95)], "labels.tsv")
    assert table.rows[0][-1] == "win; below random init" and table.rows[0][-2] == "0.950 ± 0.000"
    assert len(short) == len(baselines.FRACTIONS) and "0.900 below the same probe at random initialisation 0.950" in short[0]
    _, short = baselines.retrieval_table(won)
    assert not short
    # CCA above ours in MRR: a loss; MOFA+ at 1x chance never counts against us
    _, short = baselines.retrieval_table([_seed_result(0.9, 0.8, ours=(3.0, 0.2), cca=(2.5, 0.3))])
    assert len(short) == 1 and "PCA + CCA" in short[0]


def test_suite_runs_on_a_small_cohort(small_cohort, tmp_path, monkeypatch):
    """Two seeds of a few pretraining epochs: every figure exists and is measured, not copied."""
    from phenoclip_bench import BenchContext

    monkeypatch.setattr(baselines, "EPOCHS", 3)
    monkeypatch.setitem(baselines.SETTINGS, "quick", {"seeds": 2, "repeats": 1, "enet_max_features": 500})
    cohort = tmp_path / "stores"
    cohort.mkdir()
    for m in ("gene", "expr", "signal"):
        (cohort / f"{m}.h5").symlink_to(small_cohort[m])
    (cohort / "labels.tsv").symlink_to(small_cohort["dir"] / "labels.tsv")
    (cohort / "truth.json").symlink_to(small_cohort["dir"] / "truth.json")
    ctx = BenchContext(out=tmp_path / "report", cohort=cohort, patients=None, variants=None, quick=True, seed=0,
                       work=tmp_path / "work")
    ctx.work.mkdir()
    result = baselines.run(ctx)
    cls, ret = result.tables
    assert [r[0] for r in cls.rows] == [m for m in ("gene", "expr", "signal", "fused") for _ in baselines.FRACTIONS]
    assert {r[0] for r in ret.rows} == {"gene-expr", "gene-signal", "expr-signal"}
    seeds = result.metrics["per_seed"]
    assert [s["seed"] for s in seeds] == [0, 1]
    # each seed holds out its own patients and gets its own figures
    a, b = (s["classification"]["expr"]["auroc"]["1.0"] for s in seeds)
    assert set(a) == {baselines.PROBE, baselines.LOGISTIC, baselines.ENET, baselines.RANDOM}
    assert all(0.0 <= v <= 1.0 for v in a.values()) and a != b
    # signals are also held against logistic regression on their spectra's principal components, a
    # model of its own (not the time-domain one read twice); the other rows are not
    sig = seeds[0]["classification"]["signal"]["auroc"]["1.0"]
    assert baselines.SPECTRAL in sig and 0.0 <= sig[baselines.SPECTRAL] <= 1.0
    assert any(s["classification"]["signal"]["auroc"][str(f)][baselines.SPECTRAL] !=
               s["classification"]["signal"]["auroc"][str(f)][baselines.LOGISTIC] for s in seeds for f in baselines.FRACTIONS)
    assert baselines.SPECTRAL in cls.columns and cls.rows[0][cls.columns.index(baselines.SPECTRAL)] == "—"
    # a simulated cohort's signal row also reads the recordings' planted parameters (a reference, no verdict)
    assert baselines.PLANTED in sig and 0.0 <= sig[baselines.PLANTED] <= 1.0
    assert baselines.PLANTED not in seeds[0]["classification"]["expr"]["auroc"]["1.0"]
    assert baselines.PLANTED in cls.columns and baselines.PLANTED not in baselines.CLASSIC
    # genotypes beside expression: the eQTL-screened SNPs, a classic baseline of the gene row only
    gene = seeds[0]["classification"]["gene"]["auroc"]["1.0"]
    assert baselines.EQTL in gene and 0.0 <= gene[baselines.EQTL] <= 1.0 and baselines.EQTL in baselines.CLASSIC
    assert baselines.EQTL not in sig and baselines.EQTL in cls.columns
    fused = seeds[0]["classification"]["fused"]
    assert fused["elasticnet_run"] is False and {baselines.MOFA, baselines.RANDOM} <= set(fused["auroc"]["1.0"])
    # the random-init model is another model, not the pretrained one read twice
    assert any(s["classification"][m]["auroc"]["1.0"][baselines.RANDOM] != s["classification"][m]["auroc"]["1.0"][
        baselines.PROBE] for s in seeds for m in ("gene", "expr", "signal", "fused"))
    json.dumps(result.metrics, default=str)  # the report writes them as JSON


def test_planted_signal_parameters_are_read_from_the_truth_file(tmp_path):
    """The sample's first patient, as data/sample/truth.json records it; a truth file without them gives None."""
    from pathlib import Path

    truth = Path(__file__).resolve().parents[2] / "data" / "sample" / "truth.json"
    x = baselines.planted_signal(truth, ["P0001", "P0003"])
    assert x.shape == (2, 5)
    np.testing.assert_allclose(x[0], [0.0, 56.01, 0.63, 0.8162, 0.4143])
    older = tmp_path / "truth.json"
    older.write_text(json.dumps({"patients": [{"sample": "P0001", "af": False}]}))
    assert baselines.planted_signal(older, ["P0001"]) is None


def test_real_cohort_gse7390_is_written_from_the_package(tmp_path):
    """198 breast tumours of scikit-survival's GSE7390 table: 76 genes, ER first among the labels."""
    import h5py

    from phenoclip_bench.real_data import write_cohort
    from phenoclip.finetune.labels import load_task_labels

    folder = write_cohort("gse7390", tmp_path / "gse7390")
    with h5py.File(folder / "expr.h5") as f:
        assert f["values"].shape == (198, 76) and f.attrs["transform"] == "none"
        assert 11.5 < float(f["values"][:, 0].mean()) < 12.0          # RMA log2 intensities as shipped
    er = load_task_labels(str(folder / "labels.tsv"))
    assert er.column == "er" and er.classes == ["negative", "positive"] and np.bincount(er.y).tolist() == [64, 134]


def test_real_cohort_pbmc68k_is_written_from_the_package(tmp_path):
    """scanpy's PBMC 68k extract: 765 log-normalised genes, the 7 cell types with >= 30 cells."""
    import h5py

    from phenoclip_bench.real_data import write_cohort
    from phenoclip.finetune.labels import load_task_labels

    folder = write_cohort("pbmc68k", tmp_path / "pbmc68k")
    with h5py.File(folder / "expr.h5") as f:
        values = f["values"][:]
        assert values.shape == (660, 765) and f.attrs["transform"] == "none"
        # log1p of counts per 10,000 as shipped: non-negative, mostly zeros, a few above 5
        assert values.min() == 0.0 and 0.5 < (values == 0).mean() < 0.9 and 5 < values.max() < 10
    cells = load_task_labels(str(folder / "labels.tsv"))
    assert cells.column == "cell_type" and cells.task == "multiclass" and len(cells.classes) == 7
    counts = dict(zip(cells.classes, np.bincount(cells.y).tolist()))
    assert counts["Dendritic"] == 240 and counts["CD14+_Monocyte"] == 129 and min(counts.values()) == 31
