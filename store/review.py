"""The clinician's queue and actions: lease the next item, accept, correct, reject, skip.

Each action checks the role, the lease and that the label the reviewer saw is still the
item's head, then writes an immutable label version and its audit event in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
from sqlalchemy import and_, case, exists, func, or_
from sqlmodel import Session, select

from store import audit, propagation
from store.auth import require
from store.db import Store
from store.errors import InvalidInput, NotFound, StaleEdit
from store.jobs import enqueue
from store.labels import DONE_KINDS, REVIEW_KINDS, VALIDATED, head
from store.models import Item, Label, LabelKind, Project, ReviewSkip, Role, Split, User, utcnow
from store.retraining import maybe_retrain

LEASE = timedelta(minutes=10)
REJECT_REASONS = ("poor image quality", "unrealistic synthetic", "ambiguous", "other")


def _reviewed():
    return exists().where(Label.item_id == Item.id, Label.kind.in_(DONE_KINDS))


def _open_queue(project_id: int, user_id: int, now):
    """Items not yet reviewed, not skipped by this user, free or leased to them."""
    skipped = exists().where(ReviewSkip.item_id == Item.id, ReviewSkip.user_id == user_id)
    return and_(
        Item.project_id == project_id, ~_reviewed(), ~skipped,
        or_(Item.leased_by.is_(None), Item.leased_by == user_id, Item.lease_expires_at < now),
    )


def _last_validated(s: Session, user_id: int, project_id: int) -> tuple | None:
    """(volume id, axis, slice index) of the slice this user validated last, if it is one."""
    return s.exec(select(Item.volume_id, Item.axis, Item.slice_index)
                  .join(Label, Label.item_id == Item.id)
                  .where(Label.author_user_id == user_id, Label.kind.in_(VALIDATED),
                         Item.project_id == project_id)
                  .order_by(Label.id.desc()).limit(1)).first()


def _lead(volume_id: int, axis: int | None, here: int):
    """(lead, propagated): a slice of that volume whose head (newest review label) is a
    propagated proposal, or a neighbour of `here` with no label yet (its propagation may be
    on its way); and whether it is the former (served first at equal distance)."""
    newest = (select(func.max(Label.id)).where(Label.item_id == Item.id,
                                               Label.kind.in_(REVIEW_KINDS))
              .correlate(Item).scalar_subquery())
    bare = ~exists().where(Label.item_id == Item.id, Label.kind.in_(REVIEW_KINDS))
    propagated = exists().where(Label.id == newest, Label.source_label_id.is_not(None))
    same_volume = and_(Item.volume_id == volume_id, Item.axis == axis)
    return (and_(same_volume, or_(propagated, and_(func.abs(Item.slice_index - here) == 1,
                                                    bare))),
            and_(same_volume, propagated))


def lease_next(store: Store, user_id: int, project_id: int,
               lease: timedelta = LEASE) -> Item | None:
    """The next open item, leased to this user: their current lease first; then, when they
    last validated a slice of a volume, the nearest slice of it whose head is a propagated
    proposal, or a bare neighbour (so they scroll through the structure; at equal distance a
    propagated one first); then the highest priority.

    Two queries: the user's last validation (newest labels first, stops at the first), and
    the queue itself (the lead's head check runs only on that volume's slices)."""
    now = utcnow()
    with store.session(immediate=True) as s:
        require(s, user_id, Role.clinician)
        order = [case((Item.leased_by == user_id, 0), else_=1)]
        last = _last_validated(s, user_id, project_id)
        if last is not None and last[0] is not None and last[2] is not None:
            volume_id, axis, here = last
            lead, propagated = _lead(volume_id, axis, here)
            order += [case((lead, 0), else_=1),
                      case((lead, func.abs(Item.slice_index - here)), else_=0),
                      case((propagated, 0), else_=1)]
        q = (select(Item).where(_open_queue(project_id, user_id, now))
             .order_by(*order, Item.priority.desc(), Item.id)
             .limit(1))
        if s.get_bind().dialect.name != "sqlite":
            q = q.with_for_update(skip_locked=True, of=Item)
        item = s.exec(q).first()
        if item is None:
            return None
        item.leased_by = user_id
        item.lease_expires_at = now + lease
        s.add(item)
        return item


def _check(s: Session, user_id: int, item_id: int, seen_head_id: int | None) -> tuple:
    user = require(s, user_id, Role.clinician)
    item = s.get(Item, item_id)
    if item is None:
        raise NotFound(f"item {item_id} does not exist")
    now = utcnow()
    if item.leased_by not in (None, user_id) and item.lease_expires_at and \
            item.lease_expires_at > now:
        other = s.get(User, item.leased_by)
        raise StaleEdit(f"item {item_id} is now being reviewed by {other.name}: your edit is "
                        "kept on screen; take the next item")
    current = head(s, item_id)
    if current is not None and current.kind in DONE_KINDS:
        raise StaleEdit(f"item {item_id} was already {current.kind.value} by {current.author}: "
                        "your edit is kept on screen; take the next item")
    if (current.id if current else None) != seen_head_id:
        raise StaleEdit(f"item {item_id}'s proposal changed since you opened it (now by "
                        f"{current.author if current else 'nobody'}): your edit is kept on "
                        "screen; reload the item to see the new proposal and redo it")
    return user, item, current


def _finish(s: Session, item: Item, label: Label, user: User, action: str,
            propagate: bool = False, **details) -> Label:
    s.add(label)
    item.leased_by = None
    item.lease_expires_at = None
    s.add(item)
    s.flush()
    audit.record(s, user.name, action, "label", label.id, item_id=item.id, **details)
    if label.kind in (LabelKind.accepted, LabelKind.corrected) and item.split == Split.train:
        maybe_retrain(s, item.project_id, user.name)
    if propagate and label.kind in VALIDATED and propagation.has_neighbours(s, item):
        # The FM follows this slice's structures to the unreviewed slices around it.
        enqueue(s, propagation.KIND, user.name, item.project_id, label_id=label.id,
                volume_id=item.volume_id)
    return label


def accept(store: Store, user_id: int, item_id: int, seen_head_id: int | None,
           seconds: float | None = None, interactions: int = 1,
           propagate: bool = True) -> Label:
    """Accept the proposal as it is. propagate: for a slice of a volume, queue a propagate
    job from it (simulated clinicians in benchmarks pass False: no extra jobs)."""
    with store.session(immediate=True) as s:
        user, item, current = _check(s, user_id, item_id, seen_head_id)
        if current is None or current.mask_blob is None:
            raise InvalidInput("there is no proposal to accept: draw the mask (Correct) or "
                               "reject the item")
        label = Label(item_id=item_id, parent_id=current.id, kind=LabelKind.accepted,
                      mask_blob=current.mask_blob, author_user_id=user.id, author=user.name,
                      dice_vs_parent=1.0, seconds_spent=seconds, interactions=interactions)
        return _finish(s, item, label, user, "label.accept", propagate, parent=current.id)


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the classes present in either label map (1.0 when both are empty).

    MONAI's DiceMetric needs one-hot tensors for this; on two small 2D maps numpy is enough.
    """
    values = sorted((set(np.unique(a)) | set(np.unique(b))) - {0})
    if not values:
        return 1.0
    scores = []
    for v in values:
        x, y = a == v, b == v
        scores.append(2.0 * np.logical_and(x, y).sum() / (x.sum() + y.sum()))
    return float(np.mean(scores))


def correct(store: Store, user_id: int, item_id: int, seen_head_id: int | None,
            mask: np.ndarray, seconds: float | None = None, interactions: int = 0,
            propagate: bool = True) -> Label:
    """Save a clinician's corrected label map (rows, cols; 0 background); propagate as for
    accept."""
    mask = np.asarray(mask)
    with store.session(immediate=True) as s:
        user, item, current = _check(s, user_id, item_id, seen_head_id)
        if tuple(mask.shape) != tuple(item.shape[:2]):
            raise InvalidInput(f"the mask is {mask.shape[1]}x{mask.shape[0]} but the image is "
                               f"{item.shape[1]}x{item.shape[0]}: reload the item")
        project = s.get(Project, item.project_id)
        allowed = {int(c["value"]) for c in project.label_classes} | {0}
        unknown = set(np.unique(mask).astype(int).tolist()) - allowed
        if unknown:
            raise InvalidInput(f"the mask holds values {sorted(unknown)} that are not classes "
                               "of this project")
        parent_mask = store.blobs.get_array(current.mask_blob) \
            if current is not None and current.mask_blob is not None \
            else np.zeros(mask.shape, np.uint8)
        sha, _ = store.blobs.put_array(mask.astype(np.uint8))
        label = Label(item_id=item_id, parent_id=current.id if current else None,
                      kind=LabelKind.corrected, mask_blob=sha, author_user_id=user.id,
                      author=user.name, dice_vs_parent=mask_dice(parent_mask, mask),
                      seconds_spent=seconds, interactions=interactions)
        return _finish(s, item, label, user, "label.correct", propagate,
                       parent=current.id if current else None)


NO_FINDING = "no finding"


def no_finding(store: Store, user_id: int, item_id: int, seen_head_id: int | None,
               seconds: float | None = None, interactions: int = 1) -> Label:
    """"Nothing here": a validated empty label, trained on as a negative example. An empty
    proposal is accepted as it is; any other becomes a correction to the empty mask."""
    with store.session(immediate=True) as s:
        user, item, current = _check(s, user_id, item_id, seen_head_id)
        parent_mask = store.blobs.get_array(current.mask_blob) \
            if current is not None and current.mask_blob is not None else None
        empty = np.zeros(tuple(item.shape[:2]), np.uint8)
        if parent_mask is not None and not parent_mask.any():
            kind, sha, dice = LabelKind.accepted, current.mask_blob, 1.0
        else:
            kind = LabelKind.corrected
            sha, _ = store.blobs.put_array(empty)
            dice = mask_dice(parent_mask, empty) if parent_mask is not None else None
        label = Label(item_id=item_id, parent_id=current.id if current else None, kind=kind,
                      mask_blob=sha, author_user_id=user.id, author=user.name,
                      dice_vs_parent=dice, seconds_spent=seconds, interactions=interactions,
                      reason=NO_FINDING)
        return _finish(s, item, label, user, "label.no_finding",
                       parent=current.id if current else None)


def reject(store: Store, user_id: int, item_id: int, seen_head_id: int | None, reason: str,
           note: str = "", seconds: float | None = None, interactions: int = 1) -> Label:
    if reason not in REJECT_REASONS:
        raise InvalidInput(f"pick a reason: {', '.join(REJECT_REASONS)}")
    with store.session(immediate=True) as s:
        user, item, current = _check(s, user_id, item_id, seen_head_id)
        text = reason if not note.strip() else f"{reason}: {note.strip()}"
        label = Label(item_id=item_id, parent_id=current.id if current else None,
                      kind=LabelKind.rejected, author_user_id=user.id, author=user.name,
                      reason=text, seconds_spent=seconds, interactions=interactions)
        return _finish(s, item, label, user, "label.reject", reason=reason)


def skip(store: Store, user_id: int, item_id: int) -> None:
    """Pass on an item: its lease is released and it is not handed to this user again."""
    with store.session(immediate=True) as s:
        user = require(s, user_id, Role.clinician)
        item = s.get(Item, item_id)
        if item is None:
            raise NotFound(f"item {item_id} does not exist")
        if not s.exec(select(ReviewSkip).where(ReviewSkip.item_id == item_id,
                                               ReviewSkip.user_id == user_id)).first():
            s.add(ReviewSkip(item_id=item_id, user_id=user_id))
        if item.leased_by == user_id:
            item.leased_by = None
            item.lease_expires_at = None
            s.add(item)
        audit.record(s, user.name, "item.skip", "item", item_id)


@dataclass
class Progress:
    done_today: int
    remaining: int
    accept_rate: float | None  # accepted / (accepted + corrected + rejected), all time


def progress(session: Session, user_id: int, project_id: int) -> Progress:
    start = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    mine = (select(Label.kind, func.count(Label.id)).join(Item, Item.id == Label.item_id)
            .where(Label.author_user_id == user_id, Item.project_id == project_id,
                   Label.kind.in_(DONE_KINDS)))
    today = session.exec(mine.where(Label.created_at >= start).group_by(Label.kind)).all()
    total = dict(session.exec(mine.group_by(Label.kind)).all())
    remaining = session.exec(select(func.count(Item.id)).where(
        Item.project_id == project_id, ~_reviewed())).one()
    n = sum(total.values())
    return Progress(done_today=sum(c for _, c in today), remaining=remaining,
                    accept_rate=(total.get(LabelKind.accepted, 0) / n) if n else None)
