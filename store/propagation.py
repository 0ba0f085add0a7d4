"""Propagated proposals: where they may be written, and writing one.

A `propagate` job follows a validated slice's structures through its volume with the FM
(pipeline/loop/propagate.py). What it proposes lands on a slice only when
- the slice has no review decision (accepted, corrected, rejected),
- nobody holds a live lease on it (a clinician's screen stays valid), except the clinician
  who validated the source on a slice with nothing on it yet: the next slice they opened,
  whose page waits for this very proposal,
- its head is not a human's label and not a propagated proposal from a source at least as
  near (a nearer validation re-propagates and replaces what came from farther away; an
  equally near one leaves it, so two runs over the same volume write each slice once).
The check and the write are one immediate transaction, so two workers propagating the same
volume cannot both write a slice.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session, select

from store import labels
from store.labels import DONE_KINDS
from store.models import Item, Job, JobStatus, Label, LabelKind, utcnow

KIND = "propagate"


def volume_slices(session: Session, item: Item) -> list[Item]:
    """The items cut from the same volume along the same axis as `item`, by slice index."""
    if item.volume_id is None or item.slice_index is None:
        return [item]
    return list(session.exec(select(Item).where(
        Item.volume_id == item.volume_id, Item.axis == item.axis,
        Item.slice_index.is_not(None)).order_by(Item.slice_index, Item.id)).all())


def has_neighbours(session: Session, item: Item) -> bool:
    """Whether the item is one slice of a volume with more than one: worth propagating."""
    if item.volume_id is None or item.slice_index is None:
        return False
    return session.exec(select(Item.id).where(
        Item.volume_id == item.volume_id, Item.axis == item.axis,
        Item.id != item.id).limit(1)).first() is not None


@dataclass(frozen=True)
class Verdict:
    writable: bool
    why: str  # "free" when writable; else what holds it


def _source_slice(session: Session, label: Label) -> int | None:
    if label.source_label_id is None:
        return None
    return session.exec(select(Item.slice_index).join(Label, Label.item_id == Item.id)
                        .where(Label.id == label.source_label_id)).first()


def verdict(session: Session, item: Item, head: Label | None, distance: int,
            reviewed: bool | None = None, validator: int | None = None) -> Verdict:
    """May a proposal propagated from `distance` slices away (validated by user
    `validator`) be written on `item` now?"""
    if reviewed is None:
        reviewed = session.exec(select(Label.id).where(
            Label.item_id == item.id, Label.kind.in_(DONE_KINDS)).limit(1)).first() is not None
    if reviewed:
        return Verdict(False, "reviewed")
    if item.leased_by is not None and item.lease_expires_at is not None \
            and item.lease_expires_at > utcnow() \
            and not (head is None and item.leased_by == validator):
        return Verdict(False, "leased")
    if head is None:
        return Verdict(True, "free")
    if head.kind != LabelKind.proposal or head.author_user_id is not None:
        return Verdict(False, "human label")
    if head.source_label_id is not None:
        src = _source_slice(session, head)
        if src is not None and item.slice_index is not None \
                and abs(item.slice_index - src) <= distance:
            return Verdict(False, "nearer propagation")
    return Verdict(True, "free")


def writable_slices(session: Session, slices: list[Item], start: int,
                    validator: int | None = None) -> dict[int, Verdict]:
    """verdict() for every slice of a volume (by position in `slices`) as seen from slice
    position `start`, in a few queries (heads, reviewed items, a source slice per head)."""
    ids = [i.id for i in slices]
    heads = {item.id: h for item, h in labels.heads(session, Item.id.in_(ids))}
    reviewed = set(session.exec(select(Label.item_id).where(
        Label.item_id.in_(ids), Label.kind.in_(DONE_KINDS)).group_by(Label.item_id)).all())
    here = slices[start].slice_index
    out = {}
    for k, item in enumerate(slices):
        if k == start:
            continue
        out[k] = verdict(session, item, heads.get(item.id),
                         abs(item.slice_index - here), reviewed=item.id in reviewed,
                         validator=validator)
    return out


def record_propagated(session: Session, item_id: int, mask_blob: str, fm_model_id: int,
                      fm_name: str, source: Label, predicted_iou: float | None,
                      actor: str = "worker") -> Label | None:
    """Write a propagated proposal if the rules allow it now (call in an immediate
    transaction); None when they do not or when it would repeat the head."""
    item = session.get(Item, item_id)
    src_item = session.get(Item, source.item_id)
    if item is None or src_item is None:
        return None  # deleted meanwhile
    head = labels.head(session, item_id)
    distance = abs((item.slice_index or 0) - (src_item.slice_index or 0))
    if not verdict(session, item, head, distance, validator=source.author_user_id).writable:
        return None
    if head is not None and head.mask_blob == mask_blob \
            and head.source_label_id == source.id:
        return None
    return labels.record_proposal(
        session, item_id, mask_blob, fm_model_id, fm_name, predicted_iou, actor,
        f"propagated from slice {src_item.slice_index} (label {source.id})",
        source_label_id=source.id)


@dataclass(frozen=True)
class Provenance:
    """What the review page says about a propagated proposal."""

    fm: str
    slice_index: int | None
    validated_by: str
    source_label_id: int

    def line(self) -> str:
        where = f"slice {self.slice_index}" if self.slice_index is not None else "a slice"
        return f"Propagated by {self.fm} from {where} (validated by {self.validated_by})"


def provenance(session: Session, label: Label | None) -> Provenance | None:
    """Where a propagated proposal came from; None for any other label."""
    if label is None or label.source_label_id is None:
        return None
    row = session.exec(select(Label, Item.slice_index).join(Item, Item.id == Label.item_id)
                       .where(Label.id == label.source_label_id)).first()
    if row is None:
        return None
    source, slice_index = row
    return Provenance(label.author, slice_index, source.author, source.id)


def pending(session: Session, item: Item) -> JobStatus | None:
    """The state of a propagate job for this item's volume: running if one runs, else
    queued if one waits, else None (the page waits briefly for it instead of showing "no
    proposal")."""
    if item.volume_id is None:
        return None
    jobs = session.exec(select(Job.payload, Job.status).where(
        Job.kind == KIND, Job.project_id == item.project_id,
        Job.status.in_((JobStatus.queued, JobStatus.running)))).all()
    states = {status for payload, status in jobs if payload.get("volume_id") == item.volume_id}
    for status in (JobStatus.running, JobStatus.queued):
        if status in states:
            return status
    return None
