"""The HDF5 store: the contract between phenoclip's steps.

One file per modality per cohort. Root attributes: ``phenoclip_schema``, ``schema_version``,
``phenoclip_version``, ``command``, ``created``. Every store has ``samples`` (unique UTF-8
strings); the first axis of every per-sample dataset follows it. Per-sample datasets are chunked
one sample per chunk and gzip-compressed so a reader can pull one patient without touching the
rest.

Writers go through :func:`create_store`, which writes ``.NAME.tmp-PID`` beside the target and
renames it only when the block exits cleanly: a killed step never leaves a half-written store.
Readers go through :func:`open_store`, which refuses unknown schemas and newer versions.

This module imports h5py and numpy only (no torch), so it is safe anywhere.
"""

from __future__ import annotations

import contextlib
import errno
import datetime as _dt
import functools
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Sequence

import h5py
import numpy as np

from phenoclip import __version__
from phenoclip.store_layout import COMPRESSION, chunks_for, compression_for
from phenoclip.errors import (
    InconsistentInputError,
    MalformedInputError,
    OutputError,
    require_readable,
    require_writable_parent,
)

#: schema name -> current version. Bump a version when a layout changes incompatibly.
SCHEMAS: dict[str, int] = {
    "genotypes": 1,
    "expression": 1,
    "volumes": 1,
    "signals": 1,
    "phenotypes": 1,
    "embeddings": 1,
    "attributions": 1,
    "predictions": 1,
    "retrieval": 1,  # a part of a sharded retrieve (phenoclip.retrieve.parts)
}

#: which modality name (CLI ``--modalities``) each data schema provides
SCHEMA_MODALITY: dict[str, str] = {
    "genotypes": "gene",
    "expression": "expr",
    "volumes": "mri",
    "signals": "signal",
    "phenotypes": "hpo",
}

STR_DTYPE = h5py.string_dtype("utf-8")

#: errno values of a disk that cannot take more data
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: HDF5 handles left open after a failed write (see create_store); never closed
_ABANDONED: list = []

#: the command line recorded in every store; the CLI sets it to the full invocation.
current_command: str = " ".join(sys.argv)


def _frees_disk_on_error(method):
    """On a full disk, empty the temporary store at once, while the failing method's HDF5
    handles are still alive: released later, each would retry its flush into a full disk and
    print a traceback (the store is discarded anyway)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as e:
            if e.errno in DISK_FULL_ERRNOS and self.tmp:
                with contextlib.suppress(OSError):
                    os.truncate(self.tmp, 0)
            raise
    return wrapper


class StoreWriter:
    """Handle given by :func:`create_store`; wraps the open temporary ``h5py.File``."""

    def __init__(self, h5: h5py.File, samples: Sequence[str], tmp: str | None = None):
        self.h5 = h5
        self.n_samples = len(samples)
        self.tmp = tmp

    @property
    def attrs(self) -> h5py.AttributeManager:
        return self.h5.attrs

    @_frees_disk_on_error
    def per_sample(self, name: str, data: np.ndarray | None = None, *, shape: Sequence[int] | None = None,
                   dtype=None, fillvalue=None, attrs: dict | None = None) -> h5py.Dataset:
        """Create a dataset whose first axis follows ``samples`` (chunked by sample, compressed)."""
        if data is not None:
            data = np.asarray(data)
            shape, dtype = data.shape, data.dtype
        if shape is None or dtype is None:
            raise ValueError("per_sample needs data or shape and dtype")
        if shape[0] != self.n_samples:
            raise ValueError(f"{name}: first axis {shape[0]} != {self.n_samples} samples")
        dt = np.dtype(dtype)
        if 0 in tuple(shape):
            # an empty axis (a VCF with no ALT allele gives 0 variants) cannot be chunked: store it
            # contiguous, which readers see as the same empty array
            ds = self.h5.create_dataset(name, shape=tuple(shape), dtype=dt, fillvalue=fillvalue)
        else:
            ds = self.h5.create_dataset(name, shape=tuple(shape), dtype=dt, chunks=chunks_for(shape, dt.itemsize),
                                        fillvalue=fillvalue, **compression_for(dt.itemsize))
        if data is not None:
            ds[...] = data
        for k, v in (attrs or {}).items():
            ds.attrs[k] = v
        return ds

    @_frees_disk_on_error
    def write_rows(self, name: str, start: int, block: np.ndarray, threads: int = 2) -> None:
        """Write ``block`` into rows ``start:start+len(block)`` of a per-sample dataset.

        When each chunk is exactly one whole row and the only filter is deflate (int8 data),
        rows are compressed here with ISA-L's deflate (``isal``: the zlib stream format HDF5's
        gzip filter reads, about 4x faster than zlib at level 1 and a little smaller) on
        ``threads`` threads, and stored with ``write_direct_chunk``: HDF5 would otherwise compress
        them one by one with zlib on one core. Compression was most of a genotype store's write
        time (``phenoclip benchmark --suite ingest``).
        """
        ds = self.h5[name]
        block = np.ascontiguousarray(block, dtype=ds.dtype)
        direct = (ds.chunks == (1, *ds.shape[1:]) and ds.compression == "gzip" and not ds.shuffle
                  and not ds.fletcher32 and ds.scaleoffset is None)
        if not direct:
            ds[start:start + len(block)] = block
            return
        # imported here: only direct chunk writes pay for isal
        from isal.isal_zlib import compress

        # ISA-L has levels 0-3: its level 1 is smaller than zlib's level 1 (COMPRESSION)
        level = min(int(ds.compression_opts), 3)
        ndim_rest = (0,) * (ds.ndim - 1)
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for i, packed in enumerate(pool.map(lambda row: compress(row.tobytes(), level), block)):
                ds.id.write_direct_chunk((start + i, *ndim_rest), packed)

    @_frees_disk_on_error
    def array(self, name: str, data, attrs: dict | None = None) -> h5py.Dataset:
        """Write a dataset that is not per sample (a variant table column, an affine, ...).

        Sequences of ``str`` are stored as variable-length UTF-8 strings.
        """
        if _is_str_seq(data):
            ds = self.h5.create_dataset(name, data=np.asarray(list(data), dtype=object), dtype=STR_DTYPE,
                                        **(COMPRESSION if len(data) > 1024 else {}))
        else:
            arr = np.asarray(data)
            kw = compression_for(arr.dtype.itemsize) if arr.size > 1024 else {}
            ds = self.h5.create_dataset(name, data=arr, **kw)
        for k, v in (attrs or {}).items():
            ds.attrs[k] = v
        return ds


def _is_str_seq(data) -> bool:
    if isinstance(data, np.ndarray):
        return data.dtype.kind in ("U", "O")
    if isinstance(data, (list, tuple)):
        return len(data) > 0 and isinstance(data[0], str) or len(data) == 0
    return False


def check_unique_samples(samples: Sequence[str], source: str | os.PathLike | None = None) -> None:
    """Raise :class:`MalformedInputError` naming the first duplicated sample ID."""
    seen: set[str] = set()
    for s in samples:
        if s in seen:
            raise MalformedInputError(f"duplicate sample ID '{s}'", source, "sample IDs must be unique")
        seen.add(s)


@contextlib.contextmanager
def create_store(path: str | os.PathLike, schema: str, samples: Sequence[str], *,
                 attrs: dict | None = None, source: str | os.PathLike | None = None) -> Iterator[StoreWriter]:
    """Write a store atomically.

    Parameters
    ----------
    path:
        The final file name; nothing appears there unless the block completes.
    schema:
        One of :data:`SCHEMAS`.
    samples:
        Sample IDs, unique; rows of every per-sample dataset follow this order.
    attrs:
        Extra root attributes (for example the normalisation applied).
    source:
        The input the samples came from, named in the duplicate-ID error.
    """
    if schema not in SCHEMAS:
        raise ValueError(f"unknown schema {schema!r}")
    samples = [str(s) for s in samples]
    check_unique_samples(samples, source)
    path = require_writable_parent(path)
    if os.path.isdir(path):
        raise OutputError("is a folder, expected a file name for the store", path)
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        h5 = h5py.File(tmp, "w")
    except OSError as e:
        raise OutputError(f"cannot create the store: {e}", path) from None
    ok = closing = False
    # the datasets released while a full-disk error travels up each retry their flush and fail
    # again, printing a traceback each; the CLI reports the error in one line
    hook, sys.unraisablehook = sys.unraisablehook, _quiet_broken_hdf5
    try:
        h5.attrs["phenoclip_schema"] = schema
        h5.attrs["schema_version"] = SCHEMAS[schema]
        h5.attrs["phenoclip_version"] = __version__
        h5.attrs["command"] = current_command
        h5.attrs["created"] = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
        for k, v in (attrs or {}).items():
            h5.attrs[k] = v
        h5.create_dataset("samples", data=np.asarray(samples, dtype=object), dtype=STR_DTYPE)
        yield StoreWriter(h5, samples, tmp)
        closing = True
        h5.close()
        os.replace(tmp, path)
        ok = True
    except BaseException as e:
        # after a failed write to a full disk HDF5's state is broken and closing the file again
        # crashes the process (seen: segfault in H5Fclose): leave the handle open, never to be
        # touched again, and let the CLI exit without finalisers (cli.main)
        broken = closing or (isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS)
        if broken:
            _ABANDONED.append(h5)
            hook = _quiet_broken_hdf5   # keep it: more handles are released on the way out
        else:
            with contextlib.suppress(Exception):
                h5.close()
        raise
    finally:
        sys.unraisablehook = hook
        if not ok:
            with contextlib.suppress(OSError):
                os.truncate(tmp, 0)   # frees the space now, even while a handle stays open
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)


def _quiet_broken_hdf5(unraisable) -> None:
    if isinstance(unraisable.exc_value, RuntimeError) and "file write failed" in str(unraisable.exc_value):
        return
    sys.__unraisablehook__(unraisable)


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
