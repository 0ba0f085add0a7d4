"""Small builders shared by test modules."""

from pathlib import Path

from sqlmodel import select
from streamlit.testing.v1 import AppTest

from store import sessions
from store.models import User
from store.projects import create_project

APP = str(Path(__file__).resolve().parents[1] / "app.py")


def make_project_simple(store, name="p", modality="MR"):
    with store.session(immediate=True) as s:
        return create_project(s, name, modality,
                              [{"name": "lesion", "value": 1, "color": "#ff0000"}], "test")


def signed_in_app(store, name: str, timeout: float = 120) -> AppTest:
    """The app (not yet run) in a browser tab that holds a fresh server-side session of
    user `name`, as a sign-in would have left it."""
    with store.session(immediate=True) as s:
        token = sessions.start(s, s.exec(select(User).where(User.name == name)).one())
    at = AppTest.from_file(APP, default_timeout=timeout)
    at.session_state["session_token"] = token
    return at
