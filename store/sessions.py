"""Signed-in browser sessions, held on the server: started at sign-in, checked on every
interaction, ended by sign-out, expiry, a lockout, a disabled account or a password reset.

The browser holds only an opaque random token; the row keeps its sha256, so neither a copy
of the database nor the audit log can sign anybody in.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlmodel import Session, select

from store import audit
from store.db import Store
from store.errors import MedloopError
from store.models import Role, User, UserSession, utcnow

# last_seen_at is written at most this often, so an ordinary click stays a read.
TOUCH_EVERY = timedelta(minutes=5)


def session_length() -> timedelta:
    """A working day by default (MEDLOOP_SESSION_HOURS)."""
    return timedelta(hours=float(os.environ.get("MEDLOOP_SESSION_HOURS") or 8))


class SessionEnded(MedloopError):
    """The browser's session is no longer valid; the message says why, for the sign-in page."""


@dataclass(frozen=True)
class SignedIn:
    """Who is signed in, as read from the store on this interaction."""

    user_id: int
    name: str
    role: Role
    expires_at: datetime


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _aware(when: datetime) -> datetime:
    # SQLite hands datetimes back naive (they were stored as UTC).
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def start(session: Session, user: User) -> str:
    """A new session for `user` (in the caller's sign-in transaction); returns its token."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(UserSession(token_sha256=token_sha256(token), user_id=user.id,
                            created_at=now, last_seen_at=now,
                            expires_at=now + session_length()))
    return token


def end_all(session: Session, user_id: int, reason: str) -> int:
    """End every open session of a user (in the caller's transaction); how many ended."""
    rows = session.exec(select(UserSession).where(UserSession.user_id == user_id,
                                                  UserSession.ended_at.is_(None))).all()
    now = utcnow()
    for row in rows:
        row.ended_at, row.end_reason = now, reason
        session.add(row)
    return len(rows)


def _why_not(row: UserSession | None, user: User | None, now: datetime) -> str | None:
    """Why this session may not go on, or None when it may."""
    if row is None or user is None:
        return "you are not signed in"
    if row.ended_at is not None:
        return row.end_reason or "your session ended"
    if _aware(row.expires_at) <= now:
        return "your session expired"
    if user.disabled:
        return "an admin disabled your account: ask an admin to enable it"
    if user.locked_until is not None and _aware(user.locked_until) > now:
        return ("your account was locked after too many failed sign-ins: try again later, "
                "or ask an admin to reset your password")
    return None


def resume(store: Store, token: str | None) -> SignedIn:
    """The user of a valid session, read fresh (a role changed by an admin applies at once);
    SessionEnded, saying why, when the session may not go on (and it is ended for good)."""
    if not token:
        raise SessionEnded("you are not signed in")
    digest = token_sha256(token)
    now = utcnow()
    with store.session() as s:
        row = s.exec(select(UserSession).where(UserSession.token_sha256 == digest)).first()
        user = s.get(User, row.user_id) if row is not None else None
    why = _why_not(row, user, now)
    if why is None and now - _aware(row.last_seen_at) < TOUCH_EVERY:
        return SignedIn(user.id, user.name, user.role, _aware(row.expires_at))
    with store.session(immediate=True) as s:  # decide again under the write lock
        row = s.exec(select(UserSession).where(UserSession.token_sha256 == digest)).first()
        user = s.get(User, row.user_id) if row is not None else None
        why = _why_not(row, user, now)
        if why is None:
            row.last_seen_at = now
        elif row is not None and row.ended_at is None:
            row.ended_at, row.end_reason = now, why
            audit.record(s, user.name if user else "?", "auth.session_end", "user",
                         row.user_id, reason=why)
        if row is not None:
            s.add(row)
    if why is not None:
        raise SessionEnded(why)
    return SignedIn(user.id, user.name, user.role, _aware(row.expires_at))


def sign_out(store: Store, token: str | None) -> None:
    """End this browser's session (signing out twice is harmless)."""
    if not token:
        return
    with store.session(immediate=True) as s:
        row = s.exec(select(UserSession).where(
            UserSession.token_sha256 == token_sha256(token))).first()
        if row is None or row.ended_at is not None:
            return
        row.ended_at, row.end_reason = utcnow(), "you signed out"
        s.add(row)
        user = s.get(User, row.user_id)
        audit.record(s, user.name if user else "?", "auth.logout", "user", row.user_id)
