"""Label versions: the head of an item's history and recording a new (immutable) version."""

from __future__ import annotations

from sqlalchemy import ColumnElement
from sqlmodel import Session, func, select

from store import audit
from store.models import Item, Label, LabelKind

# Versions a reviewer sees and builds on; ground truth is for benchmarks and simulations only.
REVIEW_KINDS = (LabelKind.proposal, LabelKind.accepted, LabelKind.corrected, LabelKind.rejected)
# A review decision: the item is done.
DONE_KINDS = (LabelKind.accepted, LabelKind.corrected, LabelKind.rejected)
# A clinician's yes: these heads are training data and holdout references.
VALIDATED = (LabelKind.accepted, LabelKind.corrected)


def head(session: Session, item_id: int) -> Label | None:
    """The newest review label of an item (None when nothing was proposed or reviewed yet)."""
    return session.exec(
        select(Label).where(Label.item_id == item_id, Label.kind.in_(REVIEW_KINDS))
        .order_by(Label.id.desc()).limit(1)
    ).first()


def heads(session: Session, *where: ColumnElement[bool], order_by: tuple = (Item.id,)
          ) -> list[tuple[Item, Label | None]]:
    """Items matching `where`, each with its head (as `head` gives it), in one query."""
    newest = (select(Label.item_id, func.max(Label.id).label("head_id"))
              .where(Label.kind.in_(REVIEW_KINDS)).group_by(Label.item_id).subquery())
    q = (select(Item, Label).where(*where)
         .outerjoin(newest, newest.c.item_id == Item.id)
         .outerjoin(Label, Label.id == newest.c.head_id)
         .order_by(*order_by))
    return [(item, label) for item, label in session.exec(q).all()]


def ground_truth(session: Session, item_id: int) -> Label | None:
    return session.exec(
        select(Label).where(Label.item_id == item_id, Label.kind == LabelKind.ground_truth)
        .order_by(Label.id.desc()).limit(1)
    ).first()


def record_proposal(
    session: Session, item_id: int, mask_blob: str, model_id: int, author: str,
    predicted_iou: float | None, actor: str, prompts: str,
    prompt_model_id: int | None = None, source_label_id: int | None = None,
) -> Label:
    """A model's proposal, on top of the item's current head, with its audit event.

    prompt_model_id: the model version whose coarse mask prompted the author model (the task
    model behind an FM refinement), so both are credited. source_label_id: for a proposal
    propagated through a volume, the validated label it was followed from.
    """
    parent = head(session, item_id)
    label = Label(item_id=item_id, parent_id=parent.id if parent else None,
                  kind=LabelKind.proposal, mask_blob=mask_blob, author_model_id=model_id,
                  prompt_model_id=prompt_model_id, source_label_id=source_label_id,
                  author=author, predicted_iou=predicted_iou)
    session.add(label)
    session.flush()
    audit.record(session, actor, "label.propose", "label", label.id, item_id=item_id,
                 model=author, prompts=prompts, predicted_iou=predicted_iou,
                 **({"prompt_model_id": prompt_model_id} if prompt_model_id is not None
                    else {}),
                 **({"source_label_id": source_label_id} if source_label_id is not None
                    else {}))
    return label
