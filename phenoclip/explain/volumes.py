"""MRI attributions as NIfTI volumes in each patient's original space.

``PREFIX.volumes/<sample>.nii.gz``: float32, the patient's own voxel grid and affine (the
``original_affine`` and ``original_shape`` of the volumes store), so a viewer overlays it on
the scan the patient came with. Values are the attribution of each grid voxel summed over
channels and mapped back with trilinear interpolation
(:func:`phenoclip.preprocess.mri.to_original_space`); voxels outside the preprocessed grid are 0.
(:func:`phenoclip.io.nifti.write_label_volume` writes integer labels only, hence this writer.)
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

from phenoclip.errors import OutputError
from phenoclip.preprocess.mri import to_original_space
from phenoclip.progress import track
from phenoclip.store_read import open_store

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def write_float_volume(path: str | os.PathLike, data: np.ndarray, affine: np.ndarray) -> None:
    """A 3D float32 NIfTI (sform and qform = ``affine``, scanner frame, mm), written atomically."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 3:
        raise ValueError(f"volume must be 3D, got shape {data.shape}")
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    img.header.set_slope_inter(1.0, 0.0)
    p = Path(path)
    tmp = p.parent / f".{p.name}.tmp-{os.getpid()}.nii.gz"
    try:
        nib.save(img, tmp)
        os.replace(tmp, p)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write the volume ({e.strerror or e})", p) from None


def volume_file_name(sample: str) -> str:
    """``<sample>.nii.gz`` with characters unsafe in file names replaced by ``_``."""
    return _UNSAFE.sub("_", sample) + ".nii.gz"


def write_volumes(store_path: str | os.PathLike, folder: str | os.PathLike) -> int:
    """Every individual's attribution volume from an ``attributions`` store of MRI into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open_store(store_path, expect="attributions") as s:
        n = len(s.samples)
        for i in track(range(n), "writing attribution volumes", total=n, unit="volumes"):
            grid = s["attributions"][i].astype(np.float32).sum(0)                 # (D, H, W)
            info = {k: s[k][i] for k in ("affine", "original_affine", "original_shape")}
            vol = to_original_space(grid, info, order=1)
            write_float_volume(folder / volume_file_name(s.samples[i]), vol, info["original_affine"])
    return n


def replace_folder(tmp: Path, final: Path) -> None:
    """Move a finished folder into place, replacing an older one of the same name."""
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
