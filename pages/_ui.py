"""What several screens share: the project picker that remembers each user's last project.

Not a screen itself (app.py lists the screens for st.navigation).
"""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

from store import users
from store.db import Store
from store.models import Project

PROJECT_PREFERENCE = "project"


def last_project(store: Store, user_id: int) -> str | None:
    with store.session() as s:
        return users.preferences(s, user_id).get(PROJECT_PREFERENCE)


def project_picker(store: Store, user_id: int, projects: Sequence[Project], key: str,
                   container=st, require_choice: bool = False,  # noqa: ANN001
                   extra: Sequence[str] = ()) -> Project | None:
    """A project selectbox that opens on this user's last project (on any screen) and
    remembers a new choice. With require_choice and no last project it opens empty and
    returns None until the user picks one. `extra` options (e.g. "All projects") come first
    and give None."""
    names = [*extra, *(p.name for p in projects)]
    last = last_project(store, user_id)
    index = names.index(last) if last in names else (None if require_choice else 0)

    def remember() -> None:
        choice = st.session_state.get(key)
        if choice in names[len(extra):]:
            users.remember(store, user_id, **{PROJECT_PREFERENCE: choice})

    name = container.selectbox("Project", names, index=index, key=key, on_change=remember,
                               placeholder="Choose a project")
    if name is None or name in extra:
        return None
    return projects[names.index(name) - len(extra)]
