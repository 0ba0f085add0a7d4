"""Local accounts: bcrypt password hashes, roles, creation and password reset."""

from __future__ import annotations

import secrets

import bcrypt
from sqlmodel import Session, select

from store import audit, sessions
from store.errors import Conflict, InvalidInput, NotFound
from store.models import Role, User

MIN_PASSWORD_LENGTH = 10


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise InvalidInput(f"passwords need at least {MIN_PASSWORD_LENGTH} characters")
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode()


def check_password(password: str, password_hash: str) -> bool:
    return bcrypt.checkpw(password.encode(), password_hash.encode())


def new_password() -> str:
    return secrets.token_urlsafe(12)


def create_user(session: Session, name: str, role: Role | str, password: str, actor: str) -> User:
    if session.exec(select(User).where(User.name == name)).first():
        raise Conflict(f"a user named {name!r} exists already: pick another name")
    try:
        role = Role(role)
    except ValueError:
        raise InvalidInput(
            f"unknown role {role!r}: use one of {', '.join(r.value for r in Role)}"
        ) from None
    user = User(name=name, role=role, password_hash=hash_password(password))
    session.add(user)
    session.flush()
    audit.record(session, actor, "user.create", "user", user.id, name=name, role=role.value)
    return user


def reset_password(session: Session, name: str, password: str, actor: str) -> User:
    user = session.exec(select(User).where(User.name == name)).first()
    if user is None:
        raise NotFound(f"no user named {name!r}: list users with `medloop user list`")
    user.password_hash = hash_password(password)
    user.failed_logins = 0
    user.locked_until = None
    session.add(user)
    # Whoever had the old password (or a session opened with it) is signed out.
    ended = sessions.end_all(session, user.id, f"your password was reset by {actor}: sign in "
                             "with the new one")
    audit.record(session, actor, "user.reset_password", "user", user.id, name=name,
                 sessions_ended=ended)
    return user


def preferences(session: Session, user_id: int) -> dict:
    user = session.get(User, user_id)
    return dict(user.preferences or {}) if user is not None else {}


def remember(store, user_id: int, **values: object) -> None:  # noqa: ANN001
    """Keep per-user choices (the last project, ...) for the next session and page."""
    with store.session(immediate=True) as s:
        user = s.get(User, user_id)
        if user is None:
            raise NotFound(f"user {user_id} does not exist")
        user.preferences = {**(user.preferences or {}), **values}
        s.add(user)
