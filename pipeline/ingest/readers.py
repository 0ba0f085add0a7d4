"""Readers for NIfTI, DICOM and 2D raster files: raw intensities plus geometry, nothing else.

Each reader raises InvalidInput with the reason and what to do; callers report it per file.
"""

from __future__ import annotations

import gzip
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from PIL import Image, UnidentifiedImageError
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from store.errors import InvalidInput

NIFTI_SUFFIXES = (".nii", ".nii.gz")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


@dataclass
class Series:
    """One source series: a volume (or a single 2D image) and how to cut it into items."""

    array: np.ndarray  # NIfTI: canonical (x, y, z); DICOM: (slices, rows, cols); raster: 2D/RGB
    spacing: list[float]  # mm per array axis
    affine: np.ndarray | None  # voxel -> RAS+ mm
    axis: int | None  # the axis items are cut along; None: the array is one 2D item
    source_format: str  # nifti | dicom | raster
    source_name: str
    modality: str | None  # from the file when it says (DICOM); else the project's
    patient_key: str  # raw key; pseudonymised before anything is stored
    dicom_header: dict | None = None  # de-identified
    series_uid: str | None = None  # DICOM: the de-identified (remapped) SeriesInstanceUID
    files: tuple[str, ...] = ()  # the paths it came from, for messages only

    @property
    def n_items(self) -> int:
        return 1 if self.axis is None else self.array.shape[self.axis]


def file_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(RASTER_SUFFIXES):
        return "raster"
    return "dicom"


def check_size(path: Path, max_mb: float) -> None:
    size = path.stat().st_size
    if size == 0:
        raise InvalidInput("the file is empty (0 bytes): export it again")
    if size > max_mb * 1024 * 1024:
        raise InvalidInput(
            f"the file is {size / 1024 / 1024:.0f} MB, over the {max_mb:.0f} MB limit: split it "
            "or raise MEDLOOP_MAX_FILE_MB"
        )


def check_finite(array: np.ndarray) -> None:
    if np.issubdtype(array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise InvalidInput(
                f"{bad} voxels are NaN or Inf: fix the file (e.g. replace them with the "
                "background value) and import it again"
            )


def _compact(array: np.ndarray) -> np.ndarray:
    """float64 from scaling becomes int16/int32 when whole numbers, else float32."""
    if array.dtype == np.float64 or array.dtype == np.float32:
        finite = array[np.isfinite(array)]
        if finite.size and np.all(np.mod(finite, 1) == 0):
            lo, hi = finite.min(), finite.max()
            if np.isfinite(array).all():
                if 0 <= lo and hi <= 255:
                    return array.astype(np.uint8)
                if -32768 <= lo and hi <= 32767:
                    return array.astype(np.int16)
                if -(2**31) <= lo and hi < 2**31:
                    return array.astype(np.int32)
        return array.astype(np.float32)
    return array


def read_nifti(path: Path, axis: int = 2, frame: int | None = None) -> Series:
    try:
        img = nib.load(str(path))
        img = nib.as_closest_canonical(img) if img.ndim >= 3 else img
        data = np.asanyarray(img.dataobj)
    except (EOFError, zlib.error, gzip.BadGzipFile, OSError, ValueError,
            nib.filebasedimages.ImageFileError) as exc:
        raise InvalidInput(
            f"cannot read it as NIfTI ({type(exc).__name__}: {exc}); the file is damaged or "
            "truncated: copy or export it again"
        ) from None
    zooms = [float(z) for z in img.header.get_zooms()]
    if data.ndim == 4:
        if data.shape[3] == 1:
            data = data[..., 0]
        elif frame is None:
            raise InvalidInput(
                f"it is 4D (shape {tuple(data.shape)}): choose one frame with --frame N "
                f"(0 to {data.shape[3] - 1})"
            )
        elif not 0 <= frame < data.shape[3]:
            raise InvalidInput(f"--frame {frame} is outside 0..{data.shape[3] - 1}")
        else:
            data = data[..., frame]
    if data.ndim not in (2, 3) or (data.ndim == 3 and data.shape[2] == 1 and axis == 2):
        data = np.squeeze(data)
    if data.ndim not in (2, 3):
        raise InvalidInput(f"it has {data.ndim} dimensions (shape {data.shape}): medloop "
                           "imports 2D and 3D images, or one frame of a 4D one")
    data = _compact(np.asarray(data))
    check_finite(data)
    name = path.name
    stem = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem
    if data.ndim == 2:
        # A 2D NIfTI is shown like a slice of a volume: rotated so anterior is up.
        return Series(array=np.rot90(data), spacing=zooms[:2][::-1], affine=img.affine,
                      axis=None, source_format="nifti", source_name=name, modality=None,
                      patient_key=f"file:{stem}", files=(str(path),))
    return Series(array=data, spacing=zooms[:3], affine=img.affine, axis=axis,
                  source_format="nifti", source_name=name, modality=None,
                  patient_key=f"file:{stem}", files=(str(path),))


def read_raster(path: Path) -> Series:
    try:
        with Image.open(path) as im:
            if getattr(im, "n_frames", 1) > 1:
                raise InvalidInput("it holds several frames: save one image per file")
            im.load()
            if im.mode in ("RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            data = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise InvalidInput(f"cannot read it as an image ({exc}): export it again") from None
    if data.dtype == bool:
        data = data.astype(np.uint8)
    if data.ndim == 3 and data.shape[2] == 3 and np.array_equal(data[..., 0], data[..., 1]) \
            and np.array_equal(data[..., 0], data[..., 2]):
        data = data[..., 0]  # grey stored as RGB
    check_finite(data)
    return Series(array=np.ascontiguousarray(data), spacing=[1.0, 1.0], affine=None, axis=None,
                  source_format="raster", source_name=path.name, modality=None,
                  patient_key=f"file:{path.stem}", files=(str(path),))


# ---------------------------------------------------------------- DICOM


def read_dicom_header(path: Path) -> pydicom.Dataset:
    try:
        ds = pydicom.dcmread(str(path), force=False)
    except InvalidDicomError:
        raise InvalidInput("not an image medloop reads: it is neither NIfTI (.nii, .nii.gz), "
                           "PNG/JPEG/TIFF, nor DICOM (no 'DICM' marker); import images in one "
                           "of these formats") from None
    except Exception as exc:  # pydicom raises many types for damaged files
        raise InvalidInput(f"the DICOM file is damaged ({type(exc).__name__}: {exc}): "
                           "export it again") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InvalidInput("it has no pixel data (a report, presentation state or "
                           "segmentation object?): import image series only")
    return ds


def _find(ds: pydicom.Dataset, keyword: str, group_seq: str | None = None):  # noqa: ANN202
    """An attribute from the top level or the shared functional groups (enhanced DICOM)."""
    if keyword in ds:
        return ds.get(keyword)
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and group_seq and group_seq in shared[0]:
        item = shared[0][group_seq][0]
        return item.get(keyword)
    return None


def _pixels(ds: pydicom.Dataset) -> np.ndarray:
    try:
        raw = ds.pixel_array
    except Exception as exc:
        raise InvalidInput(f"its pixel data cannot be decoded ({type(exc).__name__}: {exc}): "
                           "re-export it uncompressed or install the codec") from None
    return _compact(np.asarray(apply_modality_lut(raw, ds), dtype=np.float64))


def _slice_position(ds: pydicom.Dataset) -> float:
    ipp = _find(ds, "ImagePositionPatient", "PlanePositionSequence")
    iop = _find(ds, "ImageOrientationPatient", "PlaneOrientationSequence")
    if ipp is None or iop is None:
        return float(ds.get("InstanceNumber") or 0)
    normal = np.cross(np.array(iop[:3], float), np.array(iop[3:], float))
    return float(np.dot(normal, np.array(ipp, float)))


def _dicom_affine(first: pydicom.Dataset, step: np.ndarray | None) -> np.ndarray | None:
    ipp = _find(first, "ImagePositionPatient", "PlanePositionSequence")
    iop = _find(first, "ImageOrientationPatient", "PlaneOrientationSequence")
    ps = _find(first, "PixelSpacing", "PixelMeasuresSequence")
    if ipp is None or iop is None or ps is None:
        return None
    row_cos, col_cos = np.array(iop[:3], float), np.array(iop[3:], float)
    if step is None:
        thick = float(_find(first, "SliceThickness", "PixelMeasuresSequence") or 1.0)
        step = np.cross(row_cos, col_cos) * thick
    # Array axes are (slice, row, col): a row index moves along the column cosine.
    lps = np.eye(4)
    lps[:3, 0] = step
    lps[:3, 1] = col_cos * float(ps[0])
    lps[:3, 2] = row_cos * float(ps[1])
    lps[:3, 3] = np.array(ipp, float)
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # LPS -> RAS


def series_from_dicom(datasets: list[tuple[Path, pydicom.Dataset]], secret: bytes) -> Series:
    """One series from its files (single-frame slices or one multi-frame file), de-identified."""
    from pipeline.ingest.deid import deidentify, has_burned_in_phi, header_json, patient_key

    for path, ds in datasets:
        if has_burned_in_phi(ds):
            raise InvalidInput(f"{path.name} is flagged BurnedInAnnotation=YES (patient "
                               "details in the pixels): remove them before import")
    if len(datasets) == 1:
        path, ds = datasets[0]
        frames = _pixels(ds)
        if frames.ndim == 2 + (int(ds.get("SamplesPerPixel", 1)) > 1):
            frames = frames[None]  # one frame: a volume of one slice
        first, step = ds, None
        n_files = 1
    else:
        datasets = sorted(datasets, key=lambda pd: _slice_position(pd[1]))
        shapes = {(int(d.Rows), int(d.Columns)) for _, d in datasets}
        if len(shapes) > 1:
            raise InvalidInput(f"its slices have different sizes {sorted(shapes)}: import "
                               "them as separate series")
        frames = np.stack([_pixels(d) for _, d in datasets])
        if frames.ndim != 3:
            raise InvalidInput("series of multi-frame or colour files are not supported: "
                               "import each file on its own")
        frames = _compact(frames)
        first = datasets[0][1]
        step = None
        ipp0 = _find(first, "ImagePositionPatient", "PlanePositionSequence")
        ipp1 = _find(datasets[1][1], "ImagePositionPatient", "PlanePositionSequence")
        if ipp0 is not None and ipp1 is not None:
            step = np.array(ipp1, float) - np.array(ipp0, float)
        n_files = len(datasets)
    check_finite(frames)
    ps = _find(first, "PixelSpacing", "PixelMeasuresSequence")
    pixel = [float(ps[0]), float(ps[1])] if ps is not None else [1.0, 1.0]
    if step is not None:
        through = float(np.linalg.norm(step))
    else:
        through = float(_find(first, "SpacingBetweenSlices", "PixelMeasuresSequence")
                        or _find(first, "SliceThickness", "PixelMeasuresSequence") or 1.0)
    clean = deidentify(first, secret)
    rgb = frames.ndim == 4
    return Series(
        array=frames,
        spacing=[through, *pixel] + ([1.0] if rgb else []),
        affine=_dicom_affine(first, step),
        axis=0,
        source_format="dicom",
        source_name=f"DICOM {clean.get('Modality', 'OT')} series "
                    f"{clean.get('SeriesInstanceUID', '')} ({n_files} file(s))",
        modality=str(first.get("Modality") or "") or None,
        patient_key=patient_key(first),  # the key deidentify() pseudonymised
        dicom_header=header_json(clean),
        series_uid=str(clean.SeriesInstanceUID) if clean.get("SeriesInstanceUID") else None,
        files=tuple(str(p) for p, _ in datasets),
    )


def group_dicom(
    headers: list[tuple[Path, pydicom.Dataset]],
) -> list[list[tuple[Path, pydicom.Dataset]]]:
    """Group single-frame files by series; each multi-frame file is a series of its own."""
    groups: dict[str, list] = defaultdict(list)
    singles = []
    for path, ds in headers:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            singles.append([(path, ds)])
        else:
            groups[str(ds.get("SeriesInstanceUID") or path)].append((path, ds))
    return list(groups.values()) + singles
