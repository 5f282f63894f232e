#!/usr/bin/env bash
# The main job on data/sample/: preprocess every modality into HDF5 stores under OUT (default runs/sample).
# Each step writes OUT/NAME.h5 and OUT/NAME.log.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/sample}
S=data/sample
mkdir -p "$OUT"
phenoclip preprocess variants --vcf $S/variants.vcf.gz --out "$OUT/gene.h5" \
    --pgs $S/pgs/PGS_SIM001.txt --genes $S/genes.bed
phenoclip preprocess expression --table $S/expression.tsv.gz --out "$OUT/expr.h5" --transform cpm-log1p
phenoclip preprocess mri --manifest $S/mri/manifest.tsv --out "$OUT/mri.h5" --spacing 1.5 --shape 32,32,32
phenoclip preprocess signals --manifest $S/signals/manifest.tsv --out "$OUT/signal.h5"
phenoclip preprocess phenotypes --phenopackets $S/phenotypes/phenopackets --labels $S/labels.tsv --out "$OUT/pheno.h5"
echo "sample pipeline done: stores in $OUT" >&2
