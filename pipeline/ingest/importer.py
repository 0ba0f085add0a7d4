"""Import NIfTI, DICOM and 2D images into a project: validate, de-identify, store, split.

Every file either lands whole (blobs, rows, audit event) or leaves nothing behind; the rest
of the batch goes on, and the report lists each rejection with its reason.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.imaging import cut_slice, slice_spacing
from pipeline.ingest.readers import (
    Series,
    check_size,
    file_format,
    group_dicom,
    read_dicom_header,
    read_nifti,
    read_raster,
    series_from_dicom,
)
from store.db import Store
from store.errors import InvalidInput, NotFound
from store.imports import SeriesRecord, SliceRecord, record_series
from store.models import Project

Progress = Callable[[int, int, str], None]


@dataclass
class Rejection:
    path: str
    reason: str

    def line(self) -> str:
        return f"REJECTED {self.path}: {self.reason}"


@dataclass
class IngestReport:
    imported: list[tuple[str, int]] = field(default_factory=list)  # (source, items)
    rejected: list[Rejection] = field(default_factory=list)
    volume_ids: list[int] = field(default_factory=list)

    @property
    def n_items(self) -> int:
        return sum(n for _, n in self.imported)

    def summary(self) -> str:
        return (f"{len(self.imported)} file(s)/series imported ({self.n_items} items), "
                f"{len(self.rejected)} rejected")


def deid_secret(store: Store) -> bytes:
    """The data directory's key for pseudonyms and UID remapping, made on first use."""
    path = store.settings.secret_file
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
    return path.read_bytes()


def expand_paths(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file()
                              and not f.name.startswith(".") and f.name != "DICOMDIR"))
        else:
            out.append(p)
    return out


def _load_mask(path: Path, image: Series, axis: int, classes: set[int], max_mb: float):
    """The mask as an integer label map on the image's grid, or InvalidInput."""
    check_size(path, max_mb)
    fmt = file_format(path)
    if fmt == "nifti":
        mask = read_nifti(path, axis=axis).array
    elif fmt == "raster":
        mask = read_raster(path).array
    else:
        raise InvalidInput(f"mask {path.name}: masks must be NIfTI or PNG/TIFF files")
    if mask.shape != image.array.shape:
        raise InvalidInput(f"mask {path.name} has shape {tuple(mask.shape)} but the image has "
                           f"{tuple(image.array.shape)}: pair each image with its own mask")
    if np.issubdtype(mask.dtype, np.floating):
        if not np.all(np.mod(mask, 1) == 0):
            raise InvalidInput(f"mask {path.name} holds fractional values: masks must be "
                               "integer label maps")
    values = set(np.unique(mask).astype(int).tolist()) - {0}
    unknown = values - classes
    if unknown:
        raise InvalidInput(f"mask {path.name} has values {sorted(unknown)} that are not label "
                           f"classes of the project ({sorted(classes)}): fix --classes or the "
                           "mask")
    return mask.astype(np.uint8)


class _BlobWriter:
    """Writes blobs and remembers which ones it created, to remove them if the file fails."""

    def __init__(self, store: Store):
        self.store = store
        self.created: list[str] = []

    def put(self, arr: np.ndarray) -> str:
        sha, created = self.store.blobs.put_array(arr)
        if created:
            self.created.append(sha)
        return sha

    def undo(self) -> None:
        for sha in self.created:
            self.store.blobs.delete(sha)
        self.created.clear()


def _store_series(
    store: Store, project: Project, series: Series, mask: np.ndarray | None, actor: str,
    secret: bytes,
) -> tuple[int, int]:
    from pipeline.ingest.deid import patient_pseudonym

    writer = _BlobWriter(store)
    try:
        arr = series.array
        slices: list[SliceRecord] = []
        if series.axis is None:
            slices.append(SliceRecord(
                blob=writer.put(arr), shape=list(arr.shape), dtype=str(arr.dtype),
                pixel_spacing=series.spacing[:2], slice_index=None,
                mask_blob=writer.put(mask) if mask is not None else None))
            volume_blob = slices[0].blob
        else:
            volume_blob = writer.put(arr)
            for k in range(arr.shape[series.axis]):
                if series.source_format == "dicom":
                    img2d = arr[k]
                    m2d = mask[k] if mask is not None else None
                    spacing = series.spacing[1:3]
                else:
                    img2d = cut_slice(arr, series.axis, k)
                    m2d = cut_slice(mask, series.axis, k) if mask is not None else None
                    spacing = slice_spacing(series.spacing, series.axis)
                slices.append(SliceRecord(
                    blob=writer.put(img2d), shape=list(img2d.shape), dtype=str(img2d.dtype),
                    pixel_spacing=spacing, slice_index=k,
                    mask_blob=writer.put(m2d) if m2d is not None else None))
        record = SeriesRecord(
            source_format=series.source_format, source_name=series.source_name,
            modality=(series.modality or project.modality).upper(), blob=volume_blob,
            shape=list(arr.shape), dtype=str(arr.dtype), spacing=series.spacing,
            affine=series.affine.tolist() if series.affine is not None else None,
            axis=series.axis, patient_pseudonym=patient_pseudonym(series.patient_key, secret),
            slices=slices, dicom_header=series.dicom_header,
        )
        s = store.settings
        with store.session(immediate=True) as session:
            current = session.get(Project, project.id)
            if current is None:
                raise NotFound(f"project {project.name!r} was deleted during the import")
            volume, items = record_series(session, current, record, actor,
                                          s.holdout_fraction, s.test_fraction)
        return volume.id, len(items)
    except BaseException:
        # A blob that another import wrote at the same moment would be removed too; content
        # addressing makes that a near-impossible coincidence, and a re-import restores it.
        writer.undo()
        raise


def ingest(
    store: Store,
    project: Project,
    paths: Sequence[Path],
    masks: Sequence[Path] | None = None,
    axis: int = 2,
    frame: int | None = None,
    actor: str = "cli",
    progress: Progress | None = None,
    modality: str | None = None,
) -> IngestReport:
    """Import files and folders; masks, when given, pair with the image files in order.

    modality overrides what the files say (NIfTI and PNG say nothing: the project's is used).
    """
    report = IngestReport()
    files = expand_paths(paths)
    mask_files = expand_paths(masks) if masks else []
    if mask_files and len(mask_files) != len(files):
        raise InvalidInput(f"{len(files)} image file(s) but {len(mask_files)} mask file(s): "
                           "give one mask per image, in the same order")
    mask_for = dict(zip(files, mask_files, strict=False)) if mask_files else {}
    classes = {int(c["value"]) for c in project.label_classes}
    secret = deid_secret(store)
    max_mb = store.settings.max_file_mb

    # Read DICOM headers first so that a series split over files is imported as one.
    units: list[tuple[str, Callable[[], Series], Path | None]] = []
    dicom_headers = []
    for f in files:
        try:
            if not f.exists():
                raise InvalidInput("no such file: check the path")
            check_size(f, max_mb)
            fmt = file_format(f)
            if fmt == "dicom":
                if f in mask_for:
                    raise InvalidInput("masks for DICOM series are not supported yet: convert "
                                       "the series to NIfTI to import it with its mask")
                dicom_headers.append((f, read_dicom_header(f)))
            elif fmt == "nifti":
                units.append((str(f), lambda f=f: read_nifti(f, axis=axis, frame=frame),
                              mask_for.get(f)))
            else:
                units.append((str(f), lambda f=f: read_raster(f), mask_for.get(f)))
        except InvalidInput as exc:
            report.rejected.append(Rejection(str(f), str(exc)))
    for group in group_dicom(dicom_headers):
        first = group[0][0]
        label = str(first) if len(group) == 1 else f"{first.parent} ({len(group)} files)"
        units.append((label, lambda g=group: series_from_dicom(g, secret), None))

    for i, (label, read, mask_path) in enumerate(units):
        if progress:
            progress(i, len(units), label)
        try:
            series = read()
            if modality:
                series.modality = modality
            mask = None
            if mask_path is not None:
                mask = _load_mask(mask_path, series, axis, classes, max_mb)
            volume_id, n = _store_series(store, project, series, mask, actor, secret)
            report.imported.append((label, n))
            report.volume_ids.append(volume_id)
        except InvalidInput as exc:
            report.rejected.append(Rejection(label, str(exc)))
    if progress:
        progress(len(units), len(units), "done")
    return report
