"""Admin actions on accounts, and the audit log; each checks the acting user is an admin."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Session, select

from store import audit, sessions
from store.auth import require
from store.errors import InvalidInput, NotFound, PermissionDenied
from store.models import AuditEvent, Role, User
from store.users import create_user, new_password, reset_password


def _target(session: Session, user_id: int) -> User:
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"user {user_id} does not exist")
    return user


def add_user(session: Session, actor_id: int, name: str, role: str) -> tuple[User, str]:
    """Create an account; returns it and its first password (shown once)."""
    admin = require(session, actor_id, Role.admin)
    if not name.strip():
        raise InvalidInput("give the new user a name")
    password = new_password()
    return create_user(session, name.strip(), role, password, admin.name), password


def set_role(session: Session, actor_id: int, user_id: int, role: str) -> User:
    admin = require(session, actor_id, Role.admin)
    user = _target(session, user_id)
    try:
        new = Role(role)
    except ValueError:
        raise InvalidInput(f"unknown role {role!r}") from None
    if user.id == admin.id and new != Role.admin:
        raise PermissionDenied("you cannot take the admin role from yourself: ask another "
                               "admin")
    old, user.role = user.role, new
    session.add(user)  # open sessions read the role on their next interaction
    audit.record(session, admin.name, "user.role", "user", user.id, name=user.name,
                 old=old.value, new=new.value)
    return user


def set_disabled(session: Session, actor_id: int, user_id: int, disabled: bool) -> User:
    admin = require(session, actor_id, Role.admin)
    user = _target(session, user_id)
    if user.id == admin.id and disabled:
        raise PermissionDenied("you cannot disable your own account")
    user.disabled = disabled
    session.add(user)
    ended = sessions.end_all(session, user.id, f"an admin ({admin.name}) disabled your "
                             "account: ask an admin to enable it") if disabled else 0
    audit.record(session, admin.name, "user.disable" if disabled else "user.enable", "user",
                 user.id, name=user.name, sessions_ended=ended)
    return user


def new_password_for(session: Session, actor_id: int, user_id: int) -> str:
    """Reset a password (also lifts a lockout); returns the new one, shown once."""
    admin = require(session, actor_id, Role.admin)
    password = new_password()
    reset_password(session, _target(session, user_id).name, password, admin.name)
    return password


def users(session: Session, actor_id: int) -> list[User]:
    require(session, actor_id, Role.admin)
    return list(session.exec(select(User).order_by(User.name)).all())


def audit_log(
    session: Session, actor_id: int, actor: str | None = None, action: str | None = None,
    since: datetime | None = None, until: datetime | None = None, limit: int = 500,
) -> list[AuditEvent]:
    require(session, actor_id, Role.admin)
    q = select(AuditEvent)
    if actor:
        q = q.where(AuditEvent.actor == actor)
    if action:
        q = q.where(AuditEvent.action.startswith(action))
    if since:
        q = q.where(AuditEvent.at >= since)
    if until:
        q = q.where(AuditEvent.at < until)
    return list(session.exec(q.order_by(AuditEvent.id.desc()).limit(limit)).all())
