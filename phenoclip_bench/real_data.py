"""Real public data sets that ship inside registry packages, as benchmark cohorts (no download at run time).

* ``gse7390``: 198 lymph-node-negative breast tumours of the TRANSBIG cohort (GEO GSE7390,
  Desmedt et al., Clin Cancer Res 2007): the 76 Affymetrix probes of Wang's prognostic signature
  (RMA log2 intensities) with ER status, histological grade and distant metastasis, as shipped
  in scikit-survival (``sksurv.datasets.load_breast_cancer``; install ``phenoclip[bench]``).
* ``pbmc68k``: 660 peripheral blood mononuclear cells of 10x Genomics' PBMC 68k data set (Zheng et
  al., Nat Commun 2017), the 765 highly variable genes of scanpy's ``pbmc68k_reduced`` (log-normalised
  counts, its ``raw``), labelled with the 7 of its 10 ``bulk_labels`` cell types that have at least
  30 cells (the 3 rarest, 8, 13 and 19 cells, would leave a class without one labelled cell at 10 %
  of labels); shipped inside scanpy (``scanpy/datasets/10x_pbmc68k_reduced.h5ad``; install
  ``phenoclip[bench]``). Read with anndata from the installed file, without importing scanpy.

:func:`write_cohort` writes ``expression.tsv`` (samples x genes, already on a log scale, so it is
preprocessed with ``--transform none``) and ``labels.tsv`` (its first column is the label the
benchmark's classification uses: ``er``, ``cell_type``), then the expression store ``expr.h5``.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np

from phenoclip.data.simulate.writers import write_tsv
from phenoclip.errors import UsageError
from phenoclip.preprocess.expression import convert_expression

#: name -> one line for the report
DATASETS = {"gse7390": "198 breast tumours (GSE7390 / TRANSBIG, 76 genes of Wang's signature, ER status), "
                       "shipped in scikit-survival",
            "pbmc68k": "660 blood cells (10x PBMC 68k, 765 highly variable genes, 7 cell types assigned against "
                       "sorted reference populations), shipped in scanpy"}
#: bulk-label classes with fewer cells than this are left out of the pbmc68k cohort
MIN_CELLS_PER_TYPE = 30


def write_cohort(name: str, folder: Path) -> Path:
    """Write the named data set into ``folder`` (tables, then the expression store); returns ``folder``."""
    if name not in DATASETS:
        raise ValueError(f"unknown real data set '{name}' (known: {', '.join(DATASETS)})")
    folder.mkdir(parents=True, exist_ok=True)
    if name == "pbmc68k":
        _write_pbmc68k(folder)
    else:
        _write_gse7390(folder)
    convert_expression(folder / "expression.tsv", folder / "expr.h5", transform="none")
    return folder


def _write_gse7390(folder: Path) -> None:
    try:  # optional: scikit-survival comes with the bench extra
        from sksurv.datasets import load_breast_cancer
    except ImportError:
        raise UsageError("the gse7390 cohort ships in scikit-survival: pip install 'phenoclip[bench]'") from None

    x, y = load_breast_cancer()
    ids = [f"T{i + 1:03d}" for i in range(len(x))]
    genes = [c for c in x.columns if c not in ("age", "er", "grade", "size")]
    write_tsv(str(folder / "expression.tsv"), ["sample", *genes],
              ([sid, *(f"{v:.6f}" for v in row.to_numpy())] for sid, (_, row) in zip(ids, x[genes].iterrows())))
    write_tsv(str(folder / "labels.tsv"), ["sample", "er", "grade", "metastasis"],
              ([sid, er, str(grade).replace(" ", "_"), int(event)]
               for sid, er, grade, (event, _) in zip(ids, x["er"], x["grade"], y)))


def _write_pbmc68k(folder: Path) -> None:
    # the file scanpy.datasets.pbmc68k_reduced() reads, found without importing scanpy (which pulls
    # numba and takes seconds); anndata is the format's own reader
    spec = importlib.util.find_spec("scanpy")
    try:
        import anndata
    except ImportError:
        spec = None
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "10x_pbmc68k_reduced.h5ad" if spec else None
    if path is None or not path.exists():
        raise UsageError("the pbmc68k cohort ships in scanpy: pip install 'phenoclip[bench]'")
    with warnings.catch_warnings():  # the file predates anndata's current layout and says so on every read
        warnings.simplefilter("ignore")
        data = anndata.read_h5ad(path)
    counts = data.raw.X  # log-normalised counts of the 765 genes (X holds them scaled per gene)
    counts = np.asarray(counts.toarray() if hasattr(counts, "toarray") else counts, dtype=np.float64)
    cell_type = data.obs["bulk_labels"].astype(str).to_numpy()
    types, n = np.unique(cell_type, return_counts=True)
    keep = np.isin(cell_type, types[n >= MIN_CELLS_PER_TYPE])
    ids = data.obs_names.to_numpy()[keep]
    write_tsv(str(folder / "expression.tsv"), ["sample", *data.raw.var_names],
              ([sid, *(f"{v:.6f}" for v in row)] for sid, row in zip(ids, counts[keep])))
    write_tsv(str(folder / "labels.tsv"), ["sample", "cell_type"],
              ([sid, t.replace(" ", "_")] for sid, t in zip(ids, cell_type[keep])))
