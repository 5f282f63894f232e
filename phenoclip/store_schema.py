"""The store schemas: which kinds of store phenoclip writes, at which version, and which
modality each data schema provides (the store contract: :mod:`phenoclip.store`).

This module imports h5py only (no torch), so it is safe anywhere.
"""

from __future__ import annotations

import h5py

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

#: the dtype of every string dataset (variable-length UTF-8)
STR_DTYPE = h5py.string_dtype("utf-8")
