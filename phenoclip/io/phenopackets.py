"""Readers of patient phenotypes (HPO TSV, GA4GH phenopackets) and of per-sample label tables.

These readers check syntax only: that files exist, parse, have the required fields and that
every term looks like ``HP:NNNNNNN``. Whether an ID exists in the ontology is decided later
(:mod:`phenoclip.preprocess.phenotypes`), against the release the user chose.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import zlib
from dataclasses import dataclass, field

import numpy as np

from phenoclip.errors import InconsistentInputError, InputMissingError, MalformedInputError, require_readable
from phenoclip.io.tables import open_text, read_table
from phenoclip.progress import track

HPO_ID = re.compile(r"HP:\d{7}")
_TRUE = {"1", "true"}
_FALSE = {"0", "false", ""}
#: cells read as a missing label value
MISSING = {"", "na", "nan", "n/a", "null", "none", "."}
_BAR_FROM = 2000


@dataclass
class PhenotypeRecords:
    """Raw (unresolved) HPO IDs per sample, in input order.

    ``origin[sample]`` is the file the sample came from (the TSV, or its phenopacket), so later
    errors about one sample can name the exact file.
    """

    source: str
    samples: list[str] = field(default_factory=list)
    observed: dict[str, list[str]] = field(default_factory=dict)
    excluded: dict[str, list[str]] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)

    def add_sample(self, sample: str, origin: str) -> None:
        self.samples.append(sample)
        self.observed[sample], self.excluded[sample] = [], []
        self.origin[sample] = origin


def _check_id(term: str, where: str, path: str) -> str:
    term = term.strip()
    if not HPO_ID.fullmatch(term):
        raise MalformedInputError(f"{where}: '{term}' is not an HPO ID (expected HP: and 7 digits, e.g. HP:0001250)",
                                  path)
    return term


def read_hpo_tsv(path: str | os.PathLike) -> PhenotypeRecords:
    """Read a TSV with columns ``sample``, ``hpo_id`` and optionally ``excluded`` (0/1/true/false).

    One term per row; a sample's rows need not be adjacent. Samples keep the order of their first
    row. Other columns (a term label, an onset) are ignored.

    Raises
    ------
    InputMissingError
        The file does not exist.
    MalformedInputError
        A required column is missing, a cell is empty, an ID is not ``HP:NNNNNNN``, an
        ``excluded`` value is not 0/1/true/false, or the table has no rows.
    """
    p = require_readable(path, "HPO table")
    table = read_table(p, required=["sample", "hpo_id"])
    s_col, t_col = table.header.index("sample"), table.header.index("hpo_id")
    x_col = table.header.index("excluded") if table.has("excluded") else None
    rec = PhenotypeRecords(p)
    for lineno, row in enumerate(table.rows, start=2):
        sample, term = row[s_col], row[t_col]
        if not sample:
            raise MalformedInputError(f"row {lineno} has an empty sample ID", p)
        term = _check_id(term, f"row {lineno} ({sample})", p)
        flag = row[x_col].lower() if x_col is not None else ""
        if flag not in _TRUE and flag not in _FALSE:
            raise MalformedInputError(f"row {lineno}: excluded must be 0, 1, true or false, got '{row[x_col]}'", p)
        if sample not in rec.origin:
            rec.add_sample(sample, p)
        (rec.excluded if flag in _TRUE else rec.observed)[sample].append(term)
    if not rec.samples:
        raise MalformedInputError("no rows below the header", p)
    return rec


def _first(obj: dict, *keys: str, default=None):
    # phenopacket v2 JSON uses camelCase; v1 files written by protobuf tools may use snake_case
    for k in keys:
        if k in obj:
            return obj[k]
    return default


def _read_json(path: str):
    try:
        with open_text(path) as fh:
            return json.load(fh)
    except json.JSONDecodeError as e:
        raise MalformedInputError(f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})", path) from None
    except (UnicodeDecodeError, EOFError, zlib.error, OSError) as e:
        raise MalformedInputError(f"not a readable JSON text file ({type(e).__name__})", path) from None


#: where a phenopacket's patient ID comes from: ``subject.id`` or the packet's own top-level ``id``
ID_SOURCES = ("subject", "packet")


def _packet_id(packet: dict, path: str, id_from: str) -> str:
    if id_from == "packet":
        sample = packet.get("id")
        if not isinstance(sample, str) or not sample.strip():
            raise MalformedInputError("phenopacket has no top-level id", path,
                                      "use --id-from subject, or give every packet an id")
        return sample.strip()
    subject = packet.get("subject")
    sample = subject.get("id") if isinstance(subject, dict) else None
    if not isinstance(sample, str) or not sample.strip():
        raise MalformedInputError("phenopacket has no subject.id", path,
                                  "each file must describe one patient (or use --id-from packet)")
    return sample.strip()


def _read_packet(path: str, rec: PhenotypeRecords, id_from: str = "subject") -> None:
    packet = _read_json(path)
    if not isinstance(packet, dict):
        raise MalformedInputError("not a phenopacket: the top level is not a JSON object", path)
    sample = _packet_id(packet, path, id_from)
    if sample in rec.origin:
        if id_from == "subject":
            # public collections reuse family-relative subject IDs ("father", "II-1") across packets
            raise InconsistentInputError(
                f"subject '{sample}' also appears in {rec.origin[sample]}", path,
                "if these are different patients, key them by each packet's own id with --id-from packet; "
                "if the same patient, merge the two phenopackets")
        raise InconsistentInputError(f"packet id '{sample}' also appears in {rec.origin[sample]}", path,
                                     "packet ids must be unique in the folder: rename one")
    features = _first(packet, "phenotypicFeatures", "phenotypic_features", default=[])
    if not isinstance(features, list):
        raise MalformedInputError("phenotypicFeatures is not a list", path)
    rec.add_sample(sample, path)
    for n, feat in enumerate(features):
        term_obj = feat.get("type") if isinstance(feat, dict) else None
        term = term_obj.get("id") if isinstance(term_obj, dict) else None
        if not isinstance(term, str):
            raise MalformedInputError(f"phenotypicFeatures[{n}] has no type.id", path)
        term = _check_id(term, f"phenotypicFeatures[{n}]", path)
        # v2 says 'excluded'; v1 said 'negated'
        flag = _first(feat, "excluded", "negated", default=False)
        if not isinstance(flag, bool):
            raise MalformedInputError(f"phenotypicFeatures[{n}].excluded must be true or false, got {flag!r}", path)
        (rec.excluded if flag else rec.observed)[sample].append(term)


def read_phenopackets(folder: str | os.PathLike, id_from: str = "subject") -> PhenotypeRecords:
    """Read every ``*.json`` (or ``*.json.gz``) phenopacket in ``folder`` (not recursive).

    Each file is one GA4GH Phenopacket (schema v2; v1's ``negated`` and snake_case keys are also
    read): the sample ID is ``subject.id`` (``id_from="subject"``) or the packet's own top-level
    ``id`` (``id_from="packet"``, for collections whose subject IDs are family-relative and
    repeat, such as "father"), terms are ``phenotypicFeatures[].type.id`` and
    ``excluded: true`` marks a term that was looked for and is absent. Files are read in name
    order, which fixes the sample order. A packet without features gives a sample with no terms.

    Raises
    ------
    InputMissingError
        The folder does not exist or holds no ``.json`` file.
    MalformedInputError
        A file is not JSON, has no ``subject.id``, a feature has no ``type.id`` or a bad ID.
    InconsistentInputError
        Two files describe the same subject (or carry the same packet id).
    """
    if id_from not in ID_SOURCES:
        raise ValueError(f"id_from must be one of {ID_SOURCES}, got {id_from!r}")
    d = require_readable(folder, "folder")
    files = sorted(f for pattern in ("*.json", "*.json.gz") for f in glob.glob(os.path.join(d, pattern)))
    if not files:
        raise InputMissingError("no *.json phenopacket files in the folder", d)
    rec = PhenotypeRecords(d)
    # a bar only where reading takes seconds; a few files would only add lines to batch logs
    for f in track(files, "reading phenopackets", unit="files") if len(files) > _BAR_FROM else files:
        _read_packet(f, rec, id_from)
    return rec


@dataclass
class Labels:
    """Per-sample label columns: float64 (NaN = missing) when every value is numeric, else str."""

    source: str
    samples: list[str]
    columns: dict[str, np.ndarray]


def _column(values: list[str]) -> np.ndarray:
    present = [v for v in values if v.lower() not in MISSING]
    try:
        [float(v) for v in present]
    except ValueError:
        return np.asarray(["" if v.lower() in MISSING else v for v in values], dtype=object)
    return np.asarray([math.nan if v.lower() in MISSING else float(v) for v in values], dtype=np.float64)


def read_labels(path: str | os.PathLike) -> Labels:
    """Read a labels table: a ``sample`` column and one or more label columns.

    Missing values are empty cells or NA/NaN/N/A/null/none/``.``; a column whose other values
    all parse as numbers becomes float64 with NaN for missing, any other column stays text with
    ``""`` for missing.

    Raises
    ------
    MalformedInputError
        No ``sample`` column, no label column, a duplicated column or sample, an empty sample ID,
        or a column name with ``/`` (it would nest inside the HDF5 file).
    """
    p = require_readable(path, "labels table")
    table = read_table(p, required=["sample"])
    names = [h for h in table.header if h != "sample"]
    if not names:
        raise MalformedInputError("no label columns besides 'sample'", p)
    if len(set(table.header)) != len(table.header):
        dup = next(h for h in table.header if table.header.count(h) > 1)
        raise MalformedInputError(f"column '{dup}' appears twice", p)
    bad = [h for h in names if not h or "/" in h]
    if bad:
        raise MalformedInputError(f"label column name '{bad[0]}' is empty or contains '/'", p)
    samples = table.column("sample")
    seen: set[str] = set()
    for lineno, s in enumerate(samples, start=2):
        if not s:
            raise MalformedInputError(f"row {lineno} has an empty sample ID", p)
        if s in seen:
            raise MalformedInputError(f"duplicate sample ID '{s}' (row {lineno})", p)
        seen.add(s)
    if not samples:
        raise MalformedInputError("no rows below the header", p)
    return Labels(p, samples, {h: _column(table.column(h)) for h in names})
