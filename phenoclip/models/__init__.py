"""phenoclip.models: per-modality encoders, the multimodal model, pretext heads and the name -> class registry.

Modules (import them directly; this package imports nothing, so ``phenoclip --help`` stays torch-free):

- ``variant``: ``VariantTransformer``, ``VariantMamba``, ``DosageMLP`` (batch key ``gene``)
- ``expression``: ``ExpressionMamba``, ``TabularMLP`` (``expr``)
- ``mri``: ``VolumeViT``, ``patchify`` / ``unpatchify`` (``mri``)
- ``signal``: ``SignalCNNTransformer`` (``signal``)
- ``phenotype``: ``HpoEncoder`` with ontology-graph initialisation (``hpo``)
- ``heads``: ``ProjectionHead``, ``VariantMaskingHead``, ``VolumeReconstructionHead``, shared blocks
- ``masks``: ``haplotype_block_mask``, ``random_patch_mask``, ``estimate_ld_blocks``
- ``multimodal``: ``MultimodalModel`` (``encode(modality, inputs, normalize=True)``, ``logit_scale``), ``build_model``
- ``registry``: ``ENCODERS`` ((modality, arch) -> class), ``build_encoder``, ``encoder_from_config``
- ``presets``: ``tiny`` / ``small`` / ``paper`` typed, JSON-serialisable size presets

Encoder contract: ``forward(inputs) -> (B, width)`` on the modality's sub-dict of the batch
(keys in :mod:`phenoclip.data.batch`); ``forward_tokens(inputs, token_mask=None) -> (B, L, width)``
where a bool ``(B, L)`` mask hides tokens behind a learned mask token; ``forward_features`` returns
both from one pass; attributes ``width``, ``n_tokens``, ``supports_token_mask`` and ``config``
(the JSON constructor arguments). Encoders know nothing about losses.
"""
