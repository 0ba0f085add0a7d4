"""Admin: accounts and roles, and the audit log with filters."""

from datetime import UTC, datetime, time, timedelta

import pandas as pd
import streamlit as st

if not st.session_state.get("check_session", lambda: False)():
    # Every run checks the server-side session, also when Streamlit runs this file without
    # app.py (it serves pages/ files by URL until the entry script declares its navigation).
    st.session_state["wanted_page"] = "pages/admin.py"
    st.switch_page("app.py")

from store import admin
from store.errors import MedloopError
from store.models import Role

store = st.session_state["store"]
me = st.session_state["user"]["id"]
ROLES = [r.value for r in Role]

st.title("Admin")
users_tab, audit_tab = st.tabs(["Users", "Audit log"])

try:  # the store checks the role itself: a non-admin gets its message, nothing else
    with store.session() as s:
        people = admin.users(s, me)
except MedloopError as exc:
    st.error(str(exc))
    st.stop()

with users_tab:
    st.dataframe(pd.DataFrame([{
        "user": u.name, "role": u.role.value, "disabled": u.disabled,
        "locked until": u.locked_until, "created": u.created_at} for u in people]),
        hide_index=True, width="stretch")

    with st.form("add-user", clear_on_submit=True):
        st.subheader("Add a user")
        c1, c2 = st.columns(2)
        name = c1.text_input("Name")
        role = c2.selectbox("Role", ROLES)
        if st.form_submit_button("Create"):
            try:
                with store.session(immediate=True) as s:
                    _, password = admin.add_user(s, me, name, role)
                st.success(f"Created {name}. First password (shown once): `{password}`")
            except MedloopError as exc:
                st.error(str(exc))

    st.subheader("Change a user")
    by_name = {u.name: u for u in people}
    who = st.selectbox("User", list(by_name), key="admin-user")
    target = by_name[who]
    c1, c2, c3 = st.columns(3)
    new_role = c1.selectbox("Change role to", ROLES, index=ROLES.index(target.role.value),
                            key="admin-role")
    try:
        if c1.button("Save role", disabled=new_role == target.role.value):
            with store.session(immediate=True) as s:
                admin.set_role(s, me, target.id, new_role)
            st.rerun()
        label = "Enable" if target.disabled else "Disable"
        if c2.button(label):
            with store.session(immediate=True) as s:
                admin.set_disabled(s, me, target.id, not target.disabled)
            st.rerun()
        if c3.button("Reset password"):
            with store.session(immediate=True) as s:
                password = admin.new_password_for(s, me, target.id)
            st.success(f"New password for {who} (shown once): `{password}`")
    except MedloopError as exc:
        st.error(str(exc))

with audit_tab:
    c1, c2, c3 = st.columns(3)
    actor = c1.text_input("Who (exact user name)")
    action = c2.text_input("Action starts with", placeholder="label.")
    today = datetime.now(UTC).date()
    days = c3.date_input("Between", (today - timedelta(days=7), today))
    since = until = None
    if isinstance(days, tuple) and len(days) == 2:
        since = datetime.combine(days[0], time.min, UTC)
        until = datetime.combine(days[1], time.min, UTC) + timedelta(days=1)
    with store.session() as s:
        events = admin.audit_log(s, me, actor.strip() or None, action.strip() or None,
                                 since, until)
    st.caption(f"{len(events)} event(s), newest first (at most 500)")
    st.dataframe(pd.DataFrame([{
        "at": e.at, "who": e.actor, "action": e.action, "what": f"{e.entity} {e.entity_id}",
        "details": e.details} for e in events]), hide_index=True, width="stretch")
