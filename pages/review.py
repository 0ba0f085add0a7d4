"""Review: the clinician's queue. One leased item at a time with its proposal; accept,
correct (box + clicks refined by the FM, brush, eraser, undo), reject or skip."""

from __future__ import annotations

import time

import numpy as np
import streamlit as st

if not st.session_state.get("check_session", lambda: False)():
    # Every run checks the server-side session, also when Streamlit runs this file without
    # app.py (it serves pages/ files by URL until the entry script declares its navigation).
    st.session_state["wanted_page"] = "pages/review.py"
    st.switch_page("app.py")
from sqlmodel import select

from pages._ui import project_picker
from pipeline import review_view as rv
from pipeline.fm import proposals
from store import labels, queries, review, scores
from store.errors import MedloopError, StaleEdit
from store.models import Item, Label, ModelVersion, Project

TOOLS = {"Box": "rect", "+ Click": "point", "− Click": "point", "Brush": "freedraw",
         "Eraser": "freedraw"}
FM_TOOLS = ("Box", "+ Click", "− Click")  # need a foundation model

store = st.session_state["store"]
user = st.session_state["user"]
fm = st.session_state.get("fm")


# --------------------------------------------------------------------------- cached renders


@st.cache_data(max_entries=256, show_spinner=False)
def _array(_store, sha: str) -> np.ndarray:
    return _store.blobs.get_array(sha)  # content-addressed: the sha is the whole key


@st.cache_data(max_entries=64, show_spinner=False)
def _picture(_store, image_sha: str, mask: np.ndarray | None, classes: tuple,
             window: tuple[float, float], opacity: float, shape: tuple[int, int]) -> bytes:
    screen = rv.Screen.fit(shape)
    pic = rv.render(_array(_store, image_sha), mask, [dict(c) for c in classes], window,
                    opacity, screen)
    return rv.png_bytes(pic)


@st.cache_data(max_entries=128, show_spinner=False)
def _context(_store, image_sha: str, window: tuple[float, float]) -> np.ndarray:
    return np.asarray(rv.context_picture(_array(_store, image_sha), window))


# --------------------------------------------------------------------------- item state


def _open_next(project: Project) -> dict | None:
    """Lease the next item for this clinician and start a fresh working state for it."""
    item = review.lease_next(store, user["id"], project.id)
    if item is None:
        return None
    # The neighbour of the slice just validated: its propagated proposal is seconds away.
    with st.spinner("The foundation model is proposing this slice from the one you "
                    "validated…"):
        head = rv.head_when_ready(store, item)
    return {"project_id": project.id, "item": item, "head": head,
            "seen_head_id": head.id if head else None, "base": None, "base_is_edit": False,
            "opened_at": time.time(), "interactions": 0, "seen_objects": 0, "rev": 0,
            "initial": {"objects": []}, "memo": {}, "stale": None, "error": None}


def _head_mask(state: dict) -> np.ndarray:
    head, item = state["head"], state["item"]
    if head is not None and head.mask_blob is not None:
        return _array(store, head.mask_blob)
    return np.zeros(tuple(item.shape[:2]), np.uint8)


def _canvas_key(state: dict) -> str:
    return f"canvas-{state['item'].id}-{state['rev']}"


def _drawing(state: dict) -> dict:
    """The canvas's current objects (kept by Streamlit under the canvas key), or the
    drawing it was opened with."""
    value = st.session_state.get(_canvas_key(state)) or {}
    raw = (value.get("drawing") or {}).get("raw") if isinstance(value, dict) else None
    return raw if raw is not None else state["initial"]


def _refiner(state: dict):
    if fm is None:
        return None
    item, memo = state["item"], state["memo"]

    def refine(box, points, point_labels):
        key = rv.rounded_key(box, points, point_labels)
        if key not in memo:
            seg = proposals.refine(store, fm, item, box, list(points) or None,
                                   list(point_labels) or None)
            memo[key] = (seg.masks[0], float(seg.iou[0]))
        return memo[key]
    return refine


def _working(state: dict, classes: list[dict]) -> tuple[rv.Applied, list]:
    """The clinician's label map now: base (proposal or kept edit) + canvas edits."""
    base = state["base"] if state["base"] is not None else _head_mask(state)
    edits = rv.parse_drawing(_drawing(state), rv.ToolColours.for_classes(classes))
    screen = rv.Screen.fit(state["item"].shape[:2])
    needs_box = fm is None or "box" in fm.trained_prompts
    return rv.apply_edits(base, edits, screen, _refiner(state), needs_box), edits


def _seconds(state: dict) -> float:
    return round(time.time() - state["opened_at"], 2)


def _done(message: str) -> None:
    st.session_state["review_flash"] = message
    st.session_state.pop("review_state", None)


def _failed(state: dict, exc: MedloopError) -> None:
    if isinstance(exc, StaleEdit):
        state["stale"] = str(exc)
    else:
        state["error"] = str(exc)


# --------------------------------------------------------------------------- actions
# Callbacks run before the script, so the next item is leased and drawn in the same run.


def _act(action, message: str) -> None:  # noqa: ANN001
    """Run one store action on the item in hand: on success the next item, else its message
    (a stale edit keeps the drawing for a reload)."""
    state = st.session_state["review_state"]
    try:
        action(state)
    except MedloopError as exc:
        _failed(state, exc)
    else:
        _done(message.format(item=state["item"].id))


def _accept() -> None:
    _act(lambda st_: review.accept(store, user["id"], st_["item"].id, st_["seen_head_id"],
                                   seconds=_seconds(st_), interactions=1),
         "Accepted item {item}")


def _save(classes: list[dict]) -> None:
    def save(state: dict) -> None:
        applied, _ = _working(state, classes)
        review.correct(store, user["id"], state["item"].id, state["seen_head_id"],
                       applied.mask, seconds=_seconds(state),
                       interactions=max(1, state["interactions"]))
    _act(save, "Saved your correction of item {item}")


def _reject() -> None:
    item_id = st.session_state["review_state"]["item"].id
    reason = st.session_state.get(f"reason-{item_id}")
    note = st.session_state.get(f"note-{item_id}") or ""
    _act(lambda st_: review.reject(store, user["id"], item_id, st_["seen_head_id"],
                                   reason or "", note, seconds=_seconds(st_),
                                   interactions=1 + st_["interactions"]),
         f"Rejected item {{item}} ({reason})")


def _no_finding() -> None:
    _act(lambda st_: review.no_finding(store, user["id"], st_["item"].id, st_["seen_head_id"],
                                       seconds=_seconds(st_),
                                       interactions=1 + st_["interactions"]),
         "Item {item}: no finding (saved as an empty label)")


def _skip() -> None:
    _act(lambda st_: review.skip(store, user["id"], st_["item"].id), "Skipped item {item}")


def _set_drawing(state: dict, objects: list) -> None:
    state["initial"] = {"objects": objects}
    state["rev"] += 1  # a new canvas key: the canvas opens with exactly these objects
    state["seen_objects"] = len(objects)


def _undo() -> None:
    state = st.session_state["review_state"]
    objects = list(_drawing(state).get("objects") or [])
    if objects:
        _set_drawing(state, objects[:-1])
        state["interactions"] += 1


def _reset() -> None:
    state = st.session_state["review_state"]
    _set_drawing(state, [])
    state["base"], state["base_is_edit"], state["cleared"] = None, False, False
    state["interactions"] += 1


def _clear() -> None:
    """Start from an empty mask (the proposal is set aside; Reset edits brings it back)."""
    state = st.session_state["review_state"]
    _set_drawing(state, [])
    state["base"] = np.zeros(tuple(state["item"].shape[:2]), np.uint8)
    state["base_is_edit"], state["cleared"] = True, True
    state["interactions"] += 1


def _reload(classes: list[dict]) -> None:
    """After a refused save: take the item's current head, keep the clinician's edit."""
    state = st.session_state["review_state"]
    try:
        applied, edits = _working(state, classes)
    except MedloopError as exc:
        state["error"] = str(exc)
        return
    with store.session() as s:
        head = labels.head(s, state["item"].id)
        item = s.get(Item, state["item"].id)
    if head is not None and head.kind in review.DONE_KINDS or \
            item.leased_by not in (None, user["id"]):
        _done(f"Item {item.id} was taken by someone else; your edit of it was not saved")
        return
    had_edit = bool(edits) or state["base_is_edit"]
    state.update(head=head, seen_head_id=head.id if head else None, stale=None, error=None)
    if had_edit:
        state["base"], state["base_is_edit"] = applied.mask, True
    else:
        state["base"] = None
    _set_drawing(state, [])


# --------------------------------------------------------------------------- page

with store.session() as s:
    projects = queries.projects(s)
if not projects:
    st.info("No projects yet: a curator creates one and imports images (Dataset page).")
    st.stop()

top = st.columns([3, 1, 1, 1])
# Nothing is leased until the clinician has chosen a project (here or on an earlier visit).
project = project_picker(store, user["id"], projects, "review_project", container=top[0],
                         require_choice=True)
if project is None:
    st.info("Choose the project you want to review: the first item opens as soon as you do.")
    with store.session() as s:
        waiting = {p.name: review.progress(s, user["id"], p.id).remaining for p in projects}
    st.markdown("\n".join(f"- **{name}**: {n} item(s) to review"
                           for name, n in waiting.items()))
    st.stop()
classes = list(project.label_classes)

state = st.session_state.get("review_state")
if state is None or state["project_id"] != project.id:
    state = _open_next(project)
    st.session_state["review_state"] = state
    if state is not None:  # what happened to the previous item, shown with this one
        state["flash"] = st.session_state.pop("review_flash", None)

with store.session() as s:
    prog = review.progress(s, user["id"], project.id)
top[1].metric("Done today", prog.done_today)
top[2].metric("Remaining", prog.remaining)
top[3].metric("Accept rate", "–" if prog.accept_rate is None else f"{prog.accept_rate:.0%}")

if state is None:
    st.success("Nothing left for you to review in this project. Thank you!")
    st.stop()

item: Item = state["item"]
head: Label | None = state["head"]
image = _array(store, item.blob)
screen = rv.Screen.fit(item.shape[:2])
class_names = [c["name"] for c in classes]
colours = rv.ToolColours.for_classes(classes)
left, side = st.columns([3, 2], gap="large")

# ---- tools, above the image (the image itself is drawn last: it needs every setting)
with left:
    tool_names = [t for t in TOOLS if fm is not None or t not in FM_TOOLS]
    t1, t2, t3 = st.columns([3, 2, 2])
    tool = t1.radio("Tool", tool_names, horizontal=True, key="review_tool")
    cls_name = t2.selectbox("Class", class_names, key=f"review_class-{project.id}") \
        if classes else None
    brush = t3.slider("Brush size", 2, 60, 14, key="review_brush")

# ---- the working mask: proposal (or kept edit) + what is drawn on the canvas
with st.spinner("Refining with the foundation model…"):
    try:
        applied, edits = _working(state, classes)
    except MedloopError as exc:
        st.error(str(exc))
        applied = rv.Applied(_head_mask(state), [], [])
        edits = []
objects = _drawing(state).get("objects") or []
if len(objects) != state["seen_objects"]:  # a canvas change (the canvas's own undo counts)
    state["interactions"] += abs(len(objects) - state["seen_objects"])
    state["seen_objects"] = len(objects)
has_edit = bool(edits) or state["base_is_edit"]
has_proposal = head is not None and head.mask_blob is not None

# ---- the side panel: what this is, what to do, how to show it
with side:
    where = f"slice {item.slice_index}" if item.slice_index is not None else "2D image"
    if state.get("flash"):
        st.caption(f"✓ {state['flash']}")
    st.subheader(f"Item {item.id}")
    st.caption(f"{item.modality} · {where} · {item.split.value} · "
               f"{item.shape[1]}×{item.shape[0]} px")
    # Why the queue serves this item now; a propagated proposal says so itself, below.
    if head is None or head.source_label_id is None:
        with store.session() as s:
            if why := scores.latest_reason(s, item.id):
                st.caption(f"Why now: {why}")
    if item.source.value == "synthetic":
        prov = item.provenance or {}
        settings = prov.get("settings") or {k: v for k, v in prov.items()
                                            if k not in ("generator", "condition_mask_blob")}
        st.warning(f"**SYNTHETIC image** · generated by {prov.get('generator', 'unknown')}"
                   + (f" · {', '.join(f'{k}={v}' for k, v in settings.items())}"
                      if settings else ""), icon="🧪")
    if has_proposal:
        iou = "–" if head.predicted_iou is None else f"{head.predicted_iou:.2f}"
        by = f"`{head.author}`"
        if head.prompt_model_id is not None:  # a task model's mask, refined by the FM
            with store.session() as s:
                prompt = s.get(ModelVersion, head.prompt_model_id)
            by = f"`{prompt.name if prompt else '?'}` refined by `{head.author}`"
        st.markdown(f"**Proposal** by {by} · predicted IoU **{iou}**")
        provenance = rv.proposal_provenance(store, head)
        if provenance:
            st.caption(f"↕ {provenance}")
    else:
        st.info("No proposal for this item yet: draw the mask (Correct) or reject it.")
    if fm is None:
        st.warning("No foundation model is loaded, so there are no new proposals and boxes "
                   "are not refined: accept, reject, or paint with the brush and eraser.")
    if classes:
        st.markdown(" &nbsp; ".join(
            f"<span style='color:{c['color']}'>■</span> {c['name']}" for c in classes),
            unsafe_allow_html=True)

    # What is on screen now, edits included.
    found = rv.mask_summary(applied.mask, classes)
    st.caption(" · ".join(f"{k}: {v} px" for k, v in found.items()) or "empty mask")
    if has_edit:
        boxes = sum(isinstance(e, rv.Box) for e in edits)
        clicks = sum(isinstance(e, rv.Click) for e in edits)
        strokes = sum(isinstance(e, rv.Paint) for e in edits)
        parts = [f"{boxes} box(es)" if boxes else "", f"{clicks} click(s)" if clicks else "",
                 f"{strokes} stroke(s)" if strokes else "",
                 ("cleared" if state.get("cleared") else "kept edit")
                 if state["base_is_edit"] else ""]
        refined = ", ".join(f"IoU {q:.2f}" for _, q in applied.refined)
        st.markdown("**Your correction:** " + ", ".join(p for p in parts if p)
                    + (f" · FM {refined}" if refined else ""))
    for note in applied.notes:
        st.caption(f"⚠️ {note}")

    if state["stale"]:
        st.error(state["stale"])
        st.button("Reload the item (keeps your edit)", key="review_reload", on_click=_reload,
                  args=(classes,))
    if state["error"]:
        st.error(state["error"])
        state["error"] = None

    # No tooltips on these: a tooltip hovering over the next button hid "Save correction".
    a1, a2, a3 = st.columns([2, 3, 2])
    a1.button("Accept", type="primary", key="review_accept", on_click=_accept,
              disabled=not has_proposal or has_edit, width="stretch")
    a2.button("Save correction", key="review_save", on_click=_save, args=(classes,),
              disabled=not has_edit, width="stretch",
              type="primary" if has_edit else "secondary")
    a3.button("Skip", key="review_skip", on_click=_skip, width="stretch")
    n1, n2 = st.columns(2)
    n1.button("No finding", key="review_no_finding", on_click=_no_finding, width="stretch",
              icon=":material/check_box_outline_blank:")
    n2.button("Clear", key="review_clear", on_click=_clear, width="stretch",
              icon=":material/ink_eraser:")
    u1, u2 = st.columns(2)
    u1.button("Undo", key="review_undo", on_click=_undo, disabled=not objects,
              width="stretch")
    u2.button("Reset edits", key="review_reset", on_click=_reset, disabled=not has_edit,
              width="stretch")
    st.caption("**Accept** the proposal as shown · **No finding**: nothing to segment here "
               "(saved as an empty label) · **Clear**: start from an empty mask · a **Box** "
               "replaces its class's proposal · **Reset edits**: back to the proposal"
               + ("" if has_proposal else " · no proposal yet: draw the mask, or reject"))

    with st.expander("Reject…"):
        st.selectbox("Reason", review.REJECT_REASONS, index=None, key=f"reason-{item.id}",
                     placeholder="Why is this item unusable?")
        st.text_input("Note (optional)", key=f"note-{item.id}")
        st.button("Reject", key="review_reject", on_click=_reject,
                  disabled=not st.session_state.get(f"reason-{item.id}"))

    # Window / level: presets (CT in HU) set the slider; the slider fine-tunes. The preset
    # is remembered per modality; the slider per item.
    presets = rv.window_presets(item.modality, image)
    preset_key = f"review_preset-{item.modality.upper()}"
    if st.session_state.get(preset_key) not in presets:
        st.session_state[preset_key] = rv.default_preset(item.modality)
    win_key = f"window-{item.id}"
    lo, hi = rv.slider_range(image, presets)
    if win_key not in st.session_state:
        a, b = presets[st.session_state[preset_key]]
        st.session_state[win_key] = (max(lo, a), min(hi, b))

    def _preset_changed(key: str, presets: dict) -> None:
        a, b = presets[st.session_state[preset_key]]
        st.session_state[key] = (max(lo, a), min(hi, b))

    d1, d2 = st.columns([2, 3])
    d1.selectbox("Window", list(presets), key=preset_key, on_change=_preset_changed,
                 args=(win_key, presets), format_func=lambda n: n.replace("_", " "))
    window = d2.slider("Window (low, high)", lo, hi, step=max((hi - lo) / 500.0, 1e-3),
                       key=win_key)
    window = (float(window[0]), float(window[1]))
    opacity = st.slider("Mask opacity", 0.0, 1.0, 0.35, 0.05, key="review_opacity")

    if item.volume_id is not None and item.slice_index is not None:
        with store.session() as s:
            near = {i.slice_index: i for i in s.exec(select(Item).where(
                Item.volume_id == item.volume_id,
                Item.slice_index.in_([item.slice_index - 1, item.slice_index + 1]))).all()}
        if near:
            c1, c2 = st.columns(2)
            for col, k, label in ((c1, item.slice_index - 1, "previous"),
                                  (c2, item.slice_index + 1, "next")):
                if k in near:
                    col.image(_context(store, near[k].blob, window),
                              caption=f"{label} slice ({k})")

# ---- the image with the working mask, on the drawing canvas
png = _picture(store, item.blob, applied.mask if np.any(applied.mask) else None,
               tuple(tuple(sorted(c.items())) for c in classes), window, float(opacity),
               tuple(item.shape[:2]))
with left:
    from streamlit_drawable_canvas import st_canvas  # only importable under a running app

    mode = TOOLS[tool]
    value = colours.by_value.get(int(classes[class_names.index(cls_name)]["value"])) \
        if cls_name else None
    stroke = {"+ Click": rv.POSITIVE, "− Click": rv.NEGATIVE, "Eraser": rv.ERASER}.get(
        tool, value or rv.ERASER)
    st.write("")  # room for the canvas's own floating toolbar (undo, redo, edit, clear)
    st_canvas(
        background_image=png, width=screen.width, height=screen.height, drawing_mode=mode,
        stroke_color=stroke, stroke_width=brush if mode == "freedraw" else 2,
        fill_color=stroke if mode == "point" else "rgba(0,0,0,0)", point_display_radius=3,
        initial_drawing=state["initial"], key=_canvas_key(state),
    )
    what = cls_name or "the class"
    st.caption({
        "Box": f"Drag a box around the structure: the FM outlines it as {what}.",
        "+ Click": "Click inside the structure to add it to the last box's mask.",
        "− Click": "Click where the last box's mask should not be.",
        "Brush": f"Paint {what}.",
        "Eraser": "Paint background (no class).",
    }[tool] + f" Image {item.shape[1]}×{item.shape[0]} px shown at {screen.width}×"
        f"{screen.height}.")
