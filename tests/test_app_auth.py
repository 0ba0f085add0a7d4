"""Sign-in, role gating, session expiry and the admin page, through Streamlit's AppTest."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlmodel import select
from streamlit.testing.v1 import AppTest

from pipeline.demo import create_demo
from store import admin
from store.errors import PermissionDenied
from store.models import AuditEvent, User

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
    """The review page is up: the clinician's progress is shown."""
    return "Done today" in [m.label for m in at.metric]


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


def test_session_expires(demo):
    fresh = _sign_in("clinician", demo["clinician"]).session_state["user"]
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["user"] = {**fresh, "since": time.time() - 9 * 3600}  # 8 h allowed
    at.run()
    assert not _on_review(at)
    assert any("session expired" in i.value for i in at.info)
    assert at.text_input[0].label == "User name"
    at = AppTest.from_file(APP, default_timeout=120)
    at.session_state["user"] = {**fresh, "since": time.time() - 7 * 3600}
    assert _on_review(at.run())


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
