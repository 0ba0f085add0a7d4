"""Who may do what: login with lockout, and role checks every state change runs itself."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session, select

from store import audit
from store.errors import PermissionDenied
from store.models import Role, User, utcnow
from store.users import check_password

MAX_FAILED_LOGINS = 5
LOCKOUT = timedelta(minutes=15)
RANK = {Role.clinician: 1, Role.curator: 2, Role.admin: 3}


def require(session: Session, user_id: int | None, minimum: Role) -> User:
    """The acting user, if active and at least `minimum`; else PermissionDenied."""
    user = session.get(User, user_id) if user_id is not None else None
    if user is None or user.disabled:
        raise PermissionDenied("you are not signed in with an active account: sign in again")
    if RANK[user.role] < RANK[minimum]:
        raise PermissionDenied(f"this needs the {minimum.value} role; you are signed in as "
                               f"{user.role.value}: ask an admin")
    return user


def authenticate(session: Session, name: str, password: str) -> tuple[User | None, str]:
    """(user, "") on success, else (None, why). Failures count toward a lockout.

    The caller commits either way, so a failed attempt is recorded.
    """
    user = session.exec(select(User).where(User.name == name)).first()
    now = utcnow()
    if user is None:
        audit.record(session, name or "?", "auth.fail", "user", None, reason="unknown user")
        return None, "wrong user name or password"
    if user.disabled:
        audit.record(session, name, "auth.fail", "user", user.id, reason="disabled")
        return None, "this account is disabled: ask an admin"
    if user.locked_until is not None and user.locked_until > now:
        minutes = int((user.locked_until - now).total_seconds() // 60) + 1
        return None, (f"too many failed sign-ins: locked for {minutes} more minute(s), or ask "
                      "an admin to reset the password")
    if not check_password(password, user.password_hash):
        user.failed_logins += 1
        if user.failed_logins >= MAX_FAILED_LOGINS:
            user.locked_until = now + LOCKOUT
            user.failed_logins = 0
        session.add(user)
        audit.record(session, name, "auth.fail", "user", user.id, reason="wrong password",
                     locked=user.locked_until is not None and user.locked_until > now)
        return None, "wrong user name or password"
    user.failed_logins = 0
    user.locked_until = None
    session.add(user)
    audit.record(session, name, "auth.login", "user", user.id)
    return user, ""


def sso_login(session: Session, email: str | None) -> tuple[User | None, str]:
    """Map an identity the organisation's OIDC provider vouched for to a local account.

    Roles stay in medloop: the account must exist (named by the e-mail) and be enabled.
    """
    if not email:
        return None, "the identity provider sent no e-mail address: ask IT to release it"
    user = session.exec(select(User).where(User.name == email)).first()
    if user is None:
        audit.record(session, email, "auth.fail", "user", None, reason="no account", sso=True)
        return None, f"no medloop account for {email}: ask an admin to create one"
    if user.disabled:
        return None, "this account is disabled: ask an admin"
    audit.record(session, email, "auth.login", "user", user.id, sso=True)
    return user, ""
