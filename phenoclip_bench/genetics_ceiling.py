"""How far any model could go in a genetics pair of a simulated cohort: a likelihood ceiling.

Retrieving a patient's partner record (expression, MRI, signals, HPO terms) from the genotype can
only use what the genotype says about that record. In a cohort from ``phenoclip simulate`` the
truth file states exactly what that is: the planted heritable traits, of which each partner
modality shows some (``traits.drives``), and the disease, whose liability is genetic. The ceiling
scores every (genotype, partner record) couple of the held-out patients by the log-likelihood of
the partner's *noise-free planted values* given what the genotype side predicts, over their
marginal likelihood (the log-likelihood ratio Bayes' rule ranks by):

* a trait the partner shows as a value: Gaussian, ``t ~ N(a * pred + b, s^2)`` with ``a, b, s``
  fitted on the training patients;
* a trait the hpo partner shows only through its threshold terms (``traits.hpo_terms``): the
  probit likelihood of each term being present or absent under that Gaussian;
* the disease, which every partner shows (lesions, expression programs, AF, disease terms):
  ``log P(disease | genotype)``.

Two genotype sides are scored:

* **observed dosages**: each trait predicted by a lasso told the trait (as in
  :func:`~phenoclip_bench.genetics_limits.trait_prediction`), the disease by a logistic
  regression; both supervised, fitted on the training patients only;
* **planted genetics**: the noise-free trait genetic values and the planted disease probabilities,
  which no model of any genotype can pass.

The partner side is the planted truth, not the modality's data, and the genotype side is told the
traits, so the ceiling is optimistic for an unsupervised model of real records: a pair whose
ceiling is near the retrieval target cannot be expected to reach it. The same Recall@1 rules as the
main table apply (both directions averaged, ties broken at random). A single split of 30-40
held-out patients moves by one hit in 35, so the ceiling is also averaged over random re-splits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.model_selection import StratifiedKFold, cross_val_score

from phenoclip_bench import Table
from phenoclip_bench.genetics_limits import DECODE_ALPHAS, fit_lasso
from phenoclip_bench.genetics_likelihood import decoded_scores, likelihood_scores, score_matrix_metrics
from phenoclip_bench.retrieval_eval import Embedded

#: the truth file's names for the modalities a trait drives -> ours
TRUTH_MODALITY = {"expression": "expr", "mri": "mri", "signals": "signal", "hpo": "hpo"}
LOGISTIC_CS = (0.01, 0.1, 1.0)  # inverse L2 penalties for the disease-from-dosages model, chosen by 5-fold log loss


def partner_channels(truth: dict) -> dict[str, dict]:
    """Per partner modality (our names): ``traits`` it shows as values, ``terms`` it shows as HPO terms.

    ``terms`` are ``(trait index, direction ('>' or '<'), threshold)``; only hpo has them.
    """
    names = truth.get("traits", {}).get("names", [])
    out: dict[str, dict] = {}
    for d in truth.get("traits", {}).get("drives", []):
        m = TRUTH_MODALITY.get(d["modality"])
        if m is not None and m != "hpo":
            out.setdefault(m, {"traits": set(), "terms": []})["traits"].add(d["trait"] - 1)
    terms = [(t["trait"] - 1, t["direction"], float(t["threshold"])) for t in truth.get("traits", {}).get("hpo_terms", [])]
    if terms:
        out["hpo"] = {"traits": set(), "terms": terms}
    return {m: {"traits": sorted(c["traits"]), "terms": c["terms"]} for m, c in out.items() if names}


def _fit_disease(x: np.ndarray, y: np.ndarray, seed: int):
    smallest = int(np.unique(y, return_counts=True)[1].min())
    if smallest < 2:  # a class seen once cannot be cross-validated: the middle penalty
        return LogisticRegression(C=LOGISTIC_CS[len(LOGISTIC_CS) // 2], max_iter=2000).fit(x, y)
    folds = StratifiedKFold(n_splits=min(5, smallest), shuffle=True, random_state=seed)
    best = max(LOGISTIC_CS, key=lambda c: cross_val_score(
        LogisticRegression(C=c, max_iter=2000), x, y, cv=folds, scoring="neg_log_loss").mean())
    return LogisticRegression(C=best, max_iter=2000).fit(x, y)


def _disease_probs(x: np.ndarray, disease: np.ndarray, fit_rows: list[int], n_classes: int, seed: int) -> np.ndarray:
    # (N, C); a class absent from the training rows gets probability 0
    prob = np.zeros((len(x), n_classes))
    if len(np.unique(disease[fit_rows])) > 1:
        clf = _fit_disease(x[fit_rows], disease[fit_rows], seed)
        prob[:, clf.classes_] = clf.predict_proba(x)
    else:
        prob[:, disease[fit_rows][0]] = 1.0
    return prob


def dosage_predictions(x: np.ndarray, traits: np.ndarray, disease: np.ndarray, fit_rows: Sequence[int],
                       n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Trait values (N, K) and disease probabilities (N, C) of every row of ``x``, fitted on ``fit_rows``.

    One lasso per trait (penalty by 5-fold CV on an explicit path); an L2 logistic regression for
    the disease (penalty by 5-fold log loss). A class absent from the training rows gets probability 0.
    """
    fit_rows = list(fit_rows)
    pred = np.column_stack([fit_lasso(x[fit_rows], traits[fit_rows, k], seed).predict(x)
                            for k in range(traits.shape[1])])
    return pred, _disease_probs(x, disease, fit_rows, n_classes, seed)


def decoded_partner(feats: np.ndarray, traits: np.ndarray, disease: np.ndarray, fit_rows: Sequence[int],
                    n_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """What a supervised reader of the partner's own data recovers: traits (ridge) and disease probabilities
    (logistic regression) from the partner's features, fitted on ``fit_rows``; every row of ``feats``."""
    fit_rows = list(fit_rows)
    values = RidgeCV(alphas=DECODE_ALPHAS).fit(feats[fit_rows], traits[fit_rows]).predict(feats)
    return values, _disease_probs(feats, disease, fit_rows, n_classes, seed)


def retrieval_ceiling(truth_path, dosages: Embedded, partner_ids: dict[str, Sequence[str]], train: Sequence[str],
                      test: Sequence[str], seed: int = 0, n_splits: int = 5,
                      partner_feats: dict[str, Embedded] | None = None) -> dict[str, dict]:
    """Per genetics pair ``gene-<partner>``: the likelihood ceiling on the held-out patients of the pair.

    ``dosages``: the gene modality's raw features (missing calls imputed) for train and test
    patients; ``partner_ids``: the patients having each partner modality. Values: ``n``,
    ``observed`` and ``planted`` (:func:`score_matrix_metrics` on ``test``), and the same two
    averaged over ``n_splits`` random re-splits of train + test into the same sizes
    (``observed_resplit``, ``planted_resplit``: mean ``x chance@1`` and its range). With
    ``partner_feats`` (each partner's raw features, reduced), ``decoded`` and ``decoded_resplit``
    score the partner by what a supervised reader of its data recovers (:func:`decoded_partner`)
    instead of its planted values. Empty when the truth file has no traits or too few patients.
    """
    truth = json.loads(Path(truth_path).read_text())
    channels = partner_channels(truth)
    per = {p["sample"]: p for p in truth.get("patients", [])
           if {"traits", "trait_genetic_values", "disease", "disease_probs"} <= set(p)}
    ids, x = dosages
    keep = [i for i, s in enumerate(ids) if s in per]
    if not channels or len(keep) < 20:
        return {}
    ids, x = [ids[i] for i in keep], x[keep]
    # disease_probs follow the disease model's class order, which realised_counts keeps
    order = list(truth.get("disease_model", {}).get("realised_counts", {}))
    n_classes = len(per[ids[0]]["disease_probs"])
    if len(order) != n_classes:
        return {}
    traits = np.array([per[s]["traits"] for s in ids], dtype=np.float64)
    genetic = np.array([per[s]["trait_genetic_values"] for s in ids], dtype=np.float64)
    disease = np.array([order.index(per[s]["disease"]) for s in ids])
    planted_prob = np.array([per[s]["disease_probs"] for s in ids], dtype=np.float64)
    pos = {s: i for i, s in enumerate(ids)}

    def one_split(tr: list[int], te: list[int]) -> dict[str, tuple]:
        pred, prob = dosage_predictions(x, traits, disease, tr, n_classes, seed)
        res = {}
        for m, ch in channels.items():
            if m not in partner_ids:
                continue
            has = set(partner_ids[m])
            rows = [i for i in te if ids[i] in has]
            if len(rows) < 3:
                continue
            res[m] = (score_matrix_metrics(likelihood_scores(pred, prob, traits, disease, tr, rows, ch)),
                      score_matrix_metrics(likelihood_scores(genetic, planted_prob, traits, disease, tr, rows, ch)),
                      _decoded(m, ch, pred, prob, tr, rows))
        return res

    def _decoded(m, ch, pred, prob, tr, rows) -> dict | None:
        if partner_feats is None or m not in partner_feats:
            return None
        p_ids, p_x = partner_feats[m]
        p_pos = {sid: i for i, sid in enumerate(p_ids)}
        fit = [i for i in tr if ids[i] in p_pos]
        if len(fit) < 20 or any(ids[i] not in p_pos for i in rows):
            return None
        feats = np.zeros((len(ids), p_x.shape[1]))
        have = [i for i in range(len(ids)) if ids[i] in p_pos]
        feats[have] = p_x[[p_pos[ids[i]] for i in have]]
        values, partner_prob = decoded_partner(feats, traits, disease, fit, n_classes, seed)
        shown = sorted(set(ch["traits"]) | {k for k, _, _ in ch["terms"]})
        return score_matrix_metrics(decoded_scores(pred, prob, values, partner_prob, disease, fit, rows, shown))

    tr = [pos[s] for s in train if s in pos]
    te = [pos[s] for s in test if s in pos]
    if len(tr) < 20 or len(te) < 3:
        return {}
    actual = one_split(tr, te)
    rng = np.random.default_rng(seed)
    resplits = []
    for _ in range(n_splits):
        perm = [int(i) for i in rng.permutation(tr + te)]
        resplits.append(one_split(perm[:len(tr)], perm[len(tr):]))
    out = {}
    for m, (obs, pla, dec) in actual.items():
        entry = {"n": obs["n"], "observed": obs, "planted": pla}
        if dec is not None:
            entry["decoded"] = dec
        for j, name in enumerate(("observed_resplit", "planted_resplit", "decoded_resplit")):
            xs = [r[m][j]["x chance@1"] for r in resplits if m in r and r[m][j] is not None]
            if xs:
                entry[name] = {"mean": float(np.mean(xs)), "min": float(np.min(xs)), "max": float(np.max(xs)),
                               "splits": len(xs)}
        out[f"gene-{m}"] = entry
    return out


def ceiling_table(ceiling: dict[str, dict], ours: dict[str, dict], target: float):
    """The report table: ours against both ceilings per genetics pair; pairs no model can lift to ``target`` in bold."""
    rows, capped = [], []
    for p, c in ceiling.items():
        if p not in ours:
            continue
        obs_r = c.get("observed_resplit", {}).get("mean", float("nan"))
        pla_r = c.get("planted_resplit", {}).get("mean", float("nan"))
        dec, dec_r = c.get("decoded", {}).get("x chance@1", float("nan")), c.get("decoded_resplit", {}).get("mean", float("nan"))
        rows.append([p, c["n"], ours[p]["x chance@1"], dec, dec_r, c["observed"]["x chance@1"], obs_r,
                     c["planted"]["x chance@1"], pla_r])
        if c["observed"]["x chance@1"] < target:
            capped.append(f"{p} ({c['observed']['x chance@1']:.1f}x; re-split mean {obs_r:.1f}x)")
    if not rows:
        return None
    splits = max((c.get("observed_resplit", {}).get("splits", 0) for c in ceiling.values()), default=0)
    note = ("The most the genotype says about each held-out partner record: every (genotype, partner) couple "
            "is scored by the likelihood ratio of the partner's noise-free planted traits and disease given the "
            "genotype side, and retrieved with the main table's rules. Observed dosages: a lasso per trait and a "
            "logistic regression for the disease, fitted on the training patients and told the answers "
            "(supervised, and the partner shows its traits without noise: optimistic for any pretrained model). "
            "Planted genetics: the noise-free genetic values and disease probabilities, which no model of any "
            "genotype passes. Linear reference: the same observed-dosage side against what a supervised linear "
            "reader of the partner's own data recovers (ridge for the traits, logistic regression for the "
            "disease, from its PCA-reduced raw features): both sides supervised and from the data a model sees. "
            "It is a reference, not a ceiling: PCA features read some traits poorly (heart rate from waveforms), "
            "so a pretrained encoder can pass it. "
            f"Re-split: mean over {splits} random splits of the same sizes, as one hit among 30-40 patients moves "
            "a pair by about 1x chance.")
    if capped:
        note += (f" **On these held-out patients even the supervised ceiling from the observed dosages stays below "
                 f"{target:g}x chance: {'; '.join(capped)}. A pretrained model would have to read the traits from "
                 f"the dosages better than a lasso told them, through noisier partner records, to reach {target:g}x "
                 "there.**")
    return Table("Ceiling of the genetics pairs: retrieval from what the genotype says (simulated cohorts, R@1 / chance)",
                 ["pair", "n", "ours", "linear reference", "re-split mean", "observed dosages, planted partner",
                  "re-split mean", "planted genetics", "re-split mean"], rows, note)
