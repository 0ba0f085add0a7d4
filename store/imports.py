"""Recording an imported series: its volume, items, ground-truth labels, split and audit event,
and recognising a series that was imported into the project before.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import or_
from sqlmodel import Session, func, select

from store import audit
from store.errors import Conflict, NotFound
from store.models import Item, Label, LabelKind, Project, Split, Volume


@dataclass
class SliceRecord:
    blob: str
    shape: list[int]
    dtype: str
    pixel_spacing: list[float] | None
    slice_index: int | None
    mask_blob: str | None = None  # ground truth, when masks came with the images


@dataclass
class SeriesRecord:
    source_format: str
    source_name: str
    modality: str
    blob: str
    shape: list[int]
    dtype: str
    spacing: list[float]
    affine: list[list[float]] | None
    axis: int | None
    patient_pseudonym: str
    slices: list[SliceRecord] = field(default_factory=list)
    dicom_header: dict | None = None
    series_uid: str | None = None  # DICOM: the de-identified SeriesInstanceUID


@dataclass(frozen=True)
class EarlierImport:
    """The volume of a project that already holds a series, for the message that names it."""

    volume_id: int
    source_name: str
    at: datetime
    items: int

    def describe(self) -> str:
        at = self.at if self.at.tzinfo else self.at.replace(tzinfo=UTC)  # SQLite drops the zone
        return (f"already imported on {at.astimezone(UTC):%Y-%m-%d %H:%M} UTC as volume "
                f"{self.volume_id} ({self.source_name}, {self.items} items)")


class AlreadyImported(Conflict):
    """The project holds this series already (same raw array, or same DICOM series)."""

    def __init__(self, earlier: EarlierImport):
        super().__init__(f"{earlier.describe()}; import it again only if you mean to")
        self.earlier = earlier


def find_earlier_import(
    session: Session, project_id: int, blob: str, series_uid: str | None
) -> EarlierImport | None:
    """The first volume of the project with this raw array (sha256) or this DICOM series."""
    same = Volume.blob == blob
    if series_uid:
        same = or_(same, Volume.series_uid == series_uid)
    volume = session.exec(
        select(Volume).where(Volume.project_id == project_id, same).order_by(Volume.id)
    ).first()
    if volume is None:
        return None
    items = session.exec(select(func.count(Item.id)).where(Item.volume_id == volume.id)).one()
    return EarlierImport(volume.id, volume.source_name, volume.created_at, int(items))


def referenced_blobs(session: Session, shas: Iterable[str]) -> set[str]:
    """Those of `shas` that a volume, item or label points to (so must not be deleted)."""
    shas = list(dict.fromkeys(shas))
    found: set[str] = set()
    for start in range(0, len(shas), 500):  # keep each IN list well under driver limits
        chunk = shas[start:start + 500]
        for column in (Volume.blob, Item.blob, Label.mask_blob):
            found.update(session.exec(select(column).where(column.in_(chunk))).all())
    return found


def assign_split(
    session: Session, project_id: int, patient: str, holdout_fraction: float, test_fraction: float
) -> Split:
    """The patient's split in this project, decided once: on first sight, by quota.

    A new patient goes to holdout (then test) while that split holds fewer than
    round(fraction * patients) patients, so even a handful of cases gets a holdout and the
    split never changes for a patient seen before. Volumes of one patient share the split.
    """
    known = session.exec(
        select(Volume.split).where(Volume.project_id == project_id,
                                   Volume.patient_pseudonym == patient)
    ).first()
    if known is not None:
        return Split(known)
    rows = session.exec(
        select(Volume.split, func.count(func.distinct(Volume.patient_pseudonym)))
        .where(Volume.project_id == project_id)
        .group_by(Volume.split)
    ).all()
    counts = {Split(s): n for s, n in rows}
    total = sum(counts.values()) + 1
    if counts.get(Split.holdout, 0) < round(holdout_fraction * total):
        return Split.holdout
    if counts.get(Split.test, 0) < round(test_fraction * total):
        return Split.test
    return Split.train


def record_series(
    session: Session,
    project: Project,
    series: SeriesRecord,
    actor: str,
    holdout_fraction: float,
    test_fraction: float,
    again: bool = False,
) -> tuple[Volume, list[Item]]:
    """Write one imported series in the caller's transaction (all or nothing).

    Raises AlreadyImported when the project holds the series already, unless `again`; run it
    in an immediate transaction, so that of two imports of one series only the first lands.
    """
    # The project's row lock makes concurrent imports into one project take turns on
    # PostgreSQL (SQLite's immediate transaction already does): the duplicate check below and
    # the split quota then see every series committed before. NO KEY UPDATE leaves inserts of
    # rows that reference the project unblocked.
    if session.get(Project, project.id, with_for_update={"key_share": True}) is None:
        raise NotFound(f"project {project.name!r} was deleted during the import")
    if not again:
        earlier = find_earlier_import(session, project.id, series.blob, series.series_uid)
        if earlier is not None:
            raise AlreadyImported(earlier)
    split = assign_split(session, project.id, series.patient_pseudonym, holdout_fraction,
                         test_fraction)
    volume = Volume(
        project_id=project.id, source_format=series.source_format,
        source_name=series.source_name, modality=series.modality, blob=series.blob,
        shape=series.shape, dtype=series.dtype, spacing=series.spacing, affine=series.affine,
        axis=series.axis, patient_pseudonym=series.patient_pseudonym, split=split,
        dicom_header=series.dicom_header, series_uid=series.series_uid,
    )
    session.add(volume)
    session.flush()
    items = [
        Item(project_id=project.id, volume_id=volume.id, modality=series.modality,
             blob=s.blob, shape=s.shape, dtype=s.dtype, pixel_spacing=s.pixel_spacing,
             slice_index=s.slice_index, axis=series.axis,
             patient_pseudonym=series.patient_pseudonym, split=split)
        for s in series.slices
    ]
    session.add_all(items)
    session.flush()
    session.add_all(
        Label(item_id=item.id, kind=LabelKind.ground_truth, mask_blob=s.mask_blob,
              author="import")
        for item, s in zip(items, series.slices, strict=True)
        if s.mask_blob is not None
    )
    audit.record(session, actor, "ingest.series", "volume", volume.id,
                 project=project.name, format=series.source_format, items=len(items),
                 split=split.value, ground_truth=any(s.mask_blob for s in series.slices),
                 **({"again": True} if again else {}))
    return volume, items
