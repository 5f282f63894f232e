"""The files of a finished explain run (or merge), all moved into place together.

From ``--out PREFIX``:

==========================  ===============================================================
``PREFIX.h5``               schema ``attributions`` (layout in :mod:`phenoclip.explain.run`)
``PREFIX.tsv``              ranked global summary (:mod:`phenoclip.explain.summary`)
``PREFIX.manhattan.png``    variants: genomic position against mean |attribution|
``PREFIX.top.png``          expression: the strongest genes
``PREFIX.slices.png``       MRI: orthogonal slices of the mean |attribution| map on the grid
``PREFIX.genes.tsv``        variants with ``--genes FILE``: per-gene aggregation
``PREFIX.volumes/``         MRI: ``<sample>.nii.gz`` per individual in original space
``PREFIX.log``              the run log (written by the CLI)
==========================  ===============================================================

Everything is first written under temporary names; only when all of it exists is it renamed
into place, so a failure leaves none of these files behind (older ones stay as they were).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from phenoclip.errors import OutputError
from phenoclip.explain import summary
from phenoclip.explain.volumes import replace_folder, write_volumes
from phenoclip.store_read import open_store

PLOT_SUFFIX = {"gene": ".manhattan.png", "expr": ".top.png", "mri": ".slices.png"}


def read_meta(path: str | os.PathLike) -> tuple[str, dict, tuple[int, ...]]:
    """``(modality, feature metadata, feature shape)`` of an attributions store."""
    with open_store(path, expect="attributions") as s:
        modality = str(s.attrs["modality"])
        shape = tuple(s["attributions"].shape[1:])
        meta: dict = {}
        if modality == "gene":
            meta["variants"] = {k: (s.strings(f"variants/{k}") if k != "pos" else s[f"variants/{k}"][...])
                                for k in ("chrom", "pos", "id", "ref", "alt")}
        elif modality == "expr":
            meta["genes"] = s.strings("genes")
    return modality, meta, shape


def finalise(pending: str | os.PathLike, prefix: str, *, genes=None, gene_window: int = 0, volumes: bool = True,
             top: int = 10) -> list[str]:
    """Write the summary files of the store ``pending``, then move it and them into place.

    ``genes`` is a :class:`~phenoclip.io.annotations.GeneIntervals` (variants only). Returns the
    paths written.
    """
    pending = Path(pending)
    modality, meta, shape = read_meta(pending)
    tag = f".tmp-{os.getpid()}"
    final = {"h5": Path(f"{prefix}.h5"), "tsv": Path(f"{prefix}.tsv"), "plot": Path(prefix + PLOT_SUFFIX[modality])}
    if genes is not None and modality == "gene":
        final["genes"] = Path(f"{prefix}.genes.tsv")
    if volumes and modality == "mri":
        final["volumes"] = Path(f"{prefix}.volumes")
    tmp = {k: (p.parent / f".{p.name}{tag}" if k != "h5" else pending) for k, p in final.items()}
    try:
        mean_abs, mean, n = summary.feature_means(pending)
        header, columns = summary.feature_columns(modality, meta, shape)
        summary.write_table(tmp["tsv"], header, columns, mean_abs, mean)
        title = f"{n} individuals"
        if modality == "gene":
            summary.manhattan_png(tmp["plot"], meta["variants"], mean_abs.reshape(-1), top=top,
                                  title=f"variant attributions, {title}")
        elif modality == "expr":
            summary.top_features_png(tmp["plot"], meta["genes"], mean_abs.reshape(-1),
                                     title=f"gene attributions, {title}")
        else:
            summary.slices_png(tmp["plot"], np.abs(mean_abs).sum(0), title=f"voxel attributions, {title}")
        if "genes" in tmp:
            summary.write_gene_table(tmp["genes"], meta["variants"], mean_abs.reshape(-1), genes, gene_window)
        if "volumes" in tmp:
            write_volumes(pending, tmp["volumes"])
        for k in final:
            if k == "volumes":
                replace_folder(tmp[k], final[k])
            elif k != "h5":
                os.replace(tmp[k], final[k])
        os.replace(pending, final["h5"])
    except OSError as e:
        raise OutputError(f"cannot write the outputs ({e.strerror or e})", prefix) from None
    finally:
        for k, p in tmp.items():
            if k == "volumes" and p.exists():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists():
                p.unlink()
    return [str(p) for p in final.values()]
