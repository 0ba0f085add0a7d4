"""Who may do what: login with lockout, and role checks every state change runs itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlmodel import Session, select

from store import audit, sessions
from store.db import Store
from store.errors import MedloopError, PermissionDenied
from store.models import Role, User, utcnow
from store.users import check_password

MAX_FAILED_LOGINS = 5
LOCKOUT_MINUTES = 15
LOCKOUT = timedelta(minutes=LOCKOUT_MINUTES)
RANK = {Role.clinician: 1, Role.curator: 2, Role.admin: 3}


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def require(session: Session, user_id: int | None, minimum: Role) -> User:
    """The acting user, if active and at least `minimum`; else PermissionDenied."""
    user = session.get(User, user_id) if user_id is not None else None
    if user is None or user.disabled:
        raise PermissionDenied("you are not signed in with an active account: sign in again")
    if RANK[user.role] < RANK[minimum]:
        raise PermissionDenied(f"this needs the {minimum.value} role; you are signed in as "
                               f"{user.role.value}: ask an admin")
    return user


class SignInRefused(MedloopError):
    """A sign-in that did not go through; the message says why and what to do."""


# Checked against when the user name is unknown, so a wrong name costs the same time as a
# wrong password and the answer's timing does not tell which names exist.
_DUMMY_HASH = "$2b$12$BCajf6cNPMTbdQH2tO5eCOlK/thyUXTi3UPRn3YbCDs/N1pHHdShq"


def _refused(session: Session, name: str, user: User | None, reason: str, **details) -> str:
    audit.record(session, name or "?", "auth.fail", "user", user.id if user else None,
                 reason=reason, **details)
    return reason


def sign_in(store: Store, name: str, password: str) -> tuple[User, str]:
    """(user, session token) for a right password; else SignInRefused, after recording the
    attempt (failures count toward a lockout; attempts while locked are logged too).

    The bcrypt check (~0.25 s) runs outside any transaction; the outcome is then written in
    one short transaction that takes the write lock up front, so a busy worker cannot make
    it fail half-way.
    """
    with store.session() as s:
        found = s.exec(select(User).where(User.name == name)).first()
    right = check_password(password, found.password_hash if found else _DUMMY_HASH)
    now = utcnow()
    with store.session(immediate=True) as s:
        user = s.exec(select(User).where(User.name == name)).first()
        why = None
        if user is None:
            why = _refused(s, name, None, "wrong user name or password", cause="unknown user")
        elif user.disabled:
            why = _refused(s, name, user, "this account is disabled: ask an admin",
                           cause="disabled")
        elif user.locked_until is not None and _aware(user.locked_until) > now:
            minutes = int((_aware(user.locked_until) - now).total_seconds() // 60) + 1
            why = _refused(s, name, user, f"this account is locked after too many failed "
                           f"sign-ins: try again in {minutes} minute(s), or ask an admin to "
                           "reset the password", cause="locked")
        elif not right or found is None or user.password_hash != found.password_hash:
            user.failed_logins += 1
            if user.failed_logins >= MAX_FAILED_LOGINS:
                user.locked_until = now + LOCKOUT
                user.failed_logins = 0
                ended = sessions.end_all(s, user.id, "your account was locked after "
                                         f"{MAX_FAILED_LOGINS} failed sign-ins: try again in "
                                         f"{LOCKOUT_MINUTES} minutes, or "
                                         "ask an admin to reset your password")
                why = _refused(s, name, user, f"wrong password, {MAX_FAILED_LOGINS} times in a "
                               f"row: the account is now locked for "
                               f"{LOCKOUT_MINUTES} minutes (an admin can "
                               "unlock it by resetting the password)", cause="wrong password",
                               locked=True, sessions_ended=ended)
            else:
                why = _refused(s, name, user, "wrong user name or password",
                               cause="wrong password", failures=user.failed_logins)
            s.add(user)
        else:
            user.failed_logins = 0
            user.locked_until = None
            s.add(user)
            token = sessions.start(s, user)
            audit.record(s, name, "auth.login", "user", user.id)
    if why is not None:
        raise SignInRefused(why)
    return user, token


def sso_sign_in(store: Store, email: str | None) -> tuple[User, str]:
    """Map an identity the organisation's OIDC provider vouched for to a local account.

    Roles stay in medloop: the account must exist (named by the e-mail) and be enabled.
    """
    if not email:
        raise SignInRefused("the identity provider sent no e-mail address: ask IT to "
                            "release it")
    with store.session(immediate=True) as s:
        user = s.exec(select(User).where(User.name == email)).first()
        why = None
        if user is None:
            why = _refused(s, email, None, f"no medloop account for {email}: ask an admin to "
                           "create one", sso=True)
        elif user.disabled:
            why = _refused(s, email, user, "this account is disabled: ask an admin", sso=True)
        else:
            token = sessions.start(s, user)
            audit.record(s, email, "auth.login", "user", user.id, sso=True)
    if why is not None:
        raise SignInRefused(why)
    return user, token
