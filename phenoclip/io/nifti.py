"""NIfTI volumes in, label volumes out (nibabel and numpy only; no torch).

Data contract of :func:`read_volume`
------------------------------------
* ``data`` is a 3D ``float32`` array in the file's own voxel order: ``data[i, j, k]`` is voxel
  ``(i, j, k)`` as stored on disk. The reader does not reorient; that is a preprocessing step.
* Intensities are the physical values (nibabel applies ``scl_slope``/``scl_inter``); every
  voxel is finite.
* ``affine`` (4 x 4, float64) maps voxel indices to world coordinates in millimetres, in the
  NIfTI RAS+ scanner frame: ``[x, y, z, 1] = affine @ [i, j, k, 1]``, x increasing to the
  patient's Right, y to Anterior, z to Superior. nibabel's choice is kept (sform when its code
  is set, else qform, else the header's fallback). Files whose spatial unit is metres or
  microns are rescaled to millimetres; "unknown" is taken as millimetres.
* ``info.spacing`` is the voxel size in mm along array axes 0, 1, 2 (the affine's column
  norms), ``info.orientation`` the axis codes of the array axes (``"LPS"``: axis 0 runs to the
  Left, ...).
* A 4D (or 5D) image whose extra axes all have length 1 is squeezed to 3D and
  ``info.squeezed`` is true; any other 4D image is refused, as are 2D and single-slice images.

Every refusal is one line naming the file: :class:`~phenoclip.errors.MalformedInputError`
(exit 4) for a file that is not NIfTI, a truncated or corrupt gzip stream, the wrong number of
dimensions, NaN or infinite voxels, or (unless ``allow_constant``) an image whose voxels are
all equal.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from phenoclip.errors import MalformedInputError, OutputError, require_readable, require_writable_parent
from phenoclip.memory import require_memory

# errors nibabel lets through for damaged files (gzip: EOFError/zlib.error/BadGzipFile (an OSError))
_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, zlib.error, ValueError)
_UNIT_TO_MM = {"mm": 1.0, "unknown": 1.0, "meter": 1000.0, "micron": 0.001}
NIFTI_INTENT_LABEL = 1002


@dataclass(frozen=True)
class VolumeInfo:
    """What the header says about a volume, after squeezing (see the module docstring)."""

    path: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]   # mm along array axes 0, 1, 2
    orientation: str                      # axis codes of the array axes, e.g. "LPS"
    disk_dtype: str
    squeezed: bool                        # a singleton 4th (5th) axis was dropped
    affine_source: str                    # "sform", "qform" or "fallback"


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) < 160 else text[:157] + "..."


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _gzip_broken(path: str) -> bool:
    """Whether the gzip stream is cut short or corrupt (only asked once a read has failed)."""
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 24):
                pass
    except (EOFError, zlib.error, gzip.BadGzipFile):
        return True
    return False


def _damaged(path: str, e: BaseException, reading: str) -> MalformedInputError:
    detail = _one_line(e).replace(path, os.path.basename(path))
    gzip_error = isinstance(e, (EOFError, zlib.error, gzip.BadGzipFile))
    if _is_gzip(path) and (gzip_error or _gzip_broken(path)):
        detail = f" ({detail})" if gzip_error else ""  # nibabel's own words would mislead here
        return MalformedInputError(f"truncated or corrupt gzip stream while reading the {reading}{detail}",
                                   path, "re-create or re-download the file")
    if reading == "voxel data":  # the header was fine: the data block is cut short
        return MalformedInputError(f"truncated NIfTI: cannot read the voxel data ({detail})", path,
                                   "re-create or re-download the file")
    return MalformedInputError(f"not a readable NIfTI file ({detail})", path)


def _squeeze_to_3d(shape: tuple[int, ...], path: str, what: str) -> tuple[tuple[int, int, int], bool]:
    dims = len(shape)
    if dims < 3:
        raise MalformedInputError(f"{what} is {dims}D (shape {'x'.join(map(str, shape))}); a 3D volume is needed",
                                  path)
    if dims > 3:
        if any(s != 1 for s in shape[3:]):
            raise MalformedInputError(f"{what} is {dims}D (shape {'x'.join(map(str, shape))}, "
                                      f"{int(np.prod(shape[3:]))} volumes); a single 3D volume is needed", path,
                                      "extract one, e.g. fslroi IN OUT 0 1")
    if min(shape[:3]) < 2:
        raise MalformedInputError(f"{what} is a single slice (shape {'x'.join(map(str, shape))}); "
                                  "a 3D volume is needed", path)
    return tuple(int(s) for s in shape[:3]), dims > 3  # type: ignore[return-value]


def read_volume(path: str | os.PathLike, *, what: str = "image", allow_constant: bool = False
                ) -> tuple[np.ndarray, np.ndarray, VolumeInfo]:
    """Read a 3D NIfTI volume (``.nii`` or ``.nii.gz``) as ``(data, affine, info)``.

    Parameters
    ----------
    path:
        The file.
    what:
        How errors name the volume ("image", "mask").
    allow_constant:
        Accept an image whose voxels are all equal (an empty lesion mask is legitimate).

    Returns
    -------
    data : float32 ndarray (X, Y, Z) in the file's voxel order, finite.
    affine : float64 (4, 4), voxel -> world mm (RAS+).
    info : :class:`VolumeInfo`.
    """
    p = require_readable(path)
    try:
        img = nib.load(p)
    except _READ_ERRORS as e:
        raise _damaged(p, e, "header") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise MalformedInputError(f"not a NIfTI file (nibabel reads it as {type(img).__name__})", p,
                                  "convert it to .nii.gz, e.g. with dcm2niix or mri_convert")
    shape, squeezed = _squeeze_to_3d(tuple(img.shape), p, what)
    # the header's shape is only a claim: a 1 KB file can say 2000^3 voxels (a float32 copy and
    # the file's own dtype are held at once while reading)
    require_memory(float(np.prod(shape, dtype=np.float64)) * (4 + img.get_data_dtype().itemsize),
                   f"reading the {what}'s {'x'.join(map(str, shape))} voxels its header claims", p)
    try:
        data = np.asarray(img.get_fdata(dtype=np.float32, caching="unchanged")).reshape(shape)
    except _READ_ERRORS as e:
        raise _damaged(p, e, "voxel data") from None

    header = img.header
    affine = np.array(img.affine, dtype=np.float64)
    unit = header.get_xyzt_units()[0]
    affine[:3, :] *= _UNIT_TO_MM.get(unit, 1.0)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise MalformedInputError(f"{what} has a degenerate voxel-to-world affine", p)
    sform_code, qform_code = int(header["sform_code"]), int(header["qform_code"])
    source = "sform" if sform_code > 0 else "qform" if qform_code > 0 else "fallback"

    n_bad = data.size - int(np.count_nonzero(np.isfinite(data)))
    if n_bad:
        raise MalformedInputError(f"{what} has {n_bad} NaN or infinite voxel(s)", p,
                                  "replace them (e.g. with 0) before preprocessing")
    lo, hi = float(data.min()), float(data.max())
    if lo == hi and not allow_constant:
        raise MalformedInputError(f"{what} is blank: every voxel equals {lo:g}", p)

    spacing = tuple(float(s) for s in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    info = VolumeInfo(path=p, shape=shape, spacing=spacing,  # type: ignore[arg-type]
                      orientation="".join(nib.aff2axcodes(affine)), disk_dtype=str(header.get_data_dtype()),
                      squeezed=squeezed, affine_source=source)
    return data, affine, info


def write_label_volume(path: str | os.PathLike, labels: np.ndarray, affine: np.ndarray, *,
                       like: str | os.PathLike | None = None) -> str:
    """Write an integer label volume (a predicted mask) as NIfTI, atomically.

    Parameters
    ----------
    path:
        Output ``.nii`` or ``.nii.gz`` (compression follows the name).
    labels:
        3D integer array in the voxel order that ``affine`` describes (for a mask mapped back
        with :func:`phenoclip.preprocess.mri.to_original_space`: the patient's original order).
    affine:
        4 x 4 voxel -> world (mm, RAS+), typically the store's ``original_affine`` row.
    like:
        The patient's original image; its sform/qform codes (scanner, aligned, MNI...) are copied
        so viewers overlay the mask on it.

    Returns the path written. Labels are stored as uint8 when they fit, else int16/int32, with
    intent ``NIFTI_INTENT_LABEL`` and no intensity scaling.
    """
    p = require_writable_parent(path)
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be 3D, got shape {labels.shape}")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise ValueError("labels must be integers")
    lo, hi = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    dtype = np.uint8 if 0 <= lo and hi <= 255 else np.int16 if -32768 <= lo and hi <= 32767 else np.int32
    img = nib.Nifti1Image(labels.astype(dtype), np.asarray(affine, dtype=np.float64))
    codes = (1, 1)
    if like is not None:
        ref = nib.load(require_readable(like)).header
        codes = (int(ref["sform_code"]) or 1, int(ref["qform_code"]) or 1)
    img.set_sform(affine, code=codes[0])
    img.set_qform(affine, code=codes[1])
    img.header.set_xyzt_units("mm")
    img.header.set_intent(NIFTI_INTENT_LABEL)
    img.header.set_slope_inter(1.0, 0.0)
    base = os.path.basename(p)
    suffix = ".nii.gz" if base.endswith(".gz") else ".nii"
    tmp = os.path.join(os.path.dirname(os.path.abspath(p)), f".{base}.tmp-{os.getpid()}{suffix}")
    try:
        nib.save(img, tmp)
        os.replace(tmp, p)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise OutputError(f"cannot write the label volume ({_one_line(e)})", p) from None
    return p
