"""Audit events, written inside the transaction of the state change they record."""

from __future__ import annotations

from sqlmodel import Session

from store.models import AuditEvent


def record(
    session: Session,
    actor: str,
    action: str,
    entity: str,
    entity_id: int | None = None,
    **details: object,
) -> AuditEvent:
    event = AuditEvent(actor=actor, action=action, entity=entity, entity_id=entity_id,
                       details=dict(details))
    session.add(event)
    return event
