"""medloop's Streamlit entry: sign-in, then the pages this user's role may open."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import streamlit as st

from store.db import Store
from store.errors import MedloopError
from store.models import Role
from store.settings import load_settings

# A signed-in browser session ends after a working day (MEDLOOP_SESSION_HOURS).
SESSION_SECONDS = float(os.environ.get("MEDLOOP_SESSION_HOURS") or 8) * 3600
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


def remember(user) -> None:  # noqa: ANN001
    st.session_state["user"] = {"id": user.id, "name": user.name, "role": user.role.value,
                                "since": time.time()}


def complete_sign_in(store: Store, check) -> None:  # noqa: ANN001
    """Run one sign-in check in its own transaction (a failure is recorded too); then go
    on as that user, or say why not."""
    with store.session(immediate=True) as s:
        user, why = check(s)
        if user is not None:
            remember(user)
    if user is None:
        st.error(why)
    else:
        st.rerun()


def sign_in() -> None:
    from store.auth import authenticate, sso_login

    store = st.session_state["store"]
    if st.session_state.pop("expired", False):
        st.info("Your session expired: sign in again.")
    st.title("medloop")
    if oidc_configured():
        if getattr(st.user, "is_logged_in", False):
            complete_sign_in(store, lambda s: sso_login(s, st.user.get("email")))
        st.button("Sign in with your organisation's account", on_click=st.login)
        st.divider()
    st.caption("Sign in with your medloop account.")
    with st.form("sign-in"):
        name = st.text_input("User name")
        password = st.text_input("Password", type="password")
        submitted = st.form_submit_button("Sign in", type="primary")
    if submitted:
        complete_sign_in(store, lambda s: authenticate(s, name.strip(), password))


def signed_in_user() -> dict | None:
    user = st.session_state.get("user")
    if user and time.time() - user["since"] > SESSION_SECONDS:
        st.session_state.clear()
        st.session_state["expired"] = True
        return None
    return user


st.set_page_config(page_title="medloop", page_icon="🩻", layout="wide")
settings = load_settings()
store = get_store(str(settings.data_dir), settings.database_url)
user = signed_in_user()
st.session_state["store"] = store
if user is None:
    # Always through st.navigation: without it Streamlit falls back to serving every file in
    # pages/ by URL, sign-in or not.
    login_page = st.Page(sign_in, title="Sign in", icon=":material/login:")
    st.navigation([login_page], position="hidden").run()
    st.stop()

role = Role(user["role"])
allowed = [st.Page(path, title=title, icon=icon)
           for path, (title, icon, minimum) in PAGES.items() if RANK[role] >= RANK[minimum]]
fm, fm_problem = get_fm()
st.session_state["fm"] = fm
with st.sidebar:
    st.markdown(f"**{user['name']}** · {role.value}")
    if st.button("Sign out"):
        st.session_state.clear()
        st.rerun()
    if fm is None:
        st.warning(fm_problem)
    else:
        st.caption(f"Proposals by {fm.version} (sha256 {fm.checkpoint_sha256[:12]}…)")
try:
    st.navigation(allowed).run()
except MedloopError as exc:  # a user-caused problem: its message, never a traceback
    st.error(str(exc))
