"""Writing a store atomically: :func:`create_store` and the :class:`StoreWriter` it gives.

:func:`create_store` writes ``.NAME.tmp-PID`` beside the target and renames it only when the
block exits cleanly: a killed step never leaves a half-written store. Per-sample datasets are
chunked one sample per chunk and compressed (:mod:`phenoclip.store_layout`); the store contract
is described in :mod:`phenoclip.store`.

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
from phenoclip.store_schema import SCHEMAS, STR_DTYPE
from phenoclip.errors import MalformedInputError, OutputError, require_writable_parent

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
