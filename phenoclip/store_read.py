"""Reading a store: :func:`open_store`, which refuses unknown schemas, newer versions and data
kept outside the file, and the lazy :class:`Store` it gives (the store contract:
:mod:`phenoclip.store`).

This module imports h5py and numpy only (no torch), so it is safe anywhere.
"""

from __future__ import annotations

import os
from typing import Sequence

import h5py
import numpy as np

from phenoclip import __version__
from phenoclip.store_schema import SCHEMA_MODALITY, SCHEMAS
from phenoclip.errors import InconsistentInputError, MalformedInputError, require_readable


class Store:
    """A store opened for lazy reading. Use :func:`open_store`.

    ``store["dosage"]`` is the h5py dataset (nothing read yet); ``store.read("dosage", i)`` reads
    sample ``i``'s row. Close it, or use it as a context manager.
    """

    def __init__(self, path: str, h5: h5py.File):
        self.path = path
        self.h5 = h5
        self.schema: str = _attr_str(h5.attrs["phenoclip_schema"])
        self.version: int = int(h5.attrs["schema_version"])
        self._samples: list[str] | None = None

    @property
    def attrs(self) -> h5py.AttributeManager:
        return self.h5.attrs

    @property
    def modality(self) -> str | None:
        return SCHEMA_MODALITY.get(self.schema)

    @property
    def samples(self) -> list[str]:
        if self._samples is None:
            self._samples = self.strings("samples")
        return self._samples

    def __len__(self) -> int:
        return len(self.samples)

    def __contains__(self, name: str) -> bool:
        return name in self.h5

    def __getitem__(self, name: str) -> h5py.Dataset:
        try:
            return self.h5[name]
        except KeyError:
            raise MalformedInputError(f"store has no dataset '{name}'", self.path,
                                      f"schema {self.schema} v{self.version}") from None

    def read(self, name: str, index: int | slice | Sequence[int]) -> np.ndarray:
        """Read the rows ``index`` of a per-sample dataset (one chunk per sample touched)."""
        ds = self[name]
        if isinstance(index, (list, tuple, np.ndarray)):
            idx = np.asarray(index)
            order = np.argsort(idx)
            # h5py wants increasing indices; restore the asked order afterwards
            out = ds[np.sort(idx)]
            inv = np.empty_like(order)
            inv[order] = np.arange(len(order))
            return out[inv]
        return ds[index]

    def strings(self, name: str) -> list[str]:
        """Read a string dataset as Python ``str``."""
        return [s.decode() if isinstance(s, bytes) else str(s) for s in self[name][...]]

    def close(self) -> None:
        self.h5.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _attr_str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def open_store(path: str | os.PathLike, expect: str | Sequence[str] | None = None) -> Store:
    """Open a store for reading, checking that it is one of ours and that we can read it.

    Parameters
    ----------
    expect:
        Schema name(s) the caller accepts; another schema raises :class:`InconsistentInputError`.
    """
    p = require_readable(path, "store")
    try:
        h5 = h5py.File(p, "r")
    except OSError:
        raise MalformedInputError("not an HDF5 file", p, "give a store written by phenoclip preprocess") from None
    if "phenoclip_schema" not in h5.attrs or "schema_version" not in h5.attrs:
        h5.close()
        raise MalformedInputError("HDF5 file is not a phenoclip store (no phenoclip_schema attribute)", p)
    schema = _attr_str(h5.attrs["phenoclip_schema"])
    version = int(h5.attrs["schema_version"])
    if schema not in SCHEMAS:
        h5.close()
        raise MalformedInputError(f"unknown store schema '{schema}'", p,
                                  f"this phenoclip {__version__} reads {', '.join(SCHEMAS)}")
    if version > SCHEMAS[schema]:
        h5.close()
        raise MalformedInputError(f"{schema} store version {version} is newer than this phenoclip reads "
                                  f"(version {SCHEMAS[schema]})", p, "upgrade phenoclip")
    if expect is not None:
        allowed = [expect] if isinstance(expect, str) else list(expect)
        if schema not in allowed:
            h5.close()
            raise InconsistentInputError(f"store holds {schema}, expected {' or '.join(allowed)}", p)
    if "samples" not in h5:
        h5.close()
        raise MalformedInputError("store has no 'samples' dataset", p)
    problem = _indirection(h5)
    if problem:
        h5.close()
        raise MalformedInputError(f"{problem}; a store's data must live inside the file", p,
                                  "re-create the store with phenoclip preprocess")
    return Store(p, h5)


def _indirection(group: h5py.Group, prefix: str = "") -> str | None:
    """The first link or dataset that would make HDF5 read outside the file (soft and external
    links, external raw storage, virtual datasets), or None. A store written by phenoclip has
    none; following them would read, say, ``/etc/passwd`` as expression values."""
    for name in group:
        link = group.get(name, getlink=True)
        path = f"{prefix}/{name}"
        if isinstance(link, h5py.ExternalLink):
            return f"{path} is an external link to {link.filename}"
        if isinstance(link, h5py.SoftLink):
            return f"{path} is a soft link to {link.path}"
        obj = group[name]
        if isinstance(obj, h5py.Group):
            problem = _indirection(obj, path)
            if problem:
                return problem
        elif isinstance(obj, h5py.Dataset):
            if obj.external:
                return f"dataset {path} keeps its values in external file(s) {obj.external[0][0]!r}"
            if obj.is_virtual:
                return f"dataset {path} is virtual (its values come from other files)"
    return None
