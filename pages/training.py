"""Training: a project's task-model registry (champion, challengers and why they were kept
out), its learning curve, its review order (the active-learning strategy), its retraining
settings, "Retrain now", and promotion or rollback."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

if not st.session_state.get("check_session", lambda: False)():
    # Every run checks the server-side session, also when Streamlit runs this file without
    # app.py (it serves pages/ files by URL until the entry script declares its navigation).
    st.session_state["wanted_page"] = "pages/training.py"
    st.switch_page("app.py")

from pages._ui import project_picker
from pipeline.active import strategies
from store import queries, registry, retraining, scores
from store.errors import MedloopError
from store.jobs import active_job
from store.models import Job, JobStatus, ModelVersion, Role

store = st.session_state["store"]
user = st.session_state["user"]
FLASH = "training_flash"
STATUS_LABEL = {registry.CHAMPION: "★ champion", registry.CANDIDATE: "candidate",
                registry.REJECTED: "rejected", registry.RETIRED: "retired"}
ARCHITECTURES = ["unet", "swinunetr"]


def _flash(kind: str, text: str) -> None:
    st.session_state[FLASH] = (kind, text)


def _show_flash() -> None:
    kind, text = st.session_state.pop(FLASH, (None, None))
    if kind is not None:
        getattr(st, kind)(text)


# Writes run in callbacks: they finish before the page is drawn again, so everything below
# shows the state after them.


def _retrain(project_id: int) -> None:
    try:
        with store.session(immediate=True) as s:
            job, created = retraining.retrain_now(s, user["id"], project_id)
    except MedloopError as exc:
        _flash("error", str(exc))
        return
    if created:
        _flash("success", f"queued training job #{job.id}: follow it on the Jobs page")
    else:
        _flash("info", f"training job #{job.id} is already {job.status.value}")


def _save_settings(project_id: int) -> None:
    changes = {k: st.session_state[f"setting-{k}-{project_id}"] for k in retraining.DEFAULTS}
    try:
        with store.session(immediate=True) as s:
            retraining.update_training_settings(s, user["id"], project_id, **changes)
    except MedloopError as exc:
        _flash("error", str(exc))
        return
    _flash("success", "training settings saved")


def _set_champion(project_id: int, names: dict[int, str]) -> None:
    version_id = st.session_state.get(f"promote-{project_id}")
    if version_id is None:
        return
    try:
        with store.session(immediate=True) as s:
            mv = registry.set_champion(s, user["id"], version_id,
                                       reason=st.session_state.get(f"why-{project_id}", ""))
            why = mv.metrics["decision"]["reason"]
    except MedloopError as exc:
        _flash("error", str(exc))
        return
    _flash("success", f"{names[version_id]} is now the champion ({why})")


def _set_strategy(project_id: int) -> None:
    name = st.session_state[f"strategy-{project_id}"]
    try:
        scores.set_strategy(store, user["id"], project_id,
                            None if name == strategies.DEFAULT_STRATEGY else name,
                            strategies.STRATEGIES)
    except MedloopError as exc:
        _flash("error", str(exc))
        return
    _flash("success", f"review order: {strategies.LABELS[name]}; the queue is being "
                      "re-ordered (a score job: see the Jobs page)")


def _strategy_label(name: str) -> str:
    return strategies.LABELS.get(name, name) + (
        " · default" if name == strategies.DEFAULT_STRATEGY else "")


def _without_prefix(reason: str, prefix: str = "champion kept:") -> str:
    return reason[len(prefix):].strip() if reason.lower().startswith(prefix) else reason


def _model_jobs(s, project_id: int) -> list[Job]:  # noqa: ANN001
    """The project's queued or running training and evaluation jobs."""
    return [j for j in (active_job(s, project_id, kind) for kind in ("train", "evaluate"))
            if j is not None]


def _model_job_progress(project_id: int, seen: list[int]) -> None:
    """Polled while a model job is active; once one ends (a new version, or a decision),
    the whole page is drawn again."""
    with store.session() as s:
        jobs = _model_jobs(s, project_id)
    if [j.id for j in jobs] != seen:
        st.rerun()
    for job in jobs:
        text = (f"{job.kind.capitalize()} job #{job.id} is {job.status.value}"
                + (f": {job.message}" if job.message else "") + " · see the Jobs page")
        if job.status == JobStatus.running:
            st.progress(int(job.progress), text=text)
        else:
            st.info(text, icon=":material/schedule:")


def _pending(holdout: dict | None) -> str:
    """Why a version has no promotion decision (yet)."""
    if not holdout:
        return "waiting for its holdout evaluation"
    if not holdout.get("cases"):
        return ("not judged: no holdout item has a reference mask (label some "
                "holdout items, then evaluate again)")
    return ""


def _choice(v: ModelVersion) -> str:
    """A version as the promotion picker lists it: the figures the bar judges on (a mean
    Dice over mostly empty slices looks good whatever the model does)."""
    metrics = v.metrics or {}
    holdout = metrics.get("holdout") or {}
    where = [d for d in (holdout.get("dice_where_present") or {}).values() if d is not None]
    vs_empty = (metrics.get("decision") or {}).get("delta_vs_empty")
    figures = [v.status]
    if (mean := holdout.get("mean_dice")) is not None:
        figures.append(f"Dice {mean:.3f}")
    if where:
        figures.append(f"lowest class Dice {min(where):.2f} on slices with it")
    if vs_empty is not None:
        figures.append(f"{vs_empty:+.3f} vs proposing nothing")
    return f"{v.name} ({', '.join(figures)})"


def _table(versions: list[ModelVersion], classes: list[dict]) -> pd.DataFrame:
    names = {v.id: v.name for v in versions}
    rows = []
    for v in reversed(versions):  # newest first
        metrics = v.metrics or {}
        train, holdout = metrics.get("train", {}), metrics.get("holdout", {})
        decision, config = metrics.get("decision", {}), v.config or {}
        # What a curator compares first comes first: the table scrolls sideways.
        row = {"version": v.name, "status": STATUS_LABEL.get(v.status, v.status),
               "train items": train.get("items"), "mean Dice": holdout.get("mean_dice")}
        for c in classes:
            row[f"Dice {c['name']}"] = (holdout.get("dice") or {}).get(str(c["value"]))
            row[f"Dice {c['name']} (slices with it)"] = \
                (holdout.get("dice_where_present") or {}).get(str(c["value"]))
        for c in classes:
            row[f"HD95 {c['name']} (mm)"] = (holdout.get("hd95") or {}).get(str(c["value"]))
        row |= {
            "Δ Dice vs champion": decision.get("mean_delta"),
            "decision": decision.get("reason") or _pending(holdout),
            "holdout cases": holdout.get("cases"),
            "synthetic": train.get("synthetic_items"),
            "model": " · ".join(str(x) for x in (
                config.get("architecture"),
                f"{config['epochs']} epochs" if config.get("epochs") else None,
                f"{config['image_size']} px" if config.get("image_size") else None) if x),
            "parent": names.get(v.parent_id, ""),
            "created": v.created_at,
        }
        rows.append(row)
    return pd.DataFrame(rows)


def _chart(versions: list[ModelVersion]) -> alt.Chart | None:
    points = [{"version": v.name, "order": v.id, "status": v.status,
               "mean Dice": (v.metrics or {}).get("holdout", {}).get("mean_dice")}
              for v in versions]
    points = [p for p in points if p["mean Dice"] is not None]
    if not points:
        return None
    data = pd.DataFrame(points)
    order = list(data.sort_values("order")["version"])
    base = alt.Chart(data).encode(
        x=alt.X("version:N", sort=order, title="model version",
                axis=alt.Axis(labelAngle=0)),
        y=alt.Y("mean Dice:Q", title="holdout mean Dice", scale=alt.Scale(zero=False),
                axis=alt.Axis(format=".2f")),
        tooltip=["version", "status", alt.Tooltip("mean Dice:Q", format=".3f")])
    return base.mark_line(color="#9aa0a6") + base.mark_point(filled=True, size=90).encode(
        color=alt.Color("status:N", scale=alt.Scale(
            domain=list(STATUS_LABEL), range=["#f9ab00", "#1a73e8", "#d93025", "#9aa0a6"])))


def _learning_curve(versions: list[ModelVersion]) -> pd.DataFrame:
    """One point per evaluated version: validated labels it was trained on, holdout Dice
    (mean, and the lowest class on the slices that hold it)."""
    rows = []
    for v in versions:
        metrics = v.metrics or {}
        labels_n = metrics.get("train", {}).get("items")
        holdout = metrics.get("holdout") or {}
        if labels_n is None or holdout.get("mean_dice") is None:
            continue
        rows.append({"version": v.name, "validated labels": int(labels_n),
                     "measure": "mean Dice", "Dice": holdout["mean_dice"]})
        where = [d for d in (holdout.get("dice_where_present") or {}).values()
                 if d is not None]
        if where:
            rows.append({"version": v.name, "validated labels": int(labels_n),
                         "measure": "lowest class Dice (slices with it)", "Dice": min(where)})
    return pd.DataFrame(rows, columns=["version", "validated labels", "measure", "Dice"])


def _curve_chart(curve: pd.DataFrame) -> alt.Chart:
    base = alt.Chart(curve).encode(
        x=alt.X("validated labels:Q", title="validated labels trained on",
                scale=alt.Scale(zero=True), axis=alt.Axis(format="d", tickMinStep=1)),
        y=alt.Y("Dice:Q", title="holdout Dice", scale=alt.Scale(domain=[0, 1])),
        color=alt.Color("measure:N", title=None, legend=alt.Legend(orient="bottom")),
        tooltip=["version", "measure", "validated labels", alt.Tooltip("Dice:Q", format=".3f")])
    return base.mark_line() + base.mark_point(filled=True, size=70)


st.title("Training")
with store.session() as s:  # a clinician gets the store's PermissionDenied, shown by app.py
    projects = queries.projects_for(s, user["id"], Role.curator)
if not projects:
    st.info("No projects yet. Create the demo with `medloop demo`, or import images with "
            "`medloop ingest PATH --project NAME --classes lesion:1`.")
    st.stop()

project = project_picker(store, user["id"], projects, "training_project")
with store.session() as s:
    settings = retraining.training_settings(project)
    new_labels = retraining.labels_since_training(s, project.id)
    versions = registry.versions(s, project.id)
    running = _model_jobs(s, project.id)
names = {v.id: v.name for v in versions}
champion = next((v for v in versions if v.status == registry.CHAMPION), None)
champion_dice = ((champion.metrics or {}).get("holdout", {}).get("mean_dice")
                 if champion else None)

cols = st.columns([2, 1, 1, 1.2])
cols[0].metric("Champion", champion.name if champion else "none yet")
cols[1].metric("Holdout mean Dice", f"{champion_dice:.3f}" if champion_dice is not None
               else "—")
cols[2].metric("Versions", len(versions))
with cols[3]:
    st.button("Retrain now", key="retrain", type="primary", icon=":material/model_training:",
              on_click=_retrain, args=(project.id,), width="stretch",
              help="Queue a training job on the validated train labels (one per project)")
k = int(settings["retrain_after_labels"])
st.caption(f"{new_labels} new validated labels since the last training "
           + (f"(retrain automatically at {k})" if k else "(automatic retraining is off)"))
_show_flash()
if running:
    st.fragment(_model_job_progress, run_every=2)(project.id, [j.id for j in running])

latest = versions[-1] if versions else None
if latest is not None and latest.status != registry.CHAMPION:
    decision = (latest.metrics or {}).get("decision", {})
    if decision.get("below_bar"):
        st.warning(f"**Not promoted: {latest.name} is not good enough to propose yet.** "
                   f"{_without_prefix(decision.get('reason', ''), 'kept as a candidate:')}. "
                   "It stays a candidate; a curator can still make it champion below.",
                   icon=":material/block:")
    elif decision and not decision.get("promoted"):
        st.warning(f"**Champion kept:** {latest.name} was not promoted: "
                   f"{_without_prefix(decision.get('reason', ''))}",
                   icon=":material/shield:")
    elif latest.status == registry.CANDIDATE:
        holdout = (latest.metrics or {}).get("holdout")
        (st.warning if holdout else st.info)(f"{latest.name}: {_pending(holdout)}",
                                             icon=":material/timer:")
elif latest is not None:
    reason = (latest.metrics or {}).get("decision", {}).get("reason")
    st.success(f"**{latest.name} is the champion**" + (f": {reason}" if reason else ""),
               icon=":material/trophy:")

st.subheader("Model versions")
if not versions:
    st.caption("No task model yet: validate some train labels, then Retrain now.")
else:
    table = _table(versions, project.label_classes)
    formats = {c: "{:.3f}" for c in table.columns if c.startswith("Dice ")}
    formats |= {c: "{:.1f}" for c in table.columns if c.startswith("HD95 ")}
    formats |= {"mean Dice": "{:.3f}", "Δ Dice vs champion": "{:+.3f}",
                "train items": "{:.0f}", "synthetic": "{:.0f}", "holdout cases": "{:.0f}",
                "created": lambda t: f"{t:%Y-%m-%d %H:%M}"}
    champion_label = STATUS_LABEL[registry.CHAMPION]
    styled = (table.style
              .apply(lambda row: ["background-color: #fff4cc; font-weight: 600"
                                  if row["status"] == champion_label else ""
                                  for _ in row], axis=1)
              .format(formats, na_rep="—"))
    st.dataframe(styled, hide_index=True, width="stretch", placeholder="—",
                 column_config={"decision": st.column_config.TextColumn(width="large")})
    chart = _chart(versions)
    if chart is not None:
        st.markdown("**Holdout mean Dice per version**")
        st.altair_chart(chart.properties(height=240), width="stretch")

    st.subheader("Learning curve")
    curve = _learning_curve(versions)
    if curve.empty:
        st.caption("No evaluated version yet: the curve starts with the first holdout "
                   "evaluation.")
    else:
        st.caption("This project's own curve from real use: holdout Dice of each model "
                   "version against the validated labels it was trained on.")
        st.altair_chart(_curve_chart(curve).properties(height=240), width="stretch")

    st.subheader("Promote or roll back")
    others = [v for v in reversed(versions) if v.status != registry.CHAMPION]
    if not others:
        st.caption("The champion is the only version.")
    else:
        labels = {v.id: _choice(v) for v in others}
        c1, c2, c3 = st.columns([2, 2, 1], vertical_alignment="bottom")
        c1.selectbox("Version", list(labels), format_func=labels.get,
                     key=f"promote-{project.id}")
        c2.text_input("Reason (optional)", key=f"why-{project.id}",
                      placeholder="e.g. the new champion misses small lesions")
        c3.button("Make champion", key="make-champion", on_click=_set_champion,
                  args=(project.id, names), width="stretch")

st.subheader("Review order")
current = project.strategy or strategies.DEFAULT_STRATEGY
st.selectbox("Which item a clinician is asked next", list(strategies.STRATEGIES),
             index=list(strategies.STRATEGIES).index(current)
             if current in strategies.STRATEGIES else 0,
             format_func=_strategy_label, key=f"strategy-{project.id}",
             on_change=_set_strategy, args=(project.id,))
st.caption(f"The default, {strategies.LABELS[strategies.DEFAULT_STRATEGY]!r}, was chosen by "
           "`medloop bench al` (the largest area under the learning curve relative to "
           "full-data Dice, over lesion and tissue slices, against random). Before the first "
           "task model the queue is ordered by the cold start on the foundation model's "
           "image embeddings.")
with store.session() as s:
    scoring = active_job(s, project.id, "score")
if scoring is not None:
    st.caption(f"Score job #{scoring.id} is {scoring.status.value}"
               + (f": {scoring.message}" if scoring.message else ""))

with st.expander("Training settings"):
    with st.form(f"settings-{project.id}", border=False):
        c1, c2, c3 = st.columns(3)
        c1.number_input("Retrain after K new labels (0 = off)", min_value=0, step=1,
                        value=int(settings["retrain_after_labels"]),
                        key=f"setting-retrain_after_labels-{project.id}")
        c2.number_input("Promotion margin (mean Dice)", min_value=0.0, max_value=0.99,
                        step=0.005, format="%.3f", value=float(settings["promotion_margin"]),
                        key=f"setting-promotion_margin-{project.id}",
                        help="How much mean paired holdout Dice a challenger must gain")
        c3.number_input("Dice floor per class", min_value=0.0, max_value=1.0, step=0.05,
                        format="%.2f", value=float(settings["min_class_dice"]),
                        key=f"setting-min_class_dice-{project.id}",
                        help="Least holdout Dice, on the slices with the class, for a model "
                             "to serve; it must also beat proposing nothing")
        c1.number_input("Epochs", min_value=1, step=1, value=int(settings["epochs"]),
                        key=f"setting-epochs-{project.id}")
        c2.number_input("Image size (px)", min_value=64, max_value=1024, step=32,
                        value=int(settings["image_size"]),
                        key=f"setting-image_size-{project.id}")
        architecture = str(settings["architecture"])
        c3.selectbox("Architecture", ARCHITECTURES,
                     index=ARCHITECTURES.index(architecture)
                     if architecture in ARCHITECTURES else 0,
                     key=f"setting-architecture-{project.id}")
        c1.number_input("Synthetic weight", min_value=0.0, step=0.1, format="%.2f",
                        value=float(settings["synthetic_weight"]),
                        key=f"setting-synthetic_weight-{project.id}",
                        help="Sampling weight of synthetic items relative to real ones")
        st.form_submit_button("Save settings", key=f"save-settings-{project.id}",
                              on_click=_save_settings, args=(project.id,))
