"""The HDF5 store: the contract between phenoclip's steps.

One file per modality per cohort. Root attributes: ``phenoclip_schema``, ``schema_version``,
``phenoclip_version``, ``command``, ``created``. Every store has ``samples`` (unique UTF-8
strings); the first axis of every per-sample dataset follows it. Per-sample datasets are chunked
one sample per chunk and gzip-compressed so a reader can pull one patient without touching the
rest.

Writers go through :func:`create_store`, which writes ``.NAME.tmp-PID`` beside the target and
renames it only when the block exits cleanly: a killed step never leaves a half-written store.
Readers go through :func:`open_store`, which refuses unknown schemas and newer versions.

The contract is kept in three modules: :mod:`phenoclip.store_schema` (the schemas and their
versions), :mod:`phenoclip.store_write` (:func:`create_store`, the atomic staging) and
:mod:`phenoclip.store_read` (:func:`open_store`, :class:`Store`); the on-disk layout of a dataset
is :mod:`phenoclip.store_layout`. This module hands on the names most callers use.

These modules import h5py and numpy only (no torch), so they are safe anywhere.
"""

from phenoclip.store_read import Store, open_store
from phenoclip.store_schema import SCHEMA_MODALITY, STR_DTYPE
from phenoclip.store_write import create_store

__all__ = ["SCHEMA_MODALITY", "STR_DTYPE", "Store", "create_store", "open_store"]
