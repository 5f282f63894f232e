"""Small text tables: TSV/CSV (optionally gzipped), manifests and sample-ID lists."""

from __future__ import annotations

import csv
import gzip
import io
import os
import zlib
from dataclasses import dataclass
from typing import Iterator, Sequence

from phenoclip.errors import InputMissingError, MalformedInputError, require_readable


def open_text(path: str | os.PathLike) -> io.TextIOBase:
    """Open a text file, transparently gunzipping ``.gz`` (checked by magic bytes, not by name)."""
    p = require_readable(path)
    with open(p, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8-sig", newline="")
    return open(p, "r", encoding="utf-8-sig", newline="")


def _delimiter_for(path: str, first_line: str) -> str:
    name = path[:-3] if path.endswith(".gz") else path
    if name.endswith(".csv"):
        return ","
    if name.endswith((".tsv", ".txt", ".tab")):
        return "\t"
    return "\t" if first_line.count("\t") >= first_line.count(",") else ","


def iter_rows(path: str | os.PathLike, delimiter: str | None = None, comment: str = "#") -> Iterator[list[str]]:
    """Yield the rows of a delimited text file, skipping blank lines and ``comment`` lines.

    A truncated or corrupt gzip stream raises :class:`MalformedInputError` naming the file.
    """
    p = os.fspath(path)
    try:
        with open_text(p) as fh:
            first = True
            for line in fh:
                if not line.strip() or (comment and line.startswith(comment)):
                    continue
                if first:
                    delim = delimiter or _delimiter_for(p, line)
                    first = False
                yield next(csv.reader([line.rstrip("\r\n")], delimiter=delim))
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise MalformedInputError(f"truncated or corrupt gzip ({e})", p, "re-create or re-download the file") from None
    except UnicodeDecodeError:
        raise MalformedInputError("not a UTF-8 text table", p) from None


@dataclass
class Table:
    """A header and string rows; ``column(name)`` returns one column."""

    path: str
    header: list[str]
    rows: list[list[str]]

    def has(self, name: str) -> bool:
        return name in self.header

    def column(self, name: str) -> list[str]:
        i = self.header.index(name)
        return [r[i] for r in self.rows]


def read_table(path: str | os.PathLike, required: Sequence[str] = (), delimiter: str | None = None) -> Table:
    """Read a headed table; check required columns and that every row has the header's width."""
    p = os.fspath(path)
    rows = iter_rows(p, delimiter)
    try:
        header = [h.strip() for h in next(rows)]
    except StopIteration:
        raise MalformedInputError("empty table (no header line)", p) from None
    missing = [c for c in required if c not in header]
    if missing:
        raise MalformedInputError(f"missing column(s) {', '.join(missing)}; found {', '.join(header)}", p)
    body = []
    for lineno, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise MalformedInputError(f"row {lineno} has {len(row)} fields, the header has {len(header)}", p)
        body.append([c.strip() for c in row])
    return Table(p, header, body)


@dataclass
class ManifestEntry:
    sample: str
    paths: dict[str, str]       # column -> absolute path (empty columns left out)
    fields: dict[str, str]      # every column as written


def read_manifest(path: str | os.PathLike, path_columns: Sequence[str], optional_path_columns: Sequence[str] = ()
                  ) -> list[ManifestEntry]:
    """Read a manifest TSV with a ``sample`` column and file-path columns.

    Relative paths are taken relative to the manifest's folder (so a cohort folder can move).
    Every named file must exist: the first absent one raises :class:`InputMissingError` naming
    the manifest, the row and the file. Duplicate samples raise :class:`MalformedInputError`.
    """
    table = read_table(path, required=["sample", *path_columns])
    base = os.path.dirname(os.path.abspath(table.path))
    entries, seen = [], set()
    for lineno, row in enumerate(table.rows, start=2):
        fields = dict(zip(table.header, row))
        sample = fields["sample"]
        if not sample:
            raise MalformedInputError(f"row {lineno} has an empty sample ID", table.path)
        if sample in seen:
            raise MalformedInputError(f"duplicate sample ID '{sample}' (row {lineno})", table.path)
        seen.add(sample)
        paths = {}
        for col in [*path_columns, *optional_path_columns]:
            value = fields.get(col, "")
            if not value:
                if col in path_columns:
                    raise MalformedInputError(f"row {lineno} ({sample}) has an empty '{col}'", table.path)
                continue
            full = value if os.path.isabs(value) else os.path.join(base, value)
            if not os.path.isfile(full):
                raise InputMissingError(f"row {lineno} ({sample}): {col} file '{value}' does not exist", table.path,
                                        "fix the path; relative paths are read from the manifest's folder")
            paths[col] = full
        entries.append(ManifestEntry(sample, paths, fields))
    if not entries:
        raise MalformedInputError("manifest lists no samples", table.path)
    return entries


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Sample IDs from a ``--keep``/``--remove`` file: one ID a line, or plink's ``FID IID`` (IID used)."""
    p = require_readable(path)
    ids = []
    for row in iter_rows(p, delimiter=None):
        fields = row[0].split() if len(row) == 1 else row
        if not fields:
            continue
        if fields[0] in ("#FID", "FID", "IID", "#IID", "sample"):
            continue
        ids.append(fields[1] if len(fields) >= 2 else fields[0])
    if not ids:
        raise MalformedInputError("no sample IDs in the file", p)
    return ids
