"""Real public data sets that ship inside registry packages, as benchmark cohorts (no download at run time).

* ``gse7390``: 198 lymph-node-negative breast tumours of the TRANSBIG cohort (GEO GSE7390,
  Desmedt et al., Clin Cancer Res 2007): the 76 Affymetrix probes of Wang's prognostic signature
  (RMA log2 intensities) with ER status, histological grade and distant metastasis, as shipped
  in scikit-survival (``sksurv.datasets.load_breast_cancer``; install ``phenoclip[bench]``).

:func:`write_cohort` writes ``expression.tsv`` (samples x genes, already on a log scale, so it is
preprocessed with ``--transform none``) and ``labels.tsv`` (``er`` first: the label the
benchmark's classification uses), then the expression store ``expr.h5``.
"""

from __future__ import annotations

from pathlib import Path

from phenoclip.errors import UsageError
from phenoclip.preprocess.expression import convert_expression

#: name -> one line for the report
DATASETS = {"gse7390": "198 breast tumours (GSE7390 / TRANSBIG, 76 genes of Wang's signature, ER status), "
                       "shipped in scikit-survival"}


def write_cohort(name: str, folder: Path) -> Path:
    """Write the named data set into ``folder`` (tables, then the expression store); returns ``folder``."""
    if name != "gse7390":
        raise ValueError(f"unknown real data set '{name}' (known: {', '.join(DATASETS)})")
    try:  # optional: scikit-survival comes with the bench extra
        from sksurv.datasets import load_breast_cancer
    except ImportError:
        raise UsageError("the gse7390 cohort ships in scikit-survival: pip install 'phenoclip[bench]'") from None

    x, y = load_breast_cancer()
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"T{i + 1:03d}" for i in range(len(x))]
    genes = [c for c in x.columns if c not in ("age", "er", "grade", "size")]
    with open(folder / "expression.tsv", "w") as fh:
        fh.write("sample\t" + "\t".join(genes) + "\n")
        for sid, (_, row) in zip(ids, x[genes].iterrows()):
            fh.write(sid + "\t" + "\t".join(f"{v:.6f}" for v in row.to_numpy()) + "\n")
    with open(folder / "labels.tsv", "w") as fh:
        fh.write("sample\ter\tgrade\tmetastasis\n")
        for sid, er, grade, (event, _) in zip(ids, x["er"], x["grade"], y):
            fh.write(f"{sid}\t{er}\t{str(grade).replace(' ', '_')}\t{int(event)}\n")
    convert_expression(folder / "expression.tsv", folder / "expr.h5", transform="none")
    return folder
