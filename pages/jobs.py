"""Jobs: the background work of all projects, live from the job table (progress, errors,
log tails), with Cancel for queued or running jobs and Retry for failed or cancelled ones."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import streamlit as st

if not st.session_state.get("check_session", lambda: False)():
    # Every run checks the server-side session, also when Streamlit runs this file without
    # app.py (it serves pages/ files by URL until the entry script declares its navigation).
    st.session_state["wanted_page"] = "pages/jobs.py"
    st.switch_page("app.py")

from pages._ui import project_picker
from store import jobs, queries
from store.errors import MedloopError
from store.models import Job, JobStatus, Role

store = st.session_state["store"]
user = st.session_state["user"]
FLASH, FLASH_SECONDS = "jobs_flash", 10.0
BADGE = {JobStatus.queued: ("blue", ":material/schedule:"),
         JobStatus.running: ("orange", ":material/progress_activity:"),
         JobStatus.succeeded: ("green", ":material/check_circle:"),
         JobStatus.failed: ("red", ":material/error:"),
         JobStatus.cancelled: ("gray", ":material/block:")}
ALL_PROJECTS = "All projects"


def _act(action, job_id: int) -> None:  # noqa: ANN001
    """Run a job action in a callback, so the list drawn next already shows its effect."""
    try:
        with store.session(immediate=True) as s:
            job = action(s, job_id, user["id"])
            done = (f"job #{job.id} will stop at its next progress report"
                    if job.cancel_requested and job.status == JobStatus.running
                    else f"job #{job.id} is {job.status.value}")
        st.session_state[FLASH] = ("success", done, time.monotonic())
    except MedloopError as exc:
        st.session_state[FLASH] = ("error", str(exc), time.monotonic())


def _ago(when: datetime | None) -> str:
    if when is None:
        return ""
    seconds = (datetime.now(UTC) - (when if when.tzinfo else when.replace(tzinfo=UTC)))
    seconds = max(0, int(seconds.total_seconds()))
    if seconds < 90:
        return f"{seconds} s ago"
    if seconds < 90 * 60:
        return f"{seconds // 60} min ago"
    if seconds < 36 * 3600:
        return f"{seconds // 3600} h ago"
    return f"{when:%Y-%m-%d}"


def _took(job: Job) -> str:
    if job.started_at is None:
        return ""
    end = job.finished_at or datetime.now(UTC).replace(tzinfo=None)
    start = job.started_at
    if (end.tzinfo is None) != (start.tzinfo is None):  # one from the clock, one from the db
        end, start = end.replace(tzinfo=None), start.replace(tzinfo=None)
    seconds = max(0, int((end - start).total_seconds()))
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def _row(job: Job, project_names: dict[int, str]) -> None:
    status = JobStatus(job.status)
    color, icon = BADGE[status]
    cols = st.columns([0.5, 1.6, 1.3, 1.5, 4.2, 0.9], vertical_alignment="center")
    cols[0].markdown(f"**#{job.id}**")
    cols[1].markdown(f"**{job.kind}** · {project_names.get(job.project_id, '—')}  \n"
                     f":gray[by {job.created_by}, {_ago(job.created_at)}]")
    attempts = f"attempt {job.attempts}/{job.max_attempts}" if job.attempts else ""
    cols[2].markdown(f":{color}-badge[{icon} {status.value}]  \n:gray[{attempts}]")
    with cols[3]:
        if status == JobStatus.running:
            st.progress(int(job.progress), text=f"{job.progress:.0f}%"
                        + (" · cancelling" if job.cancel_requested else ""))
        else:
            took = _took(job)
            st.caption(f"took {took}" if took and job.finished_at else
                       (f"running for {took}" if took else ""))
    with cols[4]:
        if status == JobStatus.failed and job.error:
            st.error(job.error, icon=":material/error:")
        elif job.message:
            st.markdown(job.message)
        if job.log_tail:
            with st.expander("Log", key=f"log-{job.id}"):
                st.code(job.log_tail, language=None)
    with cols[5]:
        if status in (JobStatus.queued, JobStatus.running):
            st.button("Cancel", key=f"cancel-{job.id}", width="stretch",
                      disabled=job.cancel_requested, on_click=_act,
                      args=(jobs.request_cancel, job.id))
        elif status in (JobStatus.failed, JobStatus.cancelled):
            st.button("Retry", key=f"retry-{job.id}", width="stretch", on_click=_act,
                      args=(jobs.retry, job.id))


st.title("Jobs")
with store.session() as s:  # a clinician gets the store's PermissionDenied, shown by app.py
    projects = queries.projects_for(s, user["id"], Role.curator)
names = {p.id: p.name for p in projects}

c1, c2 = st.columns([1, 2])
chosen_project = project_picker(store, user["id"], projects, "jobs_project", container=c1,
                                extra=(ALL_PROJECTS,))
chosen = chosen_project.name if chosen_project else ALL_PROJECTS
statuses = c2.multiselect("Status", [s.value for s in JobStatus],
                          placeholder="All statuses")
project_id = next((pid for pid, name in names.items() if name == chosen), None)


@st.fragment(run_every=2)
def job_list(project_id: int | None, statuses: list[str]) -> None:
    """Redrawn every 2 s from the job table, which the workers update."""
    flash = st.session_state.get(FLASH)
    if flash is not None and time.monotonic() - flash[2] < FLASH_SECONDS:
        getattr(st, flash[0])(flash[1])
    with store.session() as s:
        recent = jobs.recent(s, limit=50, project_id=project_id)
    counts = {status: sum(j.status == status for j in recent) for status in JobStatus}
    st.caption(" · ".join(f"{n} {status.value}" for status, n in counts.items() if n)
               + f" (the latest {len(recent)} jobs)" if recent else "No jobs yet.")
    shown = [j for j in recent if not statuses or JobStatus(j.status).value in statuses]
    for job in shown:
        with st.container(border=True):
            _row(job, names)
    if recent and not shown:
        st.caption("No job with these statuses.")


job_list(project_id, statuses)
