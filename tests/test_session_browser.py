"""In Chromium: a reload, a new tab or a typed URL keeps the user signed in (the session is
held on the server, the browser keeps a cookie with an opaque token); signing out or an
admin's password reset ends it in every tab."""

from __future__ import annotations

import pytest
from sqlmodel import select

from browser import ARTIFACTS, require_browser, sign_in, streamlit_app
from pipeline.bench.browser import CHROMIUM, CHROMIUM_ARGS
from pipeline.demo import create_demo
from store import admin
from store.models import User, UserSession


def _signed_in_as(page, name: str, timeout_ms: int = 60_000) -> None:
    page.get_by_text(f"{name} ·").first.wait_for(timeout=timeout_ms)


@pytest.mark.browser
def test_reload_new_tab_and_typed_url_keep_the_session(sqlite_store):
    require_browser()
    from playwright.sync_api import sync_playwright

    passwords = create_demo(sqlite_store).passwords
    with streamlit_app() as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 900})
        page = context.new_page()
        try:
            sign_in(page, url, "admin", passwords["admin"])
            cookie = next(c for c in context.cookies() if c["name"] == "medloop_session")
            # Only an opaque token in the browser: the store keeps its hash, not the token.
            with sqlite_store.session() as s:
                rows = s.exec(select(UserSession)).all()
            assert len(rows) == 1 and rows[0].token_sha256 != cookie["value"]
            assert cookie["sameSite"] == "Strict"

            page.reload()
            _signed_in_as(page, "admin")
            page.goto(f"{url}/admin")  # typed into the address bar
            page.get_by_text("Audit log").first.wait_for(timeout=60_000)
            _signed_in_as(page, "admin")
            other = context.new_page()  # a new tab
            other.goto(url)
            _signed_in_as(other, "admin")
            assert other.get_by_role("button", name="Sign in").count() == 0

            # An admin resets this account's password (say, from another machine): both
            # tabs are signed out on their next interaction and say why.
            with sqlite_store.session(immediate=True) as s:
                me = s.exec(select(User).where(User.name == "admin")).one()
                cur = s.exec(select(User).where(User.name == "curator")).one()
                admin.set_role(s, me.id, cur.id, "admin")
            with sqlite_store.session(immediate=True) as s:
                admin.new_password_for(s, cur.id, me.id)
            other.reload()
            other.get_by_text("your password was reset by curator").wait_for(timeout=60_000)
            page.reload()
            page.get_by_role("button", name="Sign in").wait_for(timeout=60_000)
            ARTIFACTS.mkdir(exist_ok=True)
            other.screenshot(path=str(ARTIFACTS / "signed-out-after-reset.png"))
        except Exception:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "session-failure.png"), full_page=True)
            raise
        finally:
            browser.close()


@pytest.mark.browser
def test_sign_out_clears_the_cookie_and_the_session(sqlite_store):
    require_browser()
    from playwright.sync_api import sync_playwright

    passwords = create_demo(sqlite_store).passwords
    with streamlit_app() as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context()
        page = context.new_page()
        try:
            sign_in(page, url, "clinician", passwords["clinician"])
            page.get_by_role("button", name="Sign out").click()
            page.get_by_role("button", name="Sign in").wait_for(timeout=60_000)
            page.wait_for_function("() => !document.cookie.includes('medloop_session=')")
            page.reload()
            page.get_by_role("button", name="Sign in").wait_for(timeout=60_000)
        finally:
            browser.close()
    with sqlite_store.session() as s:
        assert s.exec(select(UserSession)).one().end_reason == "you signed out"
