"""Import NIfTI, DICOM and 2D images into a project: validate, de-identify, store, split.

Every file either lands whole (blobs, rows, audit event) or leaves nothing behind; the rest
of the batch goes on, and the report lists each rejection with its reason. A series the
project holds already (same raw array, or same DICOM series) is skipped unless asked again.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import secrets
import tempfile
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
from store.errors import InvalidInput
from store.imports import (
    AlreadyImported,
    EarlierImport,
    SeriesRecord,
    SliceRecord,
    find_earlier_import,
    record_series,
    referenced_blobs,
)
from store.models import Project
from store.projects import ProjectSpec, check_new_project, create_project
from store.scores import queue_score

Progress = Callable[[int, int, str], None]
log = logging.getLogger("medloop.ingest")


@dataclass
class Rejection:
    path: str
    reason: str

    def line(self) -> str:
        return f"REJECTED {self.path}: {self.reason}"


@dataclass
class Skip:
    """A file or series not imported because the project holds it already."""

    path: str
    reason: str

    def line(self) -> str:
        return f"SKIPPED {self.path}: {self.reason}"


@dataclass
class IngestReport:
    imported: list[tuple[str, int]] = field(default_factory=list)  # (source, items)
    skipped: list[Skip] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    volume_ids: list[int] = field(default_factory=list)
    # The project imported into; None when a new one was asked for and nothing landed.
    project: Project | None = None
    created_project: bool = False

    @property
    def n_items(self) -> int:
        return sum(n for _, n in self.imported)

    def summary(self) -> str:
        skipped = f"{len(self.skipped)} already imported and skipped, " if self.skipped else ""
        return (f"{len(self.imported)} file(s)/series imported ({self.n_items} items), "
                f"{skipped}{len(self.rejected)} rejected")


def deid_secret(store: Store) -> bytes:
    """The data directory's key for pseudonyms and UID remapping, made on first use."""
    path = store.settings.secret_file
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written whole under a temporary name (mode 0600), then linked into place: two
        # first imports at once agree on one key, and neither reads a half-written file.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-secret-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(secrets.token_bytes(32))
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass  # another import made it first: use that one
        finally:
            os.unlink(tmp)
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


def array_sha(arr: np.ndarray) -> str:
    """The blob store's name for an array (sha256 of its .npy bytes), without writing it."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return hashlib.sha256(buf.getvalue()).hexdigest()


def _again_hint(earlier: EarlierImport) -> str:
    return f"{earlier.describe()}; pass --again to import it a second time"


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
        """Remove the blobs created here, except those rows point to by now: an import of the
        same content may have landed meanwhile (the race a duplicate check can lose)."""
        if not self.created:
            return
        try:
            with self.store.session() as s:
                keep = referenced_blobs(s, self.created)
        except Exception:  # the database may be what failed
            # Deleting a blob a committed row points to loses data; an orphan only costs space.
            log.warning("kept %d blob(s) of a failed import: the database could not say "
                        "whether another import uses them", len(self.created))
            self.created.clear()
            return
        for sha in self.created:
            if sha not in keep:
                self.store.blobs.delete(sha)
        self.created.clear()


def _store_series(
    store: Store, target: Project | ProjectSpec, series: Series, mask: np.ndarray | None,
    actor: str, secret: bytes, volume_sha: str, again: bool,
) -> tuple[Project, int, int]:
    """Write the series' blobs, then its rows in one short transaction; (project, volume id,
    items). A ProjectSpec target is created in that transaction, so it exists only if the
    series lands."""
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
        if volume_blob != volume_sha:
            # Duplicates are recognised by array_sha(); it must name blobs as the store does.
            raise RuntimeError("array_sha() no longer matches BlobStore.put_array: fix it")
        record = SeriesRecord(
            source_format=series.source_format, source_name=series.source_name,
            modality=(series.modality or target.modality).upper(), blob=volume_blob,
            shape=list(arr.shape), dtype=str(arr.dtype), spacing=series.spacing,
            affine=series.affine.tolist() if series.affine is not None else None,
            axis=series.axis, patient_pseudonym=patient_pseudonym(series.patient_key, secret),
            slices=slices, dicom_header=series.dicom_header, series_uid=series.series_uid,
        )
        s = store.settings
        with store.session(immediate=True) as session:
            if isinstance(target, ProjectSpec):
                project = create_project(session, target.name, target.modality,
                                         target.label_classes, actor)
            else:
                project = target
            # Checks again for an earlier import, under the lock: a concurrent import of the
            # same series may have landed since the check before the blobs were written.
            volume, items = record_series(session, project, record, actor,
                                          s.holdout_fraction, s.test_fraction, again=again)
        return project, volume.id, len(items)
    except BaseException:
        writer.undo()
        raise


def _unique(
    files: list[Path], masks: list[Path], report: IngestReport
) -> list[tuple[Path, Path | None]]:
    """(image, mask) pairs, each image file once: a file named twice (or inside a folder also
    given) is imported once, and a DICOM series does not get the same slice twice."""
    pairs: list[tuple[Path, Path | None]] = []
    seen: set[Path] = set()
    for f, m in zip(files, masks or [None] * len(files), strict=True):
        key = f.resolve()
        if key in seen:
            report.skipped.append(Skip(str(f), "given more than once in this import: "
                                               "imported once"))
            continue
        seen.add(key)
        pairs.append((f, m))
    return pairs


def ingest(
    store: Store,
    project: Project | ProjectSpec,
    paths: Sequence[Path],
    masks: Sequence[Path] | None = None,
    axis: int = 2,
    frame: int | None = None,
    actor: str = "cli",
    progress: Progress | None = None,
    modality: str | None = None,
    again: bool = False,
    score: bool = False,
) -> IngestReport:
    """Import files and folders; masks, when given, pair with the image files in order.

    project: an existing project, or a ProjectSpec for one that is created together with the
    first series that lands (report.project, report.created_project), so an import in which
    every file is rejected creates nothing.
    modality overrides what the files say (NIfTI and PNG say nothing: the project's is used).
    A series the project holds already (same raw array; for DICOM also the same de-identified
    series UID) is skipped and named in report.skipped; again=True imports it once more.
    score=True queues the project's `score` job once anything landed (the cold-start review
    order: pipeline/loop/score.py).
    """
    report = IngestReport(project=project if isinstance(project, Project) else None)
    if isinstance(project, ProjectSpec):
        with store.session() as s:  # fail before reading any file, not at the first success
            check_new_project(s, project.name, project.label_classes)
    files = expand_paths(paths)
    mask_files = expand_paths(masks) if masks else []
    if mask_files and len(mask_files) != len(files):
        raise InvalidInput(f"{len(files)} image file(s) but {len(mask_files)} mask file(s): "
                           "give one mask per image, in the same order")
    pairs = _unique(files, mask_files, report)
    mask_for = {f: m for f, m in pairs if m is not None}
    classes = {int(c["value"]) for c in project.label_classes}
    secret = deid_secret(store)
    max_mb = store.settings.max_file_mb

    # Read DICOM headers first so that a series split over files is imported as one.
    units: list[tuple[str, Callable[[], Series], Path | None]] = []
    dicom_headers = []
    for f, _ in pairs:
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

    target: Project | ProjectSpec = project
    # What landed in this run, by content: even with again=True one run imports a series once.
    landed: dict[str, tuple[str, int]] = {}  # "blob:<sha>" / "uid:<uid>" -> (label, volume)
    for i, (label, read, mask_path) in enumerate(units):
        if progress:
            progress(i, len(units), label)
        try:
            series = read()
            if modality:
                series.modality = modality
            sha = array_sha(series.array)
            keys = [f"blob:{sha}"] + ([f"uid:{series.series_uid}"] if series.series_uid else [])
            same = next((landed[k] for k in keys if k in landed), None)
            if same is not None:
                report.skipped.append(Skip(label, f"the same series as {same[0]}, imported "
                                                  f"as volume {same[1]} earlier in this run"))
                continue
            if not again and isinstance(target, Project):
                # Before any blob is written, so a skipped series leaves nothing behind.
                with store.session() as s:
                    earlier = find_earlier_import(s, target.id, sha, series.series_uid)
                if earlier is not None:
                    report.skipped.append(Skip(label, _again_hint(earlier)))
                    continue
            mask = None
            if mask_path is not None:
                mask = _load_mask(mask_path, series, axis, classes, max_mb)
            created = isinstance(target, ProjectSpec)
            target, volume_id, n = _store_series(store, target, series, mask, actor, secret,
                                                 sha, again)
            if created:
                report.project, report.created_project = target, True
            report.imported.append((label, n))
            report.volume_ids.append(volume_id)
            landed.update((k, (label, volume_id)) for k in keys)
        except AlreadyImported as exc:  # a concurrent import of the same series landed first
            report.skipped.append(Skip(label, _again_hint(exc.earlier)))
        except InvalidInput as exc:
            report.rejected.append(Rejection(label, str(exc)))
    if score and report.imported and report.project is not None:
        with store.session(immediate=True) as s:
            queue_score(s, report.project.id, actor,
                        f"{report.n_items} item(s) imported by {actor}")
    if progress:
        progress(len(units), len(units), "done")
    return report
