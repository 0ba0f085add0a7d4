"""medloop's Streamlit entry: sign-in, then the pages this user's role may open."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import streamlit as st

from store import sessions
from store.db import Store
from store.errors import MedloopError
from store.models import Role, utcnow
from store.sessions import SessionEnded
from store.settings import load_settings

# The browser's only piece of the session: an opaque token (store/sessions.py holds the rest).
COOKIE = "medloop_session"
log = logging.getLogger("medloop.app")
PAGES = {  # page file -> (title, icon, lowest role that may open it)
    "pages/review.py": ("Review", ":material/fact_check:", Role.clinician),
    "pages/dataset.py": ("Dataset", ":material/photo_library:", Role.curator),
    "pages/training.py": ("Training", ":material/model_training:", Role.curator),
    "pages/jobs.py": ("Jobs", ":material/work_history:", Role.curator),
    "pages/admin.py": ("Admin", ":material/admin_panel_settings:", Role.admin),
}
RANK = {Role.clinician: 1, Role.curator: 2, Role.admin: 3}


@st.cache_resource
def get_store(data_dir: str, database_url: str) -> Store:
    """One store per configuration (keyed so a changed environment gets its own)."""
    store = Store(replace(load_settings(), data_dir=Path(data_dir), database_url=database_url))
    store.upgrade()
    return store


@st.cache_resource(show_spinner="Loading the foundation model…")
def get_fm():
    """(model, None) or (None, what to do): the app works on without proposals."""
    from pipeline.fm import try_load_foundation_model

    return try_load_foundation_model()


def oidc_configured() -> bool:
    """st.login is offered when .streamlit/secrets.toml has an [auth] section (OIDC)."""
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets file at all
        return False


def _cookie_script(token: str | None, seconds: int = 0) -> str:
    """JavaScript that stores (or, with None, deletes) the session cookie in the browser.

    The cookie holds only the opaque token; the session itself lives in the store.
    """
    value, age = (token, max(0, seconds)) if token else ("", 0)
    return ("<script>document.cookie = '" + f"{COOKIE}={value}; path=/; max-age={age}; "
            "samesite=strict' + (location.protocol === 'https:' ? '; secure' : '');</script>")


def _browser_cookie() -> str | None:
    """The session token this browser sent when it connected (None outside a browser)."""
    try:
        value = st.context.cookies.get(COOKIE)
    except Exception:  # no browser connection (AppTest, bare mode)
        return None
    return value if isinstance(value, str) and value else None


def _forget(reason: str | None) -> None:
    """This browser tab is signed out: drop what it held (the store is kept)."""
    dead = set(st.session_state.get("dead_tokens", ()))
    for key in ("session_token",):
        if st.session_state.get(key):
            dead.add(st.session_state[key])
    cookie = _browser_cookie()
    if cookie:
        dead.add(cookie)  # this connection keeps sending it until the page reloads
    keep = {"store": st.session_state.get("store")}
    st.session_state.clear()
    st.session_state.update(keep, dead_tokens=dead)
    if reason:
        st.session_state["ended"] = reason


def signed_in_user(store: Store) -> dict | None:
    """The user of this tab's server-side session, checked on every run; None when signed
    out (a reload or a new tab finds the session through its cookie)."""
    token = st.session_state.get("session_token")
    if token is None:
        cookie = _browser_cookie()
        if cookie and cookie not in st.session_state.get("dead_tokens", ()):
            token = cookie
    if token is None:
        return None
    try:
        signed = sessions.resume(store, token)
    except SessionEnded as exc:
        quiet = str(exc) in ("you are not signed in", "you signed out")
        st.session_state["session_token"] = token
        _forget(None if quiet else str(exc))
        return None
    before = st.session_state.get("user")
    if before and before["role"] != signed.role.value:
        st.toast(f"An admin changed your role to {signed.role.value}.")
    st.session_state["session_token"] = token
    st.session_state["user"] = {"id": signed.user_id, "name": signed.name,
                                "role": signed.role.value, "expires_at": signed.expires_at}
    return st.session_state["user"]


def complete_sign_in(sign_in_fn) -> None:  # noqa: ANN001
    """Run one sign-in (its outcome is recorded either way); go on as that user, or say why
    not. The form keeps what was typed."""
    try:
        _, token = sign_in_fn()
    except MedloopError as exc:
        st.error(str(exc))
        return
    st.session_state.pop("ended", None)
    st.session_state["session_token"] = token
    st.rerun()


def sign_in() -> None:
    from store.auth import sign_in as check
    from store.auth import sso_sign_in

    store = st.session_state["store"]
    if st.session_state.get("ended"):
        why = st.session_state["ended"]
        # A reason that says what to do ("...: ask an admin") is shown as it is.
        st.info(f"You were signed out: {why}" + ("." if ":" in why else ": sign in again."))
    st.title("medloop")
    if oidc_configured():
        if getattr(st.user, "is_logged_in", False):
            complete_sign_in(lambda: sso_sign_in(store, st.user.get("email")))
        st.button("Sign in with your organisation's account", on_click=st.login)
        st.divider()
    st.caption("Sign in with your medloop account.")
    with st.form("sign-in"):
        name = st.text_input("User name")
        password = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        complete_sign_in(lambda: check(store, name.strip(), password))


def _sign_out() -> None:
    sessions.sign_out(st.session_state["store"], st.session_state.get("session_token"))
    _forget(None)


def _cookie_sync(user: dict | None) -> None:
    """Keep the browser's cookie in step with this tab: the token while signed in (rendered on
    every run, so a rerun racing the first render cannot lose it), deleted when signed out."""
    if user is None:
        st.html(_cookie_script(None), unsafe_allow_javascript=True)
    else:
        left = int((user["expires_at"] - utcnow()).total_seconds())
        st.html(_cookie_script(st.session_state["session_token"], left),
                unsafe_allow_javascript=True)


st.session_state['runs'] = st.session_state.get('runs', 0) + 1
st.set_page_config(page_title="medloop", page_icon="🩻", layout="wide")
settings = load_settings()
store = get_store(str(settings.data_dir), settings.database_url)
st.session_state["store"] = store
# What each page runs first: the same check, for runs that reach a page without this script.
st.session_state["check_session"] = lambda: signed_in_user(store) is not None
try:
    user = signed_in_user(store)
except MedloopError as exc:  # the store busy past its timeout: say so, keep the session
    st.error(str(exc))
    st.stop()
if user is None:
    _cookie_sync(None)
    # Always through st.navigation: without it Streamlit falls back to serving every file in
    # pages/ by URL, sign-in or not.
    login_page = st.Page(sign_in, title="Sign in", icon=":material/login:")
    st.navigation([login_page], position="hidden").run()
    st.stop()

role = Role(user["role"])
# Each role lands on its own work: clinicians review, curators curate, admins administer.
HOME = {Role.clinician: "pages/review.py", Role.curator: "pages/dataset.py",
        Role.admin: "pages/admin.py"}
allowed = [st.Page(path, title=title, icon=icon, default=path == HOME[role])
           for path, (title, icon, minimum) in PAGES.items() if RANK[role] >= RANK[minimum]]
fm, fm_problem = get_fm()
st.session_state["fm"] = fm
with st.sidebar:
    _cookie_sync(user)
    st.markdown(f"**{user['name']}** · {role.value}")
    st.button("Sign out", on_click=_sign_out)
    if fm is None:
        st.warning(fm_problem)
    else:
        st.caption(f"Proposals by {fm.version} (sha256 {fm.checkpoint_sha256[:12]}…)")
wanted = st.session_state.pop("wanted_page", None)
if wanted in {p for p, (_, _, minimum) in PAGES.items() if RANK[role] >= RANK[minimum]}:
    st.switch_page(wanted)  # the page asked for by URL, now that the session is checked
try:
    st.navigation(allowed).run()
except MedloopError as exc:  # a user-caused problem: its message, never a traceback
    st.error(str(exc))
except Exception:  # a bug: logged with its traceback for IT; the user gets a plain message
    log.exception("page failed")
    st.error("Something went wrong on this page and was logged for your IT team. Reload the "
             "page to go on; if it happens again, tell them the time it happened.")
