"""Label versions: the head of an item's history and recording a new (immutable) version."""

from __future__ import annotations

from sqlmodel import Session, select

from store import audit
from store.models import Label, LabelKind

# Versions a reviewer sees and builds on; ground truth is for benchmarks and simulations only.
REVIEW_KINDS = (LabelKind.proposal, LabelKind.accepted, LabelKind.corrected, LabelKind.rejected)


def head(session: Session, item_id: int) -> Label | None:
    """The newest review label of an item (None when nothing was proposed or reviewed yet)."""
    return session.exec(
        select(Label).where(Label.item_id == item_id, Label.kind.in_(REVIEW_KINDS))
        .order_by(Label.id.desc()).limit(1)
    ).first()


def ground_truth(session: Session, item_id: int) -> Label | None:
    return session.exec(
        select(Label).where(Label.item_id == item_id, Label.kind == LabelKind.ground_truth)
        .order_by(Label.id.desc()).limit(1)
    ).first()


def record_proposal(
    session: Session, item_id: int, mask_blob: str, model_id: int, author: str,
    predicted_iou: float | None, actor: str, prompts: str,
) -> Label:
    """A model's proposal, on top of the item's current head, with its audit event."""
    parent = head(session, item_id)
    label = Label(item_id=item_id, parent_id=parent.id if parent else None,
                  kind=LabelKind.proposal, mask_blob=mask_blob, author_model_id=model_id,
                  author=author, predicted_iou=predicted_iou)
    session.add(label)
    session.flush()
    audit.record(session, actor, "label.propose", "label", label.id, item_id=item_id,
                 model=author, prompts=prompts, predicted_iou=predicted_iou)
    return label
