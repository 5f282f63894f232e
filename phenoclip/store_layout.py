"""How a store lays a dataset out on disk: compression and chunk shape (see :mod:`phenoclip.store`).

Per-sample datasets are chunked one sample per chunk, so a reader pulls one patient without
touching the rest; very wide rows are split so that no chunk exceeds :data:`MAX_CHUNK_BYTES`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# gzip (not lzf) so that R's rhdf5, HDFView and h5dump read our stores too; level 1: higher
# levels cost ingest time for a few percent of size on genotype matrices.
COMPRESSION = dict(compression="gzip", compression_opts=1)


def compression_for(itemsize: int) -> dict:
    # byte shuffle helps multi-byte numbers compress and does nothing for int8 but cost time
    return {**COMPRESSION, "shuffle": itemsize > 1}


#: largest chunk a dataset gets (bytes)
MAX_CHUNK_BYTES = 4 << 20


def chunks_for(shape: Sequence[int], itemsize: int) -> tuple[int, ...] | None:
    """One sample per chunk; very wide rows are split so a chunk stays under 4 MiB."""
    if len(shape) == 0 or shape[0] == 0:
        return None
    chunk = [1] + [max(1, int(s)) for s in shape[1:]]
    # split the last axes until the chunk is small enough
    axis = len(chunk) - 1
    while int(np.prod(chunk)) * itemsize > MAX_CHUNK_BYTES and axis >= 1:
        if chunk[axis] > 1:
            chunk[axis] = max(1, chunk[axis] // 2)
        else:
            axis -= 1
    return tuple(chunk)
