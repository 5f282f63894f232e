"""The knobs of the synthetic cohort, and the random streams derived from the seed."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from phenoclip.errors import UsageError

#: genotype models of ``--genotypes``: founder haplotype blocks (the default, and what
#: ``data/sample`` was made with) or the coalescent with recombination (msprime)
GENOTYPE_MODELS = ("blocks", "coalescent")

# One independent random stream per component: changing how MRI is drawn must not change the
# genotypes of the same seed, and per-patient streams make the loops order-independent.
STREAMS = {
    "layout": 1,
    "genotypes": 2,
    "latent": 3,
    "expression": 4,
    "mri": 5,
    "signals": 6,
    "phenotypes": 7,
    "presence": 8,
    "traits": 9,
}


@dataclass
class SimulationSettings:
    """Everything that shapes a simulated cohort; the same config and seed give the same files.

    The first nine fields are the ``phenoclip simulate`` options; the rest are knobs for
    tests and experiments (how strong the planted signals are).
    """

    patients: int = 200
    seed: int = 0
    variants: int = 2000
    genes: int = 200
    volume_shape: tuple[int, int, int] = (32, 40, 32)
    signal_seconds: float = 12.0
    signal_rate: float = 250.0
    missing_rate: float = 0.1
    #: genotype model, one of :data:`GENOTYPE_MODELS`
    genotypes: str = "blocks"
    # --- strength of the planted structure ---
    #: target shares of control / neuro / cardio
    disease_shares: tuple[float, float, float] = (0.4, 0.3, 0.3)
    #: log-odds per allele of each causal SNP (3 per disease; sign = direction)
    causal_effects: tuple[float, float, float] = (1.2, 1.0, -1.0)
    #: log-fold change of an eQTL gene's mean per ALT allele of its SNP
    eqtl_log_fold: float = 0.6
    #: log-fold change of disease-program genes in affected patients (at severity 1)
    program_log_fold: float = 1.0
    #: lesion brightness over white matter (0.25 = +25 %); noise is ~4 %, bias field ~±10 %
    lesion_contrast: float = 0.25
    #: voxel size in mm along the image axes i, j, k
    voxel_spacing: tuple[float, float, float] = (1.2, 1.0, 1.5)
    #: probability of an AF rhythm in cardio patients (plus 0.1 x severity) and in others
    af_rate_cardio: float = 0.85
    af_rate_other: float = 0.02
    #: share of genotype calls written as ``.|.`` and as half-calls ``0|.``
    missing_call_rate: float = 0.005
    half_call_rate: float = 0.001
    # --- patient-specific latent traits (see ``traits.py``): shared across modalities ---
    #: number of continuous traits (0-4); trait k drives a fixed set of features per modality
    n_traits: int = 4
    #: share of each trait's variance explained by its SNPs
    trait_heritability: float = 0.6
    #: common SNPs per trait (each in a haplotype block of its own when the genome has enough)
    trait_snps: int = 9
    #: expression genes per trait and their log-fold per SD of the trait (x U(0.8, 1.2), random sign)
    trait_expr_genes: int = 5
    trait_expr_log_fold: float = 0.8
    #: MRI: ventricle semi-axes x (1 + v) ** t; head size x (1 + s t); white matter level x (1 + w t)
    trait_ventricle: float = 0.25
    trait_head_scale: float = 0.08
    trait_white_matter: float = 0.10
    #: signals: heart rate bpm per SD; T-wave and PPG amplitude change per SD
    trait_hr_bpm: float = 12.0
    trait_t_wave: float = 0.25
    trait_ppg: float = 0.25
    #: HPO: trait terms when |t| passes this many SDs (direction per term)
    trait_hpo_threshold: float = 1.1

    def __post_init__(self) -> None:
        self.volume_shape = tuple(int(v) for v in self.volume_shape)  # type: ignore[assignment]
        self.voxel_spacing = tuple(float(v) for v in self.voxel_spacing)  # type: ignore[assignment]
        self.disease_shares = tuple(float(v) for v in self.disease_shares)  # type: ignore[assignment]
        self.causal_effects = tuple(float(v) for v in self.causal_effects)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> None:
        """Raise :class:`~phenoclip.errors.UsageError` for settings that cannot be simulated."""
        if self.genotypes not in GENOTYPE_MODELS:
            raise UsageError(f"unknown genotype model '{self.genotypes}' (choose {' or '.join(GENOTYPE_MODELS)})")
        if self.patients < 8:
            raise UsageError(f"need at least 8 patients, got {self.patients}")
        if self.variants < 100:
            raise UsageError(f"need at least 100 variant sites, got {self.variants}")
        if self.genes < 20:
            raise UsageError(f"need at least 20 genes, got {self.genes}")
        if len(self.volume_shape) != 3 or min(self.volume_shape) < 16:
            raise UsageError(f"volume shape needs three sizes of at least 16, got {self.volume_shape}")
        if len(self.voxel_spacing) != 3 or min(self.voxel_spacing) <= 0:
            raise UsageError(f"voxel spacing needs three positive sizes, got {self.voxel_spacing}")
        if self.signal_seconds < 2.0:
            raise UsageError(f"signals need at least 2 seconds, got {self.signal_seconds}")
        if self.signal_rate < 50.0:
            raise UsageError(f"signal rate must be at least 50 Hz, got {self.signal_rate}")
        if not 0.0 <= self.missing_rate <= 0.5:
            raise UsageError(f"missing rate must be within 0 and 0.5, got {self.missing_rate}")
        if len(self.disease_shares) != 3 or min(self.disease_shares) <= 0:
            raise UsageError(f"disease shares need three positive numbers, got {self.disease_shares}")
        if len(self.causal_effects) != 3:
            raise UsageError(f"causal effects need three numbers (per disease), got {self.causal_effects}")
        if not 0 <= self.n_traits <= 4:
            raise UsageError(f"n_traits must be within 0 and 4, got {self.n_traits}")
        if not 0.0 <= self.trait_heritability <= 1.0:
            raise UsageError(f"trait heritability must be within 0 and 1, got {self.trait_heritability}")
        if self.trait_snps < 1 or self.trait_expr_genes < 0:
            raise UsageError(f"need at least 1 SNP per trait and no negative gene count, got "
                             f"{self.trait_snps} and {self.trait_expr_genes}")
        if self.trait_hpo_threshold <= 0:
            raise UsageError(f"trait HPO threshold must be positive, got {self.trait_hpo_threshold}")
        # multipliers stay positive over the clipped trait range (±2.5 SD)
        if not (0 <= self.trait_head_scale < 0.4 and 0 <= self.trait_white_matter < 0.4
                and 0 <= self.trait_t_wave < 0.4 and 0 <= self.trait_ppg < 0.4 and self.trait_ventricle >= 0):
            raise UsageError("trait strengths must be non-negative and (except trait_ventricle) below 0.4")

    def to_dict(self) -> dict:
        """A JSON-ready copy (tuples become lists)."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d


def rng_for(cfg: SimulationSettings, stream: str, *index: int) -> np.random.Generator:
    """The generator of one component (and optionally one patient) for ``cfg.seed``."""
    # SeedSequence needs non-negative entries; the modulo keeps every int seed distinct in practice
    return np.random.default_rng(np.random.SeedSequence([cfg.seed % (2**63), STREAMS[stream], *index]))


def sample_ids(n: int) -> list[str]:
    """``P0001``, ``P0002``, ... (wider when the cohort has 10,000 patients or more)."""
    width = max(4, len(str(n)))
    return [f"P{i + 1:0{width}d}" for i in range(n)]
