"""Gene expression counts: negative-binomial around a mean made of the planted effects.

``log mean[i, g] = base[g] + log(library[i]) + eQTL + disease programme + lesion latent + trait``
and counts are Gamma-Poisson draws (NB with dispersion ``phi[g]``: var = m + phi m^2).
"""

from __future__ import annotations

import numpy as np

from phenoclip.data.simulate.genome import Layout

LESION_GENE_ROLES = ("size", "anterior_posterior", "superior_inferior")
LESION_LOG_FOLD = 0.8   # log-fold per unit of a lesion latent in its gene


def lesion_levels(disease: np.ndarray, severity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Latent levels of the three lesion genes, ``(N, 3)``, roughly unit scale.

    Column 0 sets lesion size (higher in the affected and with severity), column 1 the
    anterior-posterior offset (pure noise: only expression can tell it), column 2 the
    superior-inferior offset (neuro lesions higher, cardio lower).
    """
    n = len(disease)
    size = 0.5 * (disease > 0) + 0.5 * severity - 0.6 + rng.normal(0, 0.5, n)
    ap = rng.normal(0, 1, n)
    si = 0.5 * (disease == 1) - 0.5 * (disease == 2) + rng.normal(0, 0.8, n)
    return np.column_stack([size, ap, si])


def simulate_counts(layout: Layout, disease: np.ndarray, severity: np.ndarray, causal_dosage: np.ndarray,
                    lesion: np.ndarray, eqtl_log_fold: float, program_log_fold: float,
                    rng: np.random.Generator, traits: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """Integer counts ``(N, G)`` for every patient (rows of absent patients are dropped later)
    and a description of the planted effects for ``truth.json``.

    ``traits`` ``(N, K)``: a trait gene (``layout.trait_genes``) adds ``log_fold_per_sd x trait``.
    """
    n, genes = len(disease), layout.genes
    g = len(genes)
    base = rng.normal(np.log(80.0), 1.3, g)
    phi = np.exp(rng.normal(np.log(0.15), 0.4, g))
    # library size factors are log-normal (sd 0.4, ~1.5-fold per sd): raw counts mislead, cpm fixes it
    library = np.exp(rng.normal(0.0, 0.4, n))
    log_mean = base[None, :] + np.log(library)[:, None]

    effects: dict = {"eqtl": {}, "programs": {}, "lesion": {}}
    freq = np.array([c["alt_freq"] for c in layout.causal])
    # the disease programme scales with severity (0.5-2 x) in the affected
    weight = np.clip(0.5 + 0.5 * severity, 0.5, 2.0)
    lesion_names = list(layout.lesion_genes)
    for j, gene in enumerate(genes):
        if gene.role == "eqtl":
            c = layout.eqtl[gene.name]
            log_mean[:, j] += eqtl_log_fold * (causal_dosage[:, c] - 2 * freq[c])
            effects["eqtl"][gene.name] = {"causal_index": c, "log_fold_per_alt_allele": eqtl_log_fold}
        elif gene.role in ("neuro_up", "neuro_down", "cardio_up", "cardio_down"):
            dis, direction = gene.role.split("_")
            code = 1 if dis == "neuro" else 2
            lfc = program_log_fold * float(rng.uniform(0.7, 1.3)) * (1 if direction == "up" else -1)
            log_mean[:, j] += lfc * weight * (disease == code)
            effects["programs"][gene.name] = {"disease": dis, "direction": direction,
                                              "log_fold_at_severity_1": round(lfc, 4)}
        elif gene.role == "lesion":
            k = lesion_names.index(gene.name)
            log_mean[:, j] += LESION_LOG_FOLD * lesion[:, k]
            effects["lesion"][gene.name] = {"sets": LESION_GENE_ROLES[k], "log_fold_per_unit": LESION_LOG_FOLD}
        elif gene.role == "trait" and traits is not None:
            e = layout.trait_genes[gene.name]
            log_mean[:, j] += e["log_fold_per_sd"] * traits[:, e["trait"]]

    mean = np.exp(log_mean)
    lam = rng.gamma(shape=1.0 / phi[None, :], scale=mean * phi[None, :])
    counts = rng.poisson(lam).astype(np.int64)
    effects["library_size_factor"] = library
    effects["dispersion"] = phi
    return counts, effects
