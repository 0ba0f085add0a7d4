"""Recording an imported series: its volume, items, ground-truth labels, split and audit event."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlmodel import Session, func, select

from store import audit
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
) -> tuple[Volume, list[Item]]:
    """Write one imported series in the caller's transaction (all or nothing)."""
    split = assign_split(session, project.id, series.patient_pseudonym, holdout_fraction,
                         test_fraction)
    volume = Volume(
        project_id=project.id, source_format=series.source_format,
        source_name=series.source_name, modality=series.modality, blob=series.blob,
        shape=series.shape, dtype=series.dtype, spacing=series.spacing, affine=series.affine,
        axis=series.axis, patient_pseudonym=series.patient_pseudonym, split=split,
        dicom_header=series.dicom_header,
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
                 split=split.value, ground_truth=any(s.mask_blob for s in series.slices))
    return volume, items
