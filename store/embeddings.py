"""The embedding cache's index: which blob holds an item's embedding for an encoder version."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, delete, select

from store.models import ItemEmbedding


def find(session: Session, item_id: int, fm_version: str) -> str | None:
    return session.exec(
        select(ItemEmbedding.blob).where(ItemEmbedding.item_id == item_id,
                                         ItemEmbedding.fm_version == fm_version)
    ).first()


def remember(session: Session, item_id: int, fm_version: str, blob: str) -> None:
    """Index a computed embedding; a concurrent writer's identical entry is fine."""
    try:
        with session.begin_nested():
            session.add(ItemEmbedding(item_id=item_id, fm_version=fm_version, blob=blob))
    except IntegrityError:
        pass  # another process cached the same (item, version) first


def forget_other_versions(session: Session, keep_version: str) -> int:
    """Drop index entries of other encoder versions (their blobs become unreferenced)."""
    result = session.exec(delete(ItemEmbedding).where(ItemEmbedding.fm_version != keep_version))
    return result.rowcount or 0
