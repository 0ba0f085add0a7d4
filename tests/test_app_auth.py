"""Sign-in, role gating, session expiry and the admin page, through Streamlit's AppTest."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select
from streamlit.testing.v1 import AppTest

from pipeline.demo import create_demo
from store import admin
from store.auth import MAX_FAILED_LOGINS
from store.errors import PermissionDenied
from store.models import AuditEvent, User, UserSession, utcnow

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture
def demo(sqlite_store):
    return create_demo(sqlite_store).passwords


def _sign_in(name: str, password: str) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception
    at.text_input[0].input(name)
    at.text_input[1].input(password)
    at.button[0].click().run()
    return at


def _titles(at: AppTest) -> list[str]:
    return [t.value for t in at.title]


def _on_review(at: AppTest) -> bool:
    """The review page is up: its project picker is shown."""
    return any(b.key == "review_project" for b in at.selectbox)


def test_wrong_password_is_refused_and_counted(demo, sqlite_store):
    at = _sign_in("clinician", "not the password")
    assert "wrong user name or password" in at.error[0].value
    assert "user" not in at.session_state
    with sqlite_store.session() as s:
        user = s.exec(select(User).where(User.name == "clinician")).one()
        assert user.failed_logins == 1


def test_clinician_sees_review_only(demo):
    at = _sign_in("clinician", demo["clinician"])
    assert not at.exception
    assert at.session_state["user"]["role"] == "clinician"
    assert _on_review(at)
    for page in ("pages/dataset.py", "pages/admin.py"):  # not in a clinician's navigation
        with pytest.raises(ValueError, match="Known pages: .*review.py'\\]"):
            at.switch_page(page)


def test_curator_opens_dataset_but_not_admin(demo):
    at = _sign_in("curator", demo["curator"])
    at.switch_page("pages/dataset.py").run()
    assert "Dataset" in _titles(at) and not at.exception
    # Not in a curator's navigation; even when the script runs, the store refuses.
    at.switch_page("pages/admin.py").run()
    assert not at.exception and not at.dataframe
    assert "needs the admin role" in at.error[0].value


def _signed_out_because(at: AppTest, why: str) -> bool:
    """The tab shows the sign-in form again, with the reason."""
    return (not _on_review(at) and at.text_input[0].label == "User name"
            and any(why in i.value for i in at.info))


def test_session_expires_on_the_server(demo, sqlite_store):
    at = _sign_in("clinician", demo["clinician"])
    assert _on_review(at)
    with sqlite_store.session(immediate=True) as s:  # 8 hours later
        row = s.exec(select(UserSession)).one()
        row.expires_at = utcnow() - timedelta(minutes=1)
        s.add(row)
    assert _signed_out_because(at.run(), "your session expired")
    with sqlite_store.session() as s:
        assert s.exec(select(UserSession)).one().end_reason == "your session expired"


def test_a_password_reset_ends_the_open_session(demo, sqlite_store):
    at = _sign_in("clinician", demo["clinician"])
    with sqlite_store.session(immediate=True) as s:
        ids = {u.name: u.id for u in s.exec(select(User)).all()}
        admin.new_password_for(s, ids["admin"], ids["clinician"])
    assert _signed_out_because(at.run(), "your password was reset by admin")
    # The old token is dead for good: a tab still holding it is not let back in.
    token = at.session_state["dead_tokens"]
    again = AppTest.from_file(APP, default_timeout=120)
    again.session_state["session_token"] = next(iter(token))
    assert not _on_review(again.run())


def test_a_lockout_ends_the_open_session(demo, sqlite_store):
    at = _sign_in("clinician", demo["clinician"])
    for _ in range(MAX_FAILED_LOGINS):  # someone else guesses in another browser
        other = _sign_in("clinician", "guess guess guess")
    assert "now locked" in other.error[0].value
    # The reason says what to do (seen in the walk-through: "...: sign in again" was wrong).
    assert _signed_out_because(at.run(), "locked after 5 failed sign-ins: try again in 15 "
                               "minutes, or ask an admin to reset your password.")
    with sqlite_store.session() as s:
        events = [e.action for e in s.exec(select(AuditEvent).where(
            AuditEvent.action.startswith("auth.")).order_by(AuditEvent.id)).all()]
    assert events == ["auth.login"] + ["auth.fail"] * MAX_FAILED_LOGINS


def test_disabling_ends_and_a_role_change_updates_the_open_session(demo, sqlite_store):
    clin = _sign_in("clinician", demo["clinician"])
    cur = _sign_in("curator", demo["curator"])
    with sqlite_store.session(immediate=True) as s:
        ids = {u.name: u.id for u in s.exec(select(User)).all()}
        admin.set_role(s, ids["admin"], ids["clinician"], "curator")
        admin.set_disabled(s, ids["admin"], ids["curator"], True)
    assert _signed_out_because(cur.run(), "disabled your account: ask an admin to enable it.")
    clin.run()
    assert _on_review(clin) and clin.session_state["user"]["role"] == "curator"
    clin.switch_page("pages/dataset.py").run()  # a curator's page, now in the navigation
    assert "Dataset" in _titles(clin) and not clin.exception


def test_sign_out_ends_the_server_session(demo, sqlite_store):
    at = _sign_in("clinician", demo["clinician"])
    token = at.session_state["session_token"]
    next(b for b in at.button if b.label == "Sign out").click().run()
    assert at.text_input[0].label == "User name" and not at.info
    with sqlite_store.session() as s:
        row = s.exec(select(UserSession)).one()
    assert row.token_sha256 != token and row.end_reason == "you signed out"


def test_admin_creates_and_disables_a_user(demo, sqlite_store):
    at = _sign_in("admin", demo["admin"])
    at.switch_page("pages/admin.py").run()
    assert "Admin" in _titles(at)
    name_box = next(t for t in at.text_input if t.label == "Name")
    name_box.input("dr_lee")
    next(b for b in at.button if b.label == "Create").click().run()
    assert not at.exception
    assert any("First password (shown once)" in m.value for m in at.success)
    with sqlite_store.session() as s:
        lee = s.exec(select(User).where(User.name == "dr_lee")).one()
        assert lee.role.value == "clinician"
        assert s.exec(select(AuditEvent).where(AuditEvent.action == "user.create",
                                               AuditEvent.actor == "admin")).first()


def test_store_refuses_admin_actions_from_other_roles(demo, sqlite_store):
    with sqlite_store.session(immediate=True) as s:
        ids = {u.name: u.id for u in s.exec(select(User)).all()}
        for who in ("clinician", "curator"):
            with pytest.raises(PermissionDenied, match="needs the admin role"):
                admin.add_user(s, ids[who], "mallory", "admin")
            with pytest.raises(PermissionDenied):
                admin.set_role(s, ids[who], ids[who], "admin")
        with pytest.raises(PermissionDenied, match="yourself"):
            admin.set_role(s, ids["admin"], ids["admin"], "clinician")
        with pytest.raises(PermissionDenied, match="your own account"):
            admin.set_disabled(s, ids["admin"], ids["admin"], True)
        admin.set_disabled(s, ids["admin"], ids["clinician"], True)
    at = _sign_in("clinician", demo["clinician"])
    assert "disabled" in at.error[0].value
