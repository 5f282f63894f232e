"""MRI volumes -> ``volumes`` store: RAS, resampled, z-scored, fixed grid; original space kept.

Every patient is resampled once, straight onto a *world-aligned RAS grid*: voxel ``(d, h, w)``
of the output sits at world millimetres ``affine @ [d, h, w, 1]`` with
``affine = [[sx, 0, 0, tx], [0, sy, 0, ty], [0, 0, sz, tz], [0, 0, 0, 1]]``. So axis 0 (D) runs
Left -> Right, axis 1 (H) Posterior -> Anterior, axis 2 (W) Inferior -> Superior, with the
requested spacing. The grid is centred on the centre of the patient's field of view. The voxels
are first flipped and permuted to the closest RAS order (lossless), then interpolated once onto
the grid (less blur than reorient + resample + crop, no half-voxel drift, exact for oblique
scans, which are rotated into world alignment rather than only flipped to the nearest axes);
the same scan stored in any voxel order gives the same store.

Store layout (schema ``volumes`` v1), N samples, grid (D, H, W)::

    samples            str (N,)
    images             float32 (N, 1, D, H, W)   z-scored over the image's nonzero voxels;
                                                  zero stays zero (background, outside the FOV)
    masks              uint8 (N, 1, D, H, W)     only when the manifest has a mask column
    mask_present       uint8 (N,)                1 where the patient had a mask; masks of the
                                                  others are all zero, exclude them from losses
    affine             float64 (N, 4, 4)         grid voxel -> world mm (RAS+)
    original_affine    float64 (N, 4, 4)         the patient's file voxel -> world mm
    original_shape     int64 (N, 3)
    original_spacing   float64 (N, 3)            mm along the file's own axes
    intensity_mean     float32 (N,)              the z-score's mean and std (original units)
    intensity_std      float32 (N,)
    spacing            float64 (3,)              mm along D, H, W (also a root attribute)
    root attrs: orientation='RAS', spacing, shape, normalisation, interpolation,
                mask_interpolation, antialias, grid_centre, axes

:func:`to_original_space` maps a grid volume (a predicted mask) back onto a patient's own voxels,
and :func:`phenoclip.io.nifti.write_label_volume` writes it next to their scan.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage

from phenoclip.errors import InconsistentInputError, MalformedInputError, UsageError
from phenoclip.io.nifti import read_volume
from phenoclip.io.tables import read_manifest
from phenoclip.progress import track, warn
from phenoclip.store_read import Store
from phenoclip.store_write import create_store

NORMALISATION = ("zscore with the mean and std of the original image's nonzero voxels, applied to the "
                 "grid voxels whose nearest original voxel is nonzero; all other voxels are 0")
# 'grid-constant': voxels are cells of extent [-0.5, n - 0.5); beyond them the value is 0
_MODE = "grid-constant"
_AFFINE_ATOL_MM = 1e-3


def grid_affine(original_affine: np.ndarray, original_shape: Sequence[int], spacing: Sequence[float],
                shape: Sequence[int]) -> np.ndarray:
    """The RAS grid of ``shape`` voxels of ``spacing`` mm centred on the original field of view."""
    centre_voxel = (np.asarray(original_shape, dtype=np.float64) - 1.0) / 2.0
    centre_world = original_affine[:3, :3] @ centre_voxel + original_affine[:3, 3]
    out = np.eye(4)
    out[:3, :3] = np.diag(np.asarray(spacing, dtype=np.float64))
    out[:3, 3] = centre_world - out[:3, :3] @ ((np.asarray(shape, dtype=np.float64) - 1.0) / 2.0)
    return out


def _resample(data: np.ndarray, source_affine: np.ndarray, target_affine: np.ndarray, shape: Sequence[int],
              order: int) -> np.ndarray:
    """Sample ``data`` (on ``source_affine``) at the voxels of the target grid."""
    # target voxel -> world -> source voxel; scipy pulls input[M @ out + offset]
    m = np.linalg.solve(source_affine, target_affine)
    return ndimage.affine_transform(data, m[:3, :3], offset=m[:3, 3], output_shape=tuple(shape),
                                    order=order, mode=_MODE, cval=0.0)


def _antialias_sigma(source_affine: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Gaussian sigma (source voxels) per source axis before downsampling; 0 where not coarser.

    skimage's rule, sigma = (factor - 1) / 2, with the target step measured along each source
    axis's world direction.
    """
    cols = source_affine[:3, :3]
    src = np.sqrt((cols ** 2).sum(axis=0))
    direction = cols / src
    tgt = np.sqrt(((direction ** 2) * (np.asarray(spacing, dtype=np.float64) ** 2)[:, None]).sum(axis=0))
    return np.maximum(0.0, (tgt / src - 1.0) / 2.0)


def to_closest_ras(data: np.ndarray, affine: np.ndarray, *others: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Flip and permute the voxel axes (lossless, no interpolation) to the closest RAS order.

    The same scan stored LPS, PIR or RAS then becomes the same array on the same affine, so the
    one interpolation that follows cannot depend on storage order: nearest-neighbour steps round
    exact half-voxel ties one way, and which way was the file's axis direction. The affine is
    rounded to 1e-6 mm, below any scanner's precision, so the float rounding of the flips cannot
    tip a tie either. ``others`` (masks on the same voxels) get the same flips.
    """
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(affine),
                                           nib.orientations.axcodes2ornt("RAS"))
    new_affine = affine @ nib.orientations.inv_ornt_aff(ornt, data.shape)
    moved = [np.ascontiguousarray(nib.orientations.apply_orientation(x, ornt)) for x in (data, *others)]
    return moved[0], np.round(new_affine, 6), moved[1:]


def preprocess_volume(data: np.ndarray, affine: np.ndarray, *, spacing: Sequence[float], shape: Sequence[int],
                      mask: np.ndarray | None = None) -> dict:
    """One patient: returns ``image`` (D, H, W float32), ``mask`` (uint8 or None), ``affine``,
    ``mean``, ``std`` (see the module docstring for the conventions). The volume is first put in
    the closest RAS voxel order (:func:`to_closest_ras`), so the result does not depend on how
    the file stores its voxels."""
    data, affine, moved = to_closest_ras(data, affine, *([] if mask is None else [mask]))
    mask = moved[0] if moved else None
    target = grid_affine(affine, data.shape, spacing, shape)
    foreground = data[data != 0]
    mean = float(foreground.mean(dtype=np.float64))
    std = float(foreground.std(dtype=np.float64))
    if std == 0.0:  # a binary-looking image: centre it, do not blow it up
        std = 1.0
    sigma = _antialias_sigma(affine, spacing)
    smooth = ndimage.gaussian_filter(data, sigma, mode="constant") if np.any(sigma > 0) else data
    image = _resample(smooth, affine, target, shape, order=1)
    # the foreground is carried over by nearest neighbour: smoothing and trilinear weights
    # smear tiny values into the background, which z-scoring would turn into a -mean/std halo
    inside = _resample((data != 0).view(np.uint8), affine, target, shape, order=0).astype(bool)
    image[inside] = (image[inside] - mean) / std
    image[~inside] = 0.0
    out_mask = None
    if mask is not None:
        out_mask = _resample(mask.astype(np.uint8), affine, target, shape, order=0)
    return {"image": image.astype(np.float32, copy=False), "mask": out_mask, "affine": target,
            "mean": mean, "std": std}


def to_original_space(volume_on_grid: np.ndarray, store_row_info: Mapping[str, np.ndarray], *,
                      order: int = 0) -> np.ndarray:
    """Map a volume on the preprocessed grid back onto the patient's original voxels.

    Parameters
    ----------
    volume_on_grid:
        (D, H, W), or (C, D, H, W) mapped channel by channel (a (1, D, H, W) is squeezed).
    store_row_info:
        ``affine``, ``original_affine`` and ``original_shape`` of the patient (:func:`row_info`).
    order:
        0 (nearest; labels, the default) or 1 (trilinear; probabilities).

    Returns an array of ``original_shape`` (with C first when C > 1) in the dtype of the input;
    voxels outside the grid are 0. Write it with ``write_label_volume(path, labels,
    original_affine)``.
    """
    vol = np.asarray(volume_on_grid)
    if vol.ndim == 4 and vol.shape[0] == 1:
        vol = vol[0]
    grid = np.asarray(store_row_info["affine"], dtype=np.float64)
    original = np.asarray(store_row_info["original_affine"], dtype=np.float64)
    shape = tuple(int(s) for s in np.asarray(store_row_info["original_shape"]))
    if vol.ndim == 4:
        return np.stack([_resample(c, grid, original, shape, order) for c in vol])
    if vol.ndim != 3:
        raise ValueError(f"expected (D, H, W) or (C, D, H, W), got shape {vol.shape}")
    return _resample(vol, grid, original, shape, order)


def row_info(store: Store, index: int) -> dict:
    """A patient's ``affine``, ``original_affine`` and ``original_shape`` from a volumes store."""
    return {k: store.read(k, index) for k in ("affine", "original_affine", "original_shape")}


def _check_grid(spacing: Sequence[float], shape: Sequence[int]) -> tuple[tuple[float, ...], tuple[int, ...]]:
    if len(spacing) != 3 or any(not np.isfinite(s) or s <= 0 for s in spacing):
        raise UsageError(f"spacing needs three positive values in mm, got {tuple(spacing)}")
    if len(shape) != 3 or any(int(s) != s or s < 1 for s in shape):
        raise UsageError(f"shape needs three positive integers, got {tuple(shape)}")
    return tuple(float(s) for s in spacing), tuple(int(s) for s in shape)


def _read_mask(path: str, image_affine: np.ndarray, image_shape: tuple, image_path: str) -> np.ndarray:
    mask, affine, _ = read_volume(path, what="mask", allow_constant=True)
    if mask.shape != image_shape:
        raise InconsistentInputError(f"mask shape {'x'.join(map(str, mask.shape))} differs from image shape "
                                     f"{'x'.join(map(str, image_shape))} ({os.path.basename(image_path)})", path)
    if not np.allclose(affine, image_affine, atol=_AFFINE_ATOL_MM):
        raise InconsistentInputError(f"mask affine differs from its image's ({os.path.basename(image_path)}): "
                                     "they are not on the same voxel grid", path, "resample the mask onto the image")
    if np.any(mask != np.round(mask)) or mask.min() < 0 or mask.max() > 255:
        raise MalformedInputError("mask values must be integer labels 0-255", path)
    return mask.astype(np.uint8)


def convert_mri(manifest: str | os.PathLike, out: str | os.PathLike, *, spacing: Sequence[float] = (2.0, 2.0, 2.0),
                shape: Sequence[int] = (48, 48, 48)) -> dict:
    """Read the NIfTI volumes a manifest lists and write a ``volumes`` store.

    Parameters
    ----------
    manifest:
        TSV with ``sample``, ``image`` and optionally ``mask`` (paths relative to the manifest);
        an empty mask cell means the patient has no mask (``mask_present`` 0, mask all zero).
    out:
        The store (.h5), written atomically: on any error nothing is left at ``out``.
    spacing:
        Target voxel size in mm along x (R), y (A), z (S).
    shape:
        Output grid (D, H, W) along the same axes.

    Returns counts: ``samples``, ``with_mask``, ``without_mask`` and ``masks_emptied`` (nonempty
    masks with no voxel left on the grid; when there is a mask column), ``squeezed_4d``.
    """
    spacing, shape = _check_grid(spacing, shape)
    entries = read_manifest(manifest, ["image"], ["mask"])
    has_mask_column = "mask" in entries[0].fields
    n = len(entries)
    attrs = {"orientation": "RAS", "spacing": np.asarray(spacing), "shape": np.asarray(shape),
             "axes": "sample,channel,D(x: L->R),H(y: P->A),W(z: I->S)", "normalisation": NORMALISATION,
             "interpolation": "trilinear", "mask_interpolation": "nearest",
             "antialias": "gaussian, sigma=(target/source spacing - 1)/2 source voxels, when downsampling",
             "grid_centre": "centre of each patient's field of view"}
    original_affine = np.zeros((n, 4, 4))
    grid = np.zeros((n, 4, 4))
    original_shape = np.zeros((n, 3), dtype=np.int64)
    original_spacing = np.zeros((n, 3))
    mean = np.zeros(n, dtype=np.float32)
    std = np.zeros(n, dtype=np.float32)
    present = np.zeros(n, dtype=np.uint8)
    squeezed = emptied = 0
    with create_store(out, "volumes", [e.sample for e in entries], attrs=attrs, source=manifest) as w:
        images = w.per_sample("images", shape=(n, 1, *shape), dtype=np.float32)
        masks = w.per_sample("masks", shape=(n, 1, *shape), dtype=np.uint8, fillvalue=0) if has_mask_column else None
        for i, entry in enumerate(track(entries, "preprocess mri", unit="volumes")):
            data, affine, info = read_volume(entry.paths["image"])
            if info.squeezed:
                squeezed += 1
                warn(f"{info.path}: 4D image with a single volume, used as 3D")
            mask = None
            if "mask" in entry.paths:
                mask = _read_mask(entry.paths["mask"], affine, info.shape, info.path)
                present[i] = 1
            result = preprocess_volume(data, affine, spacing=spacing, shape=shape, mask=mask)
            images[i, 0] = result["image"]
            if masks is not None and mask is not None:
                masks[i, 0] = result["mask"]
                if mask.any() and not result["mask"].any():  # a lesion smaller than the grid's voxels
                    emptied += 1
                    warn(f"{entry.paths['mask']}: all {int(np.count_nonzero(mask))} mask voxels vanish on the "
                         f"{'x'.join(f'{s:g}' for s in spacing)} mm grid")
            original_affine[i], grid[i], original_shape[i] = affine, result["affine"], info.shape
            original_spacing[i], mean[i], std[i] = info.spacing, result["mean"], result["std"]
        w.per_sample("affine", grid)
        w.per_sample("original_affine", original_affine)
        w.per_sample("original_shape", original_shape)
        w.per_sample("original_spacing", original_spacing)
        w.per_sample("intensity_mean", mean)
        w.per_sample("intensity_std", std)
        w.array("spacing", np.asarray(spacing), attrs={"unit": "mm", "axes": "D,H,W (x,y,z)"})
        if has_mask_column:
            w.per_sample("mask_present", present)
    summary = {"samples": n}
    if has_mask_column:
        summary.update(with_mask=int(present.sum()), without_mask=int(n - present.sum()), masks_emptied=emptied)
    summary["squeezed_4d"] = squeezed
    return summary
