"""Read-only queries the pages, CLI and benchmarks share."""

from __future__ import annotations

from sqlmodel import Session, func, select

from store.auth import require
from store.models import Item, Label, LabelKind, Project, Role


def projects(session: Session) -> list[Project]:
    return list(session.exec(select(Project).order_by(Project.name)).all())


def projects_for(session: Session, user_id: int | None, minimum: Role) -> list[Project]:
    """The projects, for a user with at least `minimum` role (else PermissionDenied)."""
    require(session, user_id, minimum)
    return projects(session)


def split_counts(session: Session, project_id: int) -> dict[str, int]:
    rows = session.exec(
        select(Item.split, func.count(Item.id)).where(Item.project_id == project_id)
        .group_by(Item.split)
    ).all()
    return {str(split.value if hasattr(split, "value") else split): n for split, n in rows}


def modality_counts(session: Session, project_id: int) -> dict[str, int]:
    """Items per modality: a project may hold volumes of several (MR and CT, say)."""
    rows = session.exec(
        select(Item.modality, func.count(Item.id)).where(Item.project_id == project_id)
        .group_by(Item.modality).order_by(func.count(Item.id).desc())
    ).all()
    return dict(rows)


def label_counts(session: Session, project_id: int) -> dict[str, int]:
    rows = session.exec(
        select(Label.kind, func.count(Label.id)).join(Item, Item.id == Label.item_id)
        .where(Item.project_id == project_id).group_by(Label.kind)
    ).all()
    return {LabelKind(k).value: n for k, n in rows}


def items_page(session: Session, project_id: int, offset: int = 0, limit: int = 24) -> list[Item]:
    return list(session.exec(
        select(Item).where(Item.project_id == project_id)
        .order_by(Item.volume_id, Item.slice_index, Item.id).offset(offset).limit(limit)
    ).all())
