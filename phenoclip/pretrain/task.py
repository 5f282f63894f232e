"""The pretraining task: joins the multimodal model with the objectives a run asked for.

Encoders know nothing about losses and losses nothing about encoders; this module is the one
place where a batch becomes named loss terms. ``forward(batch)`` is the training step (so DDP
can wrap the task); every random draw (masks, corruptions) comes from per-patient streams keyed
by a number drawn from ``self.generators`` each step, whose states go into checkpoints.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from phenoclip.pretrain.settings import TABULAR_OBJECTIVES, PretrainSettings
from phenoclip.data.augment import AugmentSettings, augment_batch
from phenoclip.data.batch import DOSAGE, IMAGES, PRESENT, SAMPLE_IDS, TERMS, VALUES
from phenoclip.models.heads import (VariantMaskingHead, VolumeReconstructionHead, freeze_attention_key_bias,
                                    freeze_bias_before_batch_norm)
from phenoclip.models.masks import haplotype_block_mask, random_patch_mask
from phenoclip.models.mri import patchify
from phenoclip.models.multimodal import build_model
from phenoclip.objectives import (ByolLoss, ClipLoss, MaskedReconstructionLoss, MaskedTokenLoss,
                                  OntologyAlignmentLoss, ScarfCorruption, ScarfLoss, VimeLoss, VimeMasking,
                                  WeightedSum)
from phenoclip.objectives.ontology import ancestor_distance_matrix, hierarchy_targets
from phenoclip.objectives.distributed import all_gather_with_grad, share_of_global_mean
from phenoclip.ops.draws import BatchDraws, RowDraws, drawing, row_dropout

#: the tensor each tabular modality is corrupted on
TABULAR_KEY = {"expr": VALUES, "gene": DOSAGE}
MAX_LOGIT_SCALE = math.log(100.0)


class PretrainTask(nn.Module):
    """Model + objectives for one :class:`~phenoclip.pretrain.settings.PretrainSettings`.

    Parameters
    ----------
    cfg:
        The resolved configuration (``cfg.data_shapes`` filled).
    init:
        Data-dependent initialisation from the training split (variant positions, LD blocks,
        column means, HPO vocabulary, SCARF marginals). ``None`` when weights will be loaded
        from a checkpoint, whose buffers carry the same information.
    """

    def __init__(self, cfg: PretrainSettings, init: dict | None = None):
        super().__init__()
        self.cfg = cfg
        shapes = {m: cfg.data_shapes[m] for m in cfg.modalities}
        if "ontology" in cfg.objectives:
            shapes["hpo"] = cfg.data_shapes["hpo"]  # term embeddings, even when hpo is not a CLIP modality
        self.model = build_model(shapes, cfg.preset, cfg.architectures, embed_dim=cfg.embed_dim,
                                 linear_components=cfg.linear_path, readouts=cfg.fits_gene_readout,
                                 readout_patients=cfg.data_shapes["n_train"] if cfg.gene_probe_choice else 0)
        self.generators = {"task": torch.Generator().manual_seed(cfg.seed + 1)}
        objectives = cfg.objectives
        self.weights = WeightedSum({o: cfg.weights.get(o, 1.0) for o in objectives})
        if "clip" in objectives:
            self.clip = ClipLoss(cfg.modalities)
        if "ontology" in objectives:
            self.ontology = OntologyAlignmentLoss(temperature=cfg.ontology_temperature)
            n_vocab = cfg.data_shapes["hpo"]["n_vocab"]
            self.register_buffer("ontology_targets", torch.zeros(n_vocab, n_vocab))
        if "mvm" in objectives:
            enc = self.model.encoders["mri"]
            self.mvm_head = VolumeReconstructionHead(enc.width, enc.patch, enc.in_channels)
            self.mvm = MaskedReconstructionLoss()
        if "mhm" in objectives:
            enc = self.model.encoders["gene"]
            if not hasattr(enc, "variant_to_token_mask"):
                raise ValueError("mhm needs a token-based gene encoder (transformer or mamba), not "
                                 f"'{self.model.archs['gene']}'")
            self.mhm_head = VariantMaskingHead(enc.width, enc.tokens.n_variants, enc.tokens.patch)
            self.mhm = MaskedTokenLoss()
            self.register_buffer("ld_blocks", torch.zeros(enc.tokens.n_variants, dtype=torch.int64))
        tab = [o for o in objectives if o in TABULAR_OBJECTIVES]
        if tab:
            self.tab_modality = cfg.tabular_modality
            n_features = int(np.prod(next(v for k, v in cfg.data_shapes[self.tab_modality].items()
                                          if k in ("n_genes", "n_variants"))))
            n_rows = cfg.data_shapes.get("n_tabular_train", cfg.data_shapes["n_train"])
            self.register_buffer("marginals", torch.zeros(n_rows, n_features))
        if "scarf" in objectives:
            self.scarf_loss = ScarfLoss(temperature=1.0)
        if "vime" in objectives:
            # the heads read the embedding (projection and linear path included), not the encoder's
            # pooled features: the embedding is what a probe and fine-tuning read, so it must be trained
            width = cfg.embed_dim or self.model.embed_dim
            self.vime_mask_head = nn.Linear(width, n_features)
            self.vime_recon_head = nn.Linear(width, n_features)
            self.vime_loss = VimeLoss()
        if "byol" in objectives:
            e = cfg.embed_dim or self.model.embed_dim
            self.byol_predictor = nn.Sequential(nn.Linear(e, 4 * e), nn.BatchNorm1d(4 * e), nn.ReLU(),
                                                nn.Linear(4 * e, e))
            self.byol_target = copy.deepcopy(self._byol_online())
            for p in self.byol_target.parameters():
                p.requires_grad_(False)
            self.byol_loss = ByolLoss()
            self._ema = None  # built lazily: needs the total number of steps
        row_dropout(self)  # dropout masks per patient, like every other draw (ops.draws)
        freeze_bias_before_batch_norm(self)
        freeze_attention_key_bias(self)
        if init is not None:
            self._initialise(init)

    # ------------------------------------------------------------------ data-dependent initialisation
    @torch.no_grad()
    def _initialise(self, init: dict) -> None:
        encs = self.model.encoders
        if "gene" in encs:
            if hasattr(encs["gene"], "set_positions"):
                encs["gene"].set_positions(init["variant_pos"])
            if hasattr(encs["gene"], "set_column_means"):
                encs["gene"].set_column_means(init["dosage_means"])
        if "hpo" in encs:
            data = init["phenotypes"]
            encs["hpo"].init_from_ontology(data.ontology, init["hpo_vocab"], generator=self.generators["task"])
            if hasattr(self, "ontology_targets"):
                dist = ancestor_distance_matrix(data.ontology, init["hpo_vocab"])
                self.ontology_targets.copy_(hierarchy_targets(dist))
        for m, path in self.model.linear_paths.items():
            path.fit(init["linear_inputs"][m])
        if hasattr(self, "ld_blocks"):
            self.ld_blocks.copy_(torch.as_tensor(init["ld_blocks"]))
        if hasattr(self, "marginals"):
            self.marginals.copy_(torch.as_tensor(init["tabular_train"]))
        if hasattr(self, "byol_target"):
            self.byol_target.load_state_dict(self._byol_online().state_dict())

    # ------------------------------------------------------------------ training step
    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        terms: dict[str, torch.Tensor] = {}
        cfg = self.cfg
        # one key per step from the checkpointed generator, the same on every rank; each patient's
        # masks and corruptions come from the key and its ID, so N processes with batch B draw what
        # one process with batch N x B draws (phenoclip.ops.draws)
        step_key = int(torch.randint(0, 1 << 62, (1,), generator=self.generators["task"]))
        g = RowDraws.for_batch(step_key, batch[SAMPLE_IDS])
        emb = {}
        if self.training and cfg.augment and ("clip" in cfg.objectives or "ontology" in cfg.objectives):
            batch = augment_batch(batch, AugmentSettings(), g)
        if "clip" in cfg.objectives or "ontology" in cfg.objectives:
            with drawing(g):
                emb = {m: self.model.encode(m, batch[m]) for m in cfg.modalities
                       if m != "hpo" or "clip" in cfg.objectives}
            present = {m: batch[m][PRESENT] for m in emb}
        if "clip" in cfg.objectives:
            terms.update(self.clip(emb, present, self.model.logit_scale))
        if "ontology" in cfg.objectives:
            # the term embeddings are rows of the vocabulary, not patients: one stream for them all
            with drawing(BatchDraws(torch.Generator().manual_seed(step_key))):
                term_emb = self.model.encode_terms()
            terms.update(self._ontology_terms(batch, emb, present, term_emb))
        if "mvm" in cfg.objectives:
            terms.update(self._mvm(batch["mri"], g))
        if "mhm" in cfg.objectives:
            terms.update(self._mhm(batch["gene"], g))
        if "scarf" in cfg.objectives or "vime" in cfg.objectives or "byol" in cfg.objectives:
            terms.update(self._tabular(batch[self.tab_modality], g))
        return self.weights(terms)

    def _ontology_terms(self, batch, emb, present, term_emb) -> dict[str, torch.Tensor]:
        hpo_terms = batch["hpo"][TERMS]
        lookup = self.model.encoders["hpo"].lookup
        rows = torch.where(hpo_terms >= 0, lookup[hpo_terms.clamp(min=0)], torch.full_like(hpo_terms, -1))
        losses = []
        for m, z in emb.items():
            if m == "hpo":
                continue
            keep = present[m] & batch["hpo"][PRESENT]
            out = self.ontology(z[keep], rows[keep], term_emb, self.ontology_targets)
            # the mean over every rank's patients, not this rank's (the same when not distributed)
            share, n_all = share_of_global_mean(int(out["ontology/patients"]), z.device)
            if n_all:
                losses.append(out["ontology"] * share)
        total = torch.stack(losses).mean() if losses else term_emb.sum() * 0.0
        return {"ontology": total}

    def _mvm(self, mri: dict, g: RowDraws) -> dict[str, torch.Tensor]:
        enc = self.model.encoders["mri"]
        keep = mri[PRESENT]
        images = mri[IMAGES][keep]
        if images.shape[0] == 0:
            return {"mvm": self.mvm_head.net[0].weight.sum() * 0.0}
        g = g.rows(keep)
        mask = random_patch_mask(images.shape[0], enc.n_tokens, self.cfg.mvm_mask_rate, generator=g,
                                device=images.device)
        with drawing(g):
            _, tokens = enc.forward_features({IMAGES: images}, token_mask=mask)
            pred = self.mvm_head(tokens)
        return self.mvm(pred, patchify(images, enc.patch), mask)

    def _mhm(self, gene: dict, g: RowDraws) -> dict[str, torch.Tensor]:
        enc = self.model.encoders["gene"]
        keep = gene[PRESENT]
        dosage = gene[DOSAGE][keep]
        g = g.rows(keep)
        vmask = haplotype_block_mask(self.ld_blocks, self.cfg.mhm_mask_rate, dosage.shape[0], generator=g,
                                     device=dosage.device)
        with drawing(g):
            _, tokens = enc.forward_features({DOSAGE: dosage}, token_mask=enc.variant_to_token_mask(vmask))
            logits = self.mhm_head(tokens)
        return self.mhm(logits, dosage, vmask)

    def _tabular(self, inputs: dict, g: RowDraws) -> dict[str, torch.Tensor]:
        m, key = self.tab_modality, TABULAR_KEY[self.tab_modality]
        x = inputs[key][inputs[PRESENT]]
        g = g.rows(inputs[PRESENT])
        with drawing(g):
            return self._tabular_terms(m, key, x, g)

    def _tabular_terms(self, m: str, key: str, x: torch.Tensor, g: RowDraws) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        # VIME's and BYOL's losses are per-row means: weighted, they average to the global mean
        share = share_of_global_mean(x.shape[0], x.device)[0] if {"vime", "byol"} & set(self.cfg.objectives) else 1.0
        if "scarf" in self.cfg.objectives:
            x_tilde, _ = ScarfCorruption(self.marginals, self.cfg.scarf_rate)(x, generator=g)
            z1, z2 = self._scarf_views(m, key, x, x_tilde)
            # the other patients of the global batch are the negatives, as for CLIP
            z1, z2 = all_gather_with_grad(z1), all_gather_with_grad(z2)
            # beside CLIP a global batch can hold no patient with expression: then the term is 0
            out["scarf"] = self.scarf_loss(z1, z2)["scarf"] if len(z1) else z1.sum() * 0.0
        if "vime" in self.cfg.objectives:
            x_tilde, mask = VimeMasking(self.cfg.vime_rate, self.marginals)(x, generator=g)
            h = self.model.encode(m, {key: x_tilde}, normalize=False)
            out.update({k: v * share for k, v in
                        self.vime_loss(self.vime_mask_head(h), self.vime_recon_head(h), mask, x).items()})
        if "byol" in self.cfg.objectives:
            corrupt = ScarfCorruption(self.marginals, self.cfg.scarf_rate)
            v1, _ = corrupt(x, generator=g)
            v2, _ = corrupt(x, generator=g)
            p1 = self.byol_predictor(self.model.encode(m, {key: v1}, normalize=False))
            p2 = self.byol_predictor(self.model.encode(m, {key: v2}, normalize=False))
            with torch.no_grad():
                z1, z2 = self._byol_embed(self.byol_target, {key: v1}), self._byol_embed(self.byol_target, {key: v2})
            out.update({k: v * share for k, v in self.byol_loss(p1, p2, z1, z2).items()})
        return out

    def _scarf_views(self, m: str, key: str, x: torch.Tensor, x_tilde: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """SCARF's two embeddings of ``x`` and its corrupted copy, each ``(n, E)``.

        Beside CLIP a batch (or one rank's share of it) can hold fewer than two patients with
        expression: none is not encoded (the Mamba encoder cannot take an empty batch), and one is
        encoded together with its corrupted copy (batch norm needs two rows in training).
        """
        if len(x) >= 2:
            return self.model.encode(m, {key: x}), self.model.encode(m, {key: x_tilde})
        if len(x) == 0:
            empty = x.new_zeros((0, self.model.embed_dim))
            return empty, empty
        z = self.model.encode(m, {key: torch.cat([x, x_tilde])})
        return z[:1], z[1:]

    # ------------------------------------------------------------------ BYOL's two networks
    def _byol_online(self) -> nn.ModuleDict:
        """The online network's parts that the target mirrors: everything that makes the embedding
        (encoder, projection and the linear path when there is one), so both sides embed alike."""
        m = self.tab_modality
        parts = {"encoder": self.model.encoders[m], "projection": self.model.projections[m]}
        if m in self.model.linear_paths:
            parts["linear_path"] = self.model.linear_paths[m]
        return nn.ModuleDict(parts)

    @staticmethod
    def _byol_embed(net: nn.ModuleDict, inputs: dict) -> torch.Tensor:
        """``MultimodalModel.encode`` (unnormalised) with ``net``'s parts."""
        z = net["projection"](net["encoder"](inputs))
        return z + net["linear_path"](inputs) if "linear_path" in net else z

    # ------------------------------------------------------------------ after each optimizer step
    @torch.no_grad()
    def after_step(self, progress: float, lr: float) -> None:
        # keep the temperature in range like open_clip: the loss clamps, the parameter is clamped too
        self.model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)
        for enc in self.model.encoders.values():
            if hasattr(enc, "proximal_step"):
                enc.proximal_step(lr)  # L1 on the weights each input feeds (DosageMLP's l1)
        if hasattr(self, "byol_target"):
            # cosine schedule from byol_tau to 1 over training (BYOL)
            tau = 1 - (1 - self.cfg.byol_tau) * (math.cos(math.pi * min(1.0, progress)) + 1) / 2
            online = self._byol_online()
            for t, o in zip(self.byol_target.parameters(), online.parameters()):
                t.mul_(tau).add_(o.detach(), alpha=1 - tau)
            for t, o in zip(self.byol_target.buffers(), online.buffers()):
                t.copy_(o)
