"""Model versions: registering foundation-model and task-model versions."""

from __future__ import annotations

from sqlmodel import Session, select

from store import audit
from store.models import ModelVersion


def ensure_model_version(
    session: Session, family: str, name: str, actor: str, project_id: int | None = None,
    config: dict | None = None, blob: str | None = None, parent_id: int | None = None,
    status: str = "candidate",
) -> ModelVersion:
    """The version named `name` in this family (and project), registered on first use."""
    q = select(ModelVersion).where(ModelVersion.family == family, ModelVersion.name == name)
    q = q.where(ModelVersion.project_id == project_id) if project_id is not None \
        else q.where(ModelVersion.project_id.is_(None))
    found = session.exec(q).first()
    if found is not None:
        return found
    mv = ModelVersion(family=family, name=name, project_id=project_id, config=config or {},
                      blob=blob, parent_id=parent_id, status=status)
    session.add(mv)
    session.flush()
    audit.record(session, actor, "model.register", "modelversion", mv.id, family=family,
                 name=name)
    return mv
