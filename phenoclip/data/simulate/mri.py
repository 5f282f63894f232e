"""A T1-like brain phantom with one hyperintense lesion, on a non-RAS grid.

Patient traits set the lateral-ventricle size, the head size and the white-matter level
(``traits.py``); the lesion follows the disease and the lesion genes as before.

Data contract of what is written: int16 volumes indexed ``[i, j, k]`` with voxel sizes
``cfg.voxel_spacing`` mm; the affine maps ``(i, j, k)`` to RAS+ world mm with ``i`` pointing
Left, ``j`` Posterior and ``k`` Superior (axis codes L, P, S), plus a per-patient origin, so a
reader that ignores the affine gets left and right swapped. Masks share the affine: uint8,
1 = lesion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# T1 tissue levels relative to white matter ~0.85; written x1000 as int16
SCALP, SKULL, CSF, GREY, WHITE = 0.60, 0.10, 0.15, 0.55, 0.85
#: shell boundaries as fractions of the head ellipsoid (normalised radius)
SKULL_R, CSF_R, BRAIN_R, WHITE_R = 0.93, 0.87, 0.83, 0.64
NOISE_SIGMA = 0.03
#: centre of every head in world (RAS mm), before the per-patient jitter: not the origin
WORLD_CENTRE = np.array([3.0, -12.0, 18.0])


@dataclass
class Lesion:
    """Where the lesion is, in brain-normalised units (±1 = brain surface) and mm radii."""

    offset: np.ndarray         # (3,) left, posterior, superior; fraction of the brain radii
    radii_mm: np.ndarray       # (3,) along i, j, k
    hemisphere: str            # left | right | midline


def lesion_for(disease: int, severity: float, levels: np.ndarray, rng: np.random.Generator) -> Lesion:
    """Lesion geometry from the disease (side), severity and the lesion genes' levels.

    neuro: left hemisphere; cardio: right; control: small, near the midline above the
    ventricles (deep white matter). ``levels`` are the latent lesion-gene levels
    (size, anterior-posterior, superior-inferior).
    """
    size, ap, si = levels
    if disease == 0:
        lateral = rng.normal(0.0, 0.05)
        superior = 0.35 + rng.normal(0.0, 0.05)
        radius = float(np.clip(2.2 + 0.3 * size, 2.0, 2.8))
        side = "midline"
    else:
        side = "left" if disease == 1 else "right"
        # +i points Left, so a left-hemisphere lesion has a positive lateral offset
        lateral = (1.0 if disease == 1 else -1.0) * rng.uniform(0.3, 0.5)
        superior = 0.15 + 0.15 * np.tanh(si)
        radius = float(np.clip(1.8 + 1.2 * severity + 0.7 * size, 2.0, 6.0))
    posterior = 0.4 * np.tanh(ap)
    offset = np.array([lateral, posterior, superior])
    norm = np.linalg.norm(offset)
    if norm > 0.65:   # keep the whole lesion inside the brain
        offset *= 0.65 / norm
    radii = radius * np.array([1.0, rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2)])
    return Lesion(offset, radii, side)


def affine_for(shape: tuple[int, int, int], spacing: tuple[float, float, float],
               rng: np.random.Generator, head_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An LPS-like affine (i -> Left, j -> Posterior, k -> Superior), the head centre voxel and
    the head's semi-axes in mm.

    The head is off-centre by up to a voxel, ±5 % in size per axis (times ``head_scale``, the
    head-size trait), and the world centre is jittered by a few mm per patient, as scanner
    positioning does.
    """
    centre = (np.asarray(shape) - 1) / 2.0 + rng.uniform(-1.0, 1.0, 3)
    head_r = 0.43 * np.asarray(shape) * np.asarray(spacing) * rng.uniform(0.95, 1.05, 3) * head_scale
    world = WORLD_CENTRE + rng.normal(0.0, 2.0, 3)
    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    aff[:3, 3] = world - aff[:3, :3] @ centre
    return aff, centre, head_r


def lesion_centre_voxel(centre: np.ndarray, head_r: np.ndarray, lesion: Lesion,
                        spacing: tuple[float, float, float]) -> np.ndarray:
    """The lesion centre in (fractional) voxel indices."""
    return centre + lesion.offset * BRAIN_R * head_r / np.asarray(spacing)


def _sig(x: np.ndarray, width: float) -> np.ndarray:
    """Soft step (partial volume at tissue boundaries)."""
    return 0.5 * (1.0 + np.tanh(x / (2.0 * width)))


def render(shape: tuple[int, int, int], spacing: tuple[float, float, float], centre: np.ndarray,
           head_r: np.ndarray, lesion: Lesion, contrast: float,
           rng: np.random.Generator, ventricle_scale: float = 1.0,
           white: float = WHITE) -> tuple[np.ndarray, np.ndarray, int]:
    """The int16 T1 image ``(X, Y, Z)``, the uint8 lesion mask and the mask's voxel count.

    ``ventricle_scale`` multiplies the lateral ventricles' semi-axes (their centres move out by
    half the growth) and ``white`` is the white-matter level: both set by patient traits.
    """
    sp = np.asarray(spacing)
    ii, jj, kk = np.meshgrid(*(np.arange(s, dtype=np.float32) for s in shape), indexing="ij")
    dx, dy, dz = ((ii - centre[0]) * sp[0], (jj - centre[1]) * sp[1], (kk - centre[2]) * sp[2])
    ux, uy, uz = dx / head_r[0], dy / head_r[1], dz / head_r[2]
    r = np.sqrt(ux**2 + uy**2 + uz**2)
    w = 0.03
    f_head, f_skull, f_csf, f_brain = (_sig(b - r, w) for b in (1.0, SKULL_R, CSF_R, BRAIN_R))
    # a wavy grey/white boundary so the white matter is not a plain ellipsoid
    phase = rng.uniform(0, 2 * np.pi, 2)
    azimuth, elevation = np.arctan2(uy, ux), np.arctan2(uz, np.hypot(ux, uy))
    wavy = WHITE_R + 0.05 * np.sin(6 * azimuth + phase[0]) * np.cos(4 * elevation + phase[1])
    f_white = _sig(wavy - r, w)
    img = (SCALP * (f_head - f_skull) + SKULL * (f_skull - f_csf) + CSF * (f_csf - f_brain)
           + GREY * (f_brain - f_white) + white * f_white)
    # two lateral ventricles either side of the midline
    v = ventricle_scale
    lateral = 0.13 * (0.5 + 0.5 * v)
    for side in (-1.0, 1.0):
        rv = np.sqrt(((ux - side * lateral) / (0.09 * v)) ** 2 + ((uy + 0.05) / (0.28 * v)) ** 2
                     + ((uz - 0.05) / (0.13 * v)) ** 2)
        f_v = _sig(1.0 - rv, 0.15)
        img = img * (1 - f_v) + CSF * f_v

    lc_mm = lesion.offset * BRAIN_R * head_r
    lc_vox = centre + lc_mm / sp
    rl = np.sqrt(((dx - lc_mm[0]) / lesion.radii_mm[0]) ** 2 + ((dy - lc_mm[1]) / lesion.radii_mm[1]) ** 2
                 + ((dz - lc_mm[2]) / lesion.radii_mm[2]) ** 2)
    # FLAIR-like: additive brightening with a soft rim, only inside the brain
    f_les = _sig(1.0 - rl, 0.12) * f_brain
    img = img + contrast * white * f_les
    mask = ((rl <= 1.0) & (f_brain > 0.5)).astype(np.uint8)
    if not mask.any():   # a lesion smaller than a voxel still marks its nearest voxel
        mask[tuple(np.clip(np.round(lc_vox).astype(int), 0, np.asarray(shape) - 1))] = 1

    # smooth multiplicative bias field (±~10 %) and Rician noise, as from a magnitude image
    g = rng.normal(0, 0.06, 3)
    q = rng.normal(0, 0.04)
    bias = np.clip(1.0 + g[0] * ux + g[1] * uy + g[2] * uz + q * (ux**2 - uz**2), 0.85, 1.15)
    img = img * bias
    n1, n2 = rng.normal(0, NOISE_SIGMA, (2,) + tuple(shape))
    img = np.sqrt((img + n1) ** 2 + n2**2)
    out = np.round(img * 1000).astype(np.int16)
    return out, mask, int(mask.sum())
