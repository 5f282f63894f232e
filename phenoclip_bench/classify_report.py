"""What the classify suite says about its rows: the method names, the row collector, the verdict
(where the pretrained probe falls short of a baseline), the ROC and reliability figures and the
table's note. The fitting lives in :mod:`phenoclip_bench.classify`."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image as mpimg
import numpy as np

from phenoclip_bench import BenchContext
from phenoclip.eval import plots
from phenoclip.eval.metrics import classification_metrics
from phenoclip.eval.plots import new_figure, save_png

PROBE = "pretrained + linear probe"
ENET = "ElasticNet, hand-made features"
SCRATCH = {"gene": "MLP from scratch (dosages)", "mri": "3D CNN from scratch", "signal": "1D CNN from scratch"}


class Rows:
    """Collects table rows, metrics and test-split probabilities of every (modality, method)."""

    def __init__(self, classes: list[str]):
        self.classes = classes
        self.rows: list[list] = []
        self.metrics: dict = {}
        self.scores: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}

    def add(self, modality: str, method: str, y_test: np.ndarray, proba: np.ndarray, n_train: int,
            extra: dict | None = None) -> dict:
        m = classification_metrics(y_test, proba, self.classes)
        self.rows.append([modality, method, round(m["auroc"], 3), round(m["f1"], 3), n_train, len(y_test)])
        key = f"{modality}/{method}"
        self.metrics.update({f"{key}/{k}": v for k, v in m.items()})
        self.metrics[f"{key}/n_train"] = n_train
        self.metrics.update({f"{key}/{k}": v for k, v in (extra or {}).items()})
        self.scores[(modality, method)] = (y_test, proba)
        return m


def _side_by_side(paths: list[Path], target: Path) -> None:
    """One PNG holding the given PNGs next to each other (each drawn by phenoclip.eval.plots)."""
    images = [mpimg.imread(p) for p in paths]
    fig = new_figure(figsize=(5 * len(images), 5.5))
    for i, img in enumerate(images):
        ax = fig.add_subplot(1, len(images), i + 1)
        ax.imshow(img)
        ax.axis("off")
    fig.tight_layout()
    save_png(fig, target)


def best_baseline(rows: Rows, modality: str | None = None) -> tuple[str, str]:
    """(modality, method) of the baseline row with the highest macro AUROC (of ``modality`` if given; first on ties)."""
    candidates = [(r[2], -i, (r[0], r[1])) for i, r in enumerate(rows.rows)
                  if r[1] != PROBE and r[2] == r[2] and modality in (None, r[0])]
    return max(candidates)[2]


#: short method names for figure titles
SHORT = {PROBE: "pretrained probe", ENET: "ElasticNet", **{v: v.replace(" from scratch", "") for v in SCRATCH.values()}}


def figures(ctx: BenchContext, rows: Rows) -> list[str]:
    """ROC and reliability of the pretrained "all" probe, the best baseline on all modalities, and the best overall."""
    picks = [("all", PROBE), best_baseline(rows, "all")]
    overall = best_baseline(rows)
    if overall not in picks:
        picks.append(overall)
    roc, rel = [], []
    for i, (modality, method) in enumerate(picks):
        y_test, proba = rows.scores[(modality, method)]
        title = f"{'best baseline: ' if i == 2 else ''}{SHORT[method]}, {modality}"
        roc.append(plots.plot_roc(y_test, proba, rows.classes, ctx.work / f"classify_roc_{i}.png", title=title))
        rel.append(plots.plot_reliability(y_test, proba, ctx.work / f"classify_reliability_{i}.png", title=title))
    _side_by_side(roc, ctx.out / "classify_roc.png")
    _side_by_side(rel, ctx.out / "classify_reliability.png")
    return ["classify_roc.png", "classify_reliability.png"]


def shortfalls(table_rows: list[list], modalities: list[str]) -> str:
    """Plain sentences: per metric, where the pretrained probe is below the best baseline, and where not."""
    parts = []
    for col, metric in ((2, "macro AUROC"), (3, "macro F1")):
        value = {(r[0], r[1]): r[col] for r in table_rows}
        short, level = [], []
        for m in modalities:
            mine = value.get((m, PROBE))
            others = [(v, meth) for (mm, meth), v in value.items() if mm == m and meth != PROBE and v == v]
            if mine is None or mine != mine or not others:
                continue
            best, meth = max(others)
            (short if best > mine else level).append(f"{m} ({mine:.3f} vs {best:.3f}, {meth})")
        if short:
            parts.append(f"**On {metric} the pretrained model falls short of a baseline on {len(short)} of "
                         f"{len(short) + len(level)} rows: {'; '.join(short)}.**")
        else:
            parts.append(f"On {metric} no baseline beats the pretrained model.")
        if level:
            parts.append(f"It matches or beats the best baseline on {metric} for: {'; '.join(level)}.")
    return " ".join(parts) + " "


def note(rows: Rows, mods: list[str], never_seen: int, n_test: int, probe_c: dict, scratch_log: dict,
          finetune_check: dict, feature_names: dict, enet_iter: int) -> str:
    """The table's note: the verdict, the test split, how every method was fitted and what it chose."""
    chosen = ", ".join(f"{m} {c:g}" if isinstance(c, float) else f"{m} {c}" for m, c in probe_c.items())
    verdict = shortfalls(rows.rows, mods + ["all"])
    extra = sorted({n.rstrip("0123456789") for n in feature_names.get("gene", []) if n.startswith(("pgs", "burden"))})
    gene_extra = (f"+ the store's {' and '.join(extra)} columns" if extra else
                  "(the gene store has no PGS or burden columns: preprocess with --pgs / --genes to add them)")
    scratch = "; ".join(f"{SCRATCH[m]} {v['params']:,} parameters, stopped after {v['epochs']} epochs "
                        f"(best {v['best_epoch']})" for m, v in scratch_log.items())
    check = ("the 'all' probe re-run through `phenoclip finetune`'s code gives the same split and AUROC "
             f"({finetune_check['auroc']:.3f})" if finetune_check["matches"] else
             f"WARNING: `phenoclip finetune` on the same settings gave AUROC {finetune_check['auroc']:.3f} "
             f"(same split: {finetune_check['same_split']}), not the probe's number")
    return (verdict +
            f"Test split: {n_test} patients, stratified by class, {never_seen} of them validation patients of "
            "the pretraining run (never trained on, not even unlabelled)"
            + (f", the other {n_test - never_seen} in its training set (unlabelled data only)"
               if n_test > never_seen else "") + "; every model is fitted on the other "
            "patients only, and a modality's row uses those of them with that modality. Macro one-vs-rest AUROC "
            "and macro F1 (scikit-learn); chance AUROC is 0.5. Pretrained: the shared multimodal checkpoint "
            "(command below), frozen; logistic regression on standardised embeddings, C by 3-fold CV on the "
            f"training patients (chosen: {chosen}; the gene probe's choice between its read-out and the eQTL-screened "
            "SNPs is phenoclip.eval.gene_probe's); 'all' "
            f"concatenates the modalities' embeddings (zeros where absent); {check}. ElasticNet: scikit-learn "
            f"LogisticRegression(solver='saga', l1_ratio in (0, 1), at most {enet_iter} epochs) on standardised "
            "features, C and l1_ratio by 3-fold CV on the training patients; features: genetics = 10 dosage PCs + "
            f"all standardised dosages {gene_extra}, expression = log values, MRI = "
            "brain-intensity histogram and percentiles, bright voxels per hemisphere and 8^3 block means, "
            "signals = heart rate, RR-interval SD/RMSSD/CV and relative Welch band powers of ECG and PPG, HPO = "
            "term indicators; 'all' = early fusion (concatenation, training-mean imputation of absent "
            "modalities plus missingness indicators). Scratch networks: the training loop of `phenoclip "
            "pretrain` (AdamW at a constant rate) with early stopping on the validation loss of a stratified "
            f"20% slice of the training patients (n train includes that slice); {scratch}.")
