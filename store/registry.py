"""Model versions: registering FM, task-model and generator versions; the task model's
champion, promotion and rollback."""

from __future__ import annotations

from sqlmodel import Session, select

from store import audit
from store.auth import require
from store.errors import Conflict, InvalidInput, NotFound
from store.jobs import queue_refresh
from store.models import ModelVersion, Role
from store.scores import queue_score


def find_version(session: Session, family: str, name: str,
                 project_id: int | None = None) -> ModelVersion | None:
    q = select(ModelVersion).where(ModelVersion.family == family, ModelVersion.name == name)
    q = q.where(ModelVersion.project_id == project_id) if project_id is not None \
        else q.where(ModelVersion.project_id.is_(None))
    return session.exec(q).first()


def ensure_model_version(
    session: Session, family: str, name: str, actor: str, project_id: int | None = None,
    config: dict | None = None, blob: str | None = None, parent_id: int | None = None,
    status: str = "candidate",
) -> ModelVersion:
    """The version named `name` in this family (and project), registered on first use."""
    found = find_version(session, family, name, project_id)
    if found is not None:
        return found
    mv = ModelVersion(family=family, name=name, project_id=project_id, config=config or {},
                      blob=blob, parent_id=parent_id, status=status)
    session.add(mv)
    session.flush()
    audit.record(session, actor, "model.register", "modelversion", mv.id, family=family,
                 name=name)
    return mv


# Task-model statuses: a new version is a candidate until its holdout evaluation; then it is
# the champion (the project's one current model), or rejected; a replaced champion is retired.
CANDIDATE, CHAMPION, REJECTED, RETIRED = "candidate", "champion", "rejected", "retired"


def champion(session: Session, project_id: int, family: str = "task") -> ModelVersion | None:
    return session.exec(select(ModelVersion).where(
        ModelVersion.project_id == project_id, ModelVersion.family == family,
        ModelVersion.status == CHAMPION)).first()


def versions(session: Session, project_id: int, family: str = "task") -> list[ModelVersion]:
    return list(session.exec(select(ModelVersion).where(
        ModelVersion.project_id == project_id, ModelVersion.family == family)
        .order_by(ModelVersion.id)).all())


def promote(session: Session, mv: ModelVersion, actor: str, reason: str,
            action: str = "model.promote") -> ModelVersion:
    """Make `mv` its project's champion; the previous champion is retired."""
    if mv.blob is None:
        raise InvalidInput(f"model version {mv.name} has no weights to serve")
    previous = champion(session, mv.project_id, mv.family)
    if previous is not None and previous.id != mv.id:
        previous.status = RETIRED
        session.add(previous)
    mv.status = CHAMPION
    mv.metrics = {**(mv.metrics or {}), "decision": {
        **(mv.metrics or {}).get("decision", {}), "promoted": True, "reason": reason,
        "by": actor}}
    session.add(mv)
    session.flush()
    audit.record(session, actor, action, "modelversion", mv.id, name=mv.name,
                 replaced=previous.name if previous is not None else None, reason=reason)
    if mv.family == "task":  # the new champion re-orders the review queue
        queue_score(session, mv.project_id, actor, f"{mv.name} became the champion")
    return mv


def set_champion(session: Session, user_id: int, model_version_id: int,
                 reason: str = "") -> ModelVersion:
    """A curator's promotion or rollback: any version with weights may become champion."""
    user = require(session, user_id, Role.curator)
    mv = session.get(ModelVersion, model_version_id)
    if mv is None or mv.family != "task":
        raise NotFound(f"task model version {model_version_id} does not exist")
    current = champion(session, mv.project_id, mv.family)
    if current is not None and current.id == mv.id:
        raise Conflict(f"{mv.name} is already the champion")
    rollback = current is not None and mv.id < current.id
    why = reason.strip() or ("rolled back" if rollback else "promoted") + f" by {user.name}"
    mv = promote(session, mv, user.name, why,
                 action="model.rollback" if rollback else "model.promote")
    # Clinicians see the new champion's proposals, as after an automatic promotion.
    queue_refresh(session, mv.project_id, mv.id, user.name)
    return mv


def record_evaluation(session: Session, model_version_id: int, actor: str, holdout: dict,
                      cases: dict, decision: dict | None = None) -> ModelVersion:
    """Store a version's holdout metrics; with a decision (for a candidate), promote it or
    reject it. A candidate with nothing to be judged on stays a candidate."""
    mv = session.get(ModelVersion, model_version_id)
    if mv is None:
        raise NotFound(f"model version {model_version_id} does not exist")
    mv.metrics = {**(mv.metrics or {}), "holdout": holdout, "holdout_cases": cases}
    audit.record(session, actor, "model.evaluate", "modelversion", mv.id,
                 cases=holdout.get("cases", 0), mean_dice=holdout.get("mean_dice"))
    if decision is None or mv.status != CANDIDATE:
        session.add(mv)
        return mv
    mv.metrics = {**mv.metrics, "decision": decision}
    if decision["promoted"]:
        return promote(session, mv, actor, decision["reason"])
    if decision.get("below_bar"):  # not fit to serve yet: kept for the curator to judge
        audit.record(session, actor, "model.keep_candidate", "modelversion", mv.id,
                     name=mv.name, reason=decision["reason"])
    elif holdout.get("cases", 0):
        mv.status = REJECTED
        audit.record(session, actor, "model.reject", "modelversion", mv.id, name=mv.name,
                     reason=decision["reason"])
    session.add(mv)
    return mv
