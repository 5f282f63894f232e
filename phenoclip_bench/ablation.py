"""``--suite ablation``: what each modality and the ontology loss bring (paper 000 Table 3 and Fig. 6).

Variants, all pretrained with the same seed, preset, split and epochs (:func:`~phenoclip_bench.cohort.pretrained`):

* full: every modality, CLIP + ontology alignment (the shared model's recipe);
* minus one modality (5 variants): the other four, same objectives. Without ``hpo`` the
  phenotype data is gone entirely, so the ontology loss goes too (CLIP only);
* no ontology loss: every modality, CLIP only;
* random initialisation of the full architecture (no pretraining): the floor.

With ``--quick`` every variant, the full model included, is pretrained for
:data:`ABLATION_EPOCHS` ``["quick"]`` epochs (fewer than the shared model's), so the comparison is fair.

Scores on the held-out (validation) patients: cross-modal Recall@1 and MRR (both directions
averaged) per modality pair and their mean over the variant's pairs, with the full model's mean
over the *same* pairs beside it (a variant without a modality has fewer pairs, so the raw means
are not comparable); a linear probe's disease AUROC (logistic regression on the modalities'
embeddings side by side, fitted on the training patients); the zero-shot own-HPO-term AUROC
(mean over the non-hpo modalities); and Fig. 6: Spearman correlation between HPO graph distance
and term-embedding cosine distance (:mod:`phenoclip_bench.ontology_distance`), plotted for the
full model, the model without ontology loss, the random initialisation and the graph-initialised
term table before any training (the starting point of every pretrained variant).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from phenoclip_bench import BenchContext, SuiteResult, Table
from phenoclip_bench.cohort import FULL_OBJECTIVES, bench_cohort, pretrained
from phenoclip_bench.ontology_distance import (cosine_distances, graph_distances, plot_distance, spearman,
                                               term_pairs)
from phenoclip_bench.report import bold_sentences
from phenoclip_bench.retrieval_eval import (concat_embeddings, cross_modal_metrics, embed_modalities, mean_over,
                                            own_term_ranking)
from phenoclip_bench.retrieve_quality import read_labels
from phenoclip.data.multimodal import CohortStores
from phenoclip.eval.probe import linear_probe
from phenoclip.eval.zero_shot import resolve_ontology
from phenoclip.pretrained import load_pretrained, random_init_like

#: pretraining epochs of every ablation variant (the full model is re-run at the same count)
ABLATION_EPOCHS = {"quick": 15, "full": 60}
FIG6_PNG = "ablation_ontology_distance.png"
NAN = float("nan")
GRAPH_INIT = "graph-initialised table, untrained"


def variants(modalities: list[str], full_objectives: list[str]) -> list[tuple[str, list[str], list[str]]]:
    """``(name, modalities, objectives)`` of every pretrained variant, the full model first."""
    out = [("full", list(modalities), list(full_objectives))]
    for m in modalities:
        rest = [x for x in modalities if x != m]
        objectives = [o for o in full_objectives if o != "ontology"] if m == "hpo" else list(full_objectives)
        out.append((f"- {m}", rest, objectives))
    if "ontology" in full_objectives:
        out.append(("no ontology loss", list(modalities), [o for o in full_objectives if o != "ontology"]))
    return out


def evaluate(model, pre, stores, modalities, labels: dict[str, str], seed: int) -> dict:
    """Held-out retrieval per pair, disease probe AUROC and own-term AUROC of one model."""
    train = [s for s in pre.train_samples]
    test = pre.validation_samples
    embedded = embed_modalities(model, pre, stores, modalities, train + test)
    held = set(test)
    held_out = {m: ([s for s in ids if s in held], emb[[i for i, s in enumerate(ids) if s in held]])
                for m, (ids, emb) in embedded.items()}
    out = {"pairs": cross_modal_metrics(held_out)}
    tr = [s for s in train if s in labels]
    te = [s for s in test if s in labels]
    if tr and te and len({labels[s] for s in tr}) > 1:
        probe = linear_probe(concat_embeddings(embedded, tr), np.array([labels[s] for s in tr]),
                             concat_embeddings(embedded, te), np.array([labels[s] for s in te]), seed=seed)
        out["probe"] = probe
        others = {m: v for m, v in embedded.items() if m != "hpo"}
        if "hpo" in embedded and others:  # the phenotype embedding alone nearly gives the disease away
            out["probe_without_hpo"] = linear_probe(
                concat_embeddings(others, tr), np.array([labels[s] for s in tr]),
                concat_embeddings(others, te), np.array([labels[s] for s in te]), seed=seed)
    if "hpo" in getattr(model, "encoders", {}) and "hpo" in stores.by_modality:
        terms = own_term_ranking(model, {m: v for m, v in held_out.items() if m != "hpo"}, stores)
        out["own_terms"] = terms
        out["own_term_auroc"] = float(np.mean([t["AUROC"] for t in terms.values()])) if terms else NAN
    return out


def _dash(v):
    """NaN (a score the variant cannot have, e.g. own terms without an hpo encoder) as a dash."""
    return "—" if isinstance(v, float) and v != v else v


def _fmt_pairs(pairs: list[str], per: dict[str, dict]) -> list:
    return [per[p]["R@1"] if p in per else "—" for p in pairs]


def run(ctx: BenchContext) -> SuiteResult:
    torch.set_num_threads(1)  # shared small machines: OpenMP spinning costs more than a second thread gives
    result = SuiteResult(name="ablation")
    cohort = bench_cohort(ctx)
    labels = read_labels(cohort)
    modalities = [m for m in ("gene", "expr", "mri", "signal", "hpo") if m in cohort.stores]
    objectives = [o for o in FULL_OBJECTIVES if o != "ontology" or "hpo" in cohort.stores]
    epochs = ABLATION_EPOCHS["quick" if ctx.quick else "full"]
    stores = CohortStores(cohort.data(modalities))
    evals, models, splits, seconds = {}, {}, {}, {}
    held_out = None
    for name, mods, objs in variants(modalities, objectives):
        t0 = time.perf_counter()
        # every variant holds out the full model's validation patients (--val-samples): same test patients
        fixed = {} if held_out is None else {"val_samples": held_out}
        ckpt, command = pretrained(ctx, cohort, modalities=mods, objectives=objs, epochs=epochs, **fixed)
        seconds[name] = time.perf_counter() - t0
        result.commands.append(f"# {name}\n{command}")
        pre = load_pretrained(ckpt)
        splits[name] = tuple(sorted(pre.validation_samples))
        held_out = held_out or sorted(pre.validation_samples)
        evals[name] = evaluate(pre.model, pre, stores, mods, labels, ctx.seed)
        models[name] = (pre, mods)
    full_pre = models["full"][0]
    rand_model = random_init_like(full_pre, ctx.seed, stores)
    evals["random init"] = evaluate(rand_model, full_pre, stores, modalities, labels, ctx.seed)

    # Fig. 6 on the hpo vocabulary's term pairs
    rhos: dict[str, float] = {}
    if "hpo" in full_pre.model.encoders:
        enc = full_pre.model.encoders["hpo"]
        onto = resolve_ontology(int(enc.lookup.shape[0]), cohort.stores.get("hpo"), full_pre.config,
                                full_pre.path)
        vocab = enc.vocab_terms.numpy()
        i, j = term_pairs(len(vocab), seed=ctx.seed)
        graph = graph_distances(onto, vocab, i, j)
        init_model = random_init_like(full_pre, ctx.seed)
        init_model.encoders["hpo"].init_from_ontology(onto, vocab, generator=torch.Generator().manual_seed(ctx.seed))
        curves = {"full model": (graph, cosine_distances(full_pre.model, i, j))}
        if "no ontology loss" in models:
            curves["no ontology loss"] = (graph, cosine_distances(models["no ontology loss"][0].model, i, j))
        curves["random init"] = (graph, cosine_distances(rand_model, i, j))
        curves[GRAPH_INIT] = (graph, cosine_distances(init_model, i, j))
        rhos = plot_distance(curves, ctx.out / FIG6_PNG,
                             title=f"{len(vocab)} HPO vocabulary terms, {len(i)} pairs (paper 000 Fig. 6)")
        for name, (pre, _) in models.items():  # the other variants' rho, for the table (not plotted)
            if name not in ("full", "no ontology loss") and "hpo" in pre.model.encoders:
                ok = graph >= 0
                rhos.setdefault(name, spearman(graph[ok], cosine_distances(pre.model, i, j)[ok]))
        rhos["full"] = rhos.pop("full model")
        result.figures.append(FIG6_PNG)

    full_pairs = evals["full"]["pairs"]
    all_pairs = list(full_pairs)
    ns = [m["n"] for m in full_pairs.values()]
    rows = []
    for name, ev in evals.items():
        pairs = list(ev["pairs"])
        rows.append([name, len(pairs), mean_over(ev["pairs"], "R@1"), mean_over(full_pairs, "R@1", pairs),
                     mean_over(ev["pairs"], "MRR"), mean_over(full_pairs, "MRR", pairs),
                     ev.get("probe", {}).get("auroc", NAN), ev.get("probe_without_hpo", {}).get("auroc", NAN),
                     ev.get("own_term_auroc", NAN), rhos.get(name, NAN), round(seconds.get(name, 0.0), 1)])
    full_auc = evals["full"].get("probe", {}).get("auroc", NAN)
    better = [r[0] for r in rows[1:] if r[0] != "random init" and r[2] > r[3]]
    better_auc = [r[0] for r in rows[1:] if r[0] != "random init" and r[6] > full_auc]
    same_split = len(set(splits.values())) == 1
    full_val = set(splits["full"])
    # pretraining splits the patients having any of its modalities, in the stores' first-seen order, so dropping
    # a modality can change the split: say which variants were scored on other patients, and how many overlap
    other_split = {n: len(full_val & set(v)) for n, v in splits.items() if set(v) != full_val}
    note = (f"Every variant pretrained {epochs} epochs (seed {ctx.seed}, tiny preset)"
            + (", fewer than the shared model's, to fit --quick; the full model is re-run at the same count"
               if ctx.quick else "") + ". "
            f"Held-out = the checkpoints' validation patients ({len(full_pre.validation_samples)}; "
            + ("the same split for every variant" if same_split else
               "**not the same split for every variant: " + ", ".join(
                   f"{n} was held out on other patients ({k} of {len(full_val)} shared with the full model's)"
                   for n, k in other_split.items())
               + " (pretraining splits the patients having any of its modalities, in the stores' first-seen "
               "order: both change with the modalities); each variant is scored on its own held-out patients, "
               "never on ones it trained on**")
            + "). "
            "R@1 / MRR: mean over the variant's modality pairs, both directions averaged; 'full, same pairs' is "
            "the full model's mean over exactly those pairs. Probe: logistic regression on the modalities' "
            "embeddings side by side (disease, one-vs-rest macro AUROC), fitted on the training patients; again "
            "without the hpo embedding, which alone nearly gives the disease away. "
            "Own-term AUROC: zero-shot ranking of the hpo vocabulary by non-hpo embeddings (chance 0.5). "
            "Spearman: HPO graph distance vs term-embedding cosine distance (Fig. 6). ")
    if better:
        note += f"**Removing a component did not hurt retrieval (R@1 above the full model on the same pairs): {', '.join(better)}.** "
    if better_auc:
        note += f"**Probe AUROC above the full model's: {', '.join(better_auc)}.** "
    rand_row = rows[-1]
    for col, what in ((2, "retrieval R@1"), (6, "probe AUROC"), (7, "probe AUROC without hpo")):
        if rand_row[col] >= rows[0][col]:
            note += f"**Random initialisation matches or beats the pretrained full model on {what}.** "
    note += (f"With {min(ns)}-{max(ns)} held-out patients per pair one retrieval hit moves a pair's R@1 by "
             f"{1 / max(ns):.3f}-{1 / min(ns):.3f}: differences of that size are noise.")
    result.tables.append(Table("Ablation: each modality and the ontology loss (paper 000 Table 3 layout)",
                               ["variant", "pairs", "R@1", "full, same pairs R@1", "MRR", "full, same pairs MRR",
                                "probe disease AUROC", "probe AUROC, non-hpo embeddings", "own-term AUROC",
                                "term Spearman", "pretrain s"],
                               [[_dash(v) for v in r] for r in rows], note))
    result.tables.append(Table("Ablation: held-out Recall@1 per modality pair", ["variant", *all_pairs],
                               [[name, *_fmt_pairs(all_pairs, ev["pairs"])] for name, ev in evals.items()],
                               "— : the variant lacks a modality of the pair. Chance R@1 = 1 / n, n = "
                               f"{min(ns)}-{max(ns)} held-out patients having both modalities."))
    if rhos:
        order = [n for n in evals if n in rhos] + [n for n in rhos if n not in evals]
        fig_note = (f"Term pairs of the hpo encoder's vocabulary ({FIG6_PNG}). Every pretrained variant starts from "
                    "the graph-initialised term table, so a high rho without the ontology loss is inherited from "
                    "the initialisation, not learned.")
        start = rhos.get(GRAPH_INIT, NAN)
        if rhos["full"] <= start:
            fig_note += (f" **The ontology loss does not raise the correlation above that starting point "
                         f"({rhos['full']:.3f} vs {start:.3f}).**")
        if rhos["full"] <= rhos.get("no ontology loss", NAN):
            fig_note += " **The model without the ontology loss correlates as well or better.**"
        result.tables.append(Table("Fig. 6: HPO graph distance vs embedding cosine distance (Spearman)",
                                   ["model", "Spearman rho"], [[k, rhos[k]] for k in order], fig_note))
    result.metrics["ablation"] = {"epochs": epochs, "evaluations": evals, "spearman": rhos,
                                  "pretrain_seconds": seconds, "same_split": same_split,
                                  "other_split_overlap": other_split}
    # the notes state every shortfall in bold: the report lists them together as well
    result.shortfalls += [line for t in result.tables for line in bold_sentences(t.note)]
    return result
