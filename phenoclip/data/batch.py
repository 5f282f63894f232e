"""Batch-dict keys shared by datasets, encoders, objectives and the training loop.

A multimodal batch is a dict::

    {
        SAMPLE_IDS: list[str],                        # B patient IDs
        "gene":   {DOSAGE: (B, V) float32 in {0,1,2}, missing as -1; HAPLOTYPES: (B, 2, V) optional;
                   PRESENT: (B,) bool},
        "expr":   {VALUES: (B, G) float32 (standardised per gene); PRESENT: (B,) bool},
        "mri":    {IMAGES: (B, 1, D, H, W) float32; MASKS: (B, 1, D, H, W) optional; PRESENT},
        "signal": {SIGNALS: (B, C, T) float32; PRESENT},
        "hpo":    {TERMS: (B, K) long, indices into the phenotype store's ontology, padded with -1;
                   PRESENT},
    }

A modality a patient lacks is zero-filled in its row with ``PRESENT`` False: every tensor keeps
the full batch size so modalities stay aligned by row, and losses select rows with ``PRESENT``.
"""

SAMPLE_IDS = "sample_ids"
PRESENT = "present"
DOSAGE = "dosage"
HAPLOTYPES = "haplotypes"
VALUES = "values"
IMAGES = "images"
MASKS = "masks"
SIGNALS = "signals"
TERMS = "terms"

#: modality names used on the command line (``--modalities``) and as batch keys
MODALITIES = ("gene", "expr", "mri", "signal", "hpo")
