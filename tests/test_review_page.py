"""The review page in AppTest on a real SQLite store: a signed-in clinician accepts, rejects
and skips demo items with proposals, and a stale accept is refused with the edit kept.

AppTest cannot drive the drawing canvas: correcting is tested in tests/test_review_browser.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import streamlit as st
from sqlmodel import select
from streamlit.testing.v1 import AppTest

from pipeline.demo import BRAIN_PROJECT
from review_helpers import TEST_FM, brain_items, demo_with_proposals
from store import labels
from store.models import AuditEvent, Job, Label, LabelKind, ReviewSkip, User
from store.registry import ensure_model_version

REPO = Path(__file__).resolve().parents[1]


def _sign_in(password: str, project: str | None = BRAIN_PROJECT) -> AppTest:
    """Signed in as the clinician; on the Review page with `project` chosen (if given and
    not already remembered)."""
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=120).run()
    assert not at.exception
    [name] = [t for t in at.text_input if t.label == "User name"]
    [pw] = [t for t in at.text_input if t.label == "Password"]
    name.input("clinician")
    pw.input(password)
    [sign_in] = [b for b in at.button if b.label == "Sign in"]
    sign_in.click().run()
    assert not at.exception, at.exception
    if project is not None and at.selectbox(key="review_project").value is None:
        at.selectbox(key="review_project").select(project).run()
        assert not at.exception, at.exception
    return at


def _shown_item(at: AppTest) -> int:
    [sub] = [h for h in at.subheader if h.value.startswith("Item ")]
    return int(sub.value.split()[1])


def _labels(store, item_id: int) -> list[Label]:
    with store.session() as s:
        return list(s.exec(select(Label).where(Label.item_id == item_id)
                           .order_by(Label.id)).all())


def _text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


@pytest.fixture
def signed_in(sqlite_store):
    demo = demo_with_proposals(sqlite_store)
    at = _sign_in(demo.passwords["clinician"])
    with sqlite_store.session() as s:
        clinician = s.exec(select(User).where(User.name == "clinician")).one()
    return at, clinician.id


def test_accept_reject_skip_each_write_the_store_and_show_the_next_item(sqlite_store,
                                                                        signed_in):
    at, clinician = signed_in
    items = [i.id for i in brain_items(sqlite_store)]
    assert _shown_item(at) == items[0]
    assert f"**Proposal** by `{TEST_FM}` · predicted IoU **0.80**" in _text(at)
    assert {m.label: m.value for m in at.metric} == {
        "Done today": "0", "Remaining": str(len(items)), "Accept rate": "–"}
    assert not at.button(key="review_accept").disabled
    assert at.button(key="review_save").disabled  # nothing drawn yet

    at.button(key="review_accept").click().run()
    assert not at.exception
    first = _labels(sqlite_store, items[0])
    accepted = first[-1]
    assert (accepted.kind, accepted.author, accepted.author_user_id) == (
        LabelKind.accepted, "clinician", clinician)
    assert accepted.parent_id == first[-2].id and first[-2].kind == LabelKind.proposal
    assert accepted.mask_blob == first[-2].mask_blob and accepted.seconds_spent > 0
    assert _shown_item(at) == items[1]

    at.selectbox(key=f"reason-{items[1]}").select("poor image quality").run()
    at.text_input(key=f"note-{items[1]}").input("motion blur").run()
    at.button(key="review_reject").click().run()
    assert not at.exception
    rejected = _labels(sqlite_store, items[1])[-1]
    assert (rejected.kind, rejected.author, rejected.reason, rejected.mask_blob) == (
        LabelKind.rejected, "clinician", "poor image quality: motion blur", None)
    assert _shown_item(at) == items[2]

    at.button(key="review_skip").click().run()
    assert not at.exception
    assert _labels(sqlite_store, items[2])[-1].kind == LabelKind.proposal  # no new version
    with sqlite_store.session() as s:
        assert s.exec(select(ReviewSkip).where(ReviewSkip.item_id == items[2])).one()
        actions = [e.action for e in s.exec(select(AuditEvent).where(
            AuditEvent.actor == "clinician").order_by(AuditEvent.id)).all()]
        # the accept of a volume slice queued its propagation (issue 10); nothing else the
        # clinician did queued a job (the demo's import queued its own score job)
        jobs = [(j.kind, j.payload.get("label_id")) for j in s.exec(
            select(Job).where(Job.created_by == "clinician")).all()]
    assert actions[-4:] == ["label.accept", "job.enqueue", "label.reject", "item.skip"]
    assert jobs == [("propagate", accepted.id)]
    assert _shown_item(at) == items[3]
    metrics = {m.label: m.value for m in at.metric}
    assert (metrics["Done today"], metrics["Accept rate"]) == ("2", "50%")
    assert metrics["Remaining"] == str(len(items) - 2)


def test_a_stale_accept_is_refused_and_writes_nothing(sqlite_store, signed_in):
    at, _ = signed_in
    item_id = _shown_item(at)
    # Between the render and the click a new proposal lands on the shown item.
    with sqlite_store.session(immediate=True) as s:
        mv = ensure_model_version(s, "fm", "test-fm-v2", "test")
        old = labels.head(s, item_id)
        newer = labels.record_proposal(s, item_id, old.mask_blob, mv.id, "test-fm-v2", 0.95,
                                       "worker", "test")
    at.button(key="review_accept").click().run()
    assert not at.exception
    assert any("changed since you opened it" in e.value for e in at.error)
    assert _labels(sqlite_store, item_id)[-1].id == newer.id  # nothing written
    assert _shown_item(at) == item_id  # still on screen

    at.button(key="review_reload").click().run()
    assert not at.exception and not at.error
    assert "**Proposal** by `test-fm-v2` · predicted IoU **0.95**" in _text(at)
    at.button(key="review_accept").click().run()
    accepted = _labels(sqlite_store, item_id)[-1]
    assert (accepted.kind, accepted.parent_id) == (LabelKind.accepted, newer.id)
    assert _shown_item(at) != item_id


def test_without_a_foundation_model_the_page_says_so_and_accept_still_works(
        sqlite_store, monkeypatch):
    monkeypatch.setenv("MEDLOOP_FM_KIND", "sam_vit_b")  # no checkpoint: no FM
    monkeypatch.delenv("MEDLOOP_FM_CHECKPOINT", raising=False)
    st.cache_resource.clear()
    try:
        demo = demo_with_proposals(sqlite_store)
        at = _sign_in(demo.passwords["clinician"])
        assert any("No foundation model is loaded" in w.value for w in at.warning)
        assert at.radio(key="review_tool").options == ["Brush", "Eraser"]
        item_id = _shown_item(at)
        at.button(key="review_accept").click().run()
        assert _labels(sqlite_store, item_id)[-1].kind == LabelKind.accepted
    finally:
        st.cache_resource.clear()  # the next test loads the real FM again


def _stroke(colour: str, y: float) -> dict:
    """A brush stroke across the canvas as streamlit-drawable-canvas reports it."""
    return {"type": "Path", "originX": "center", "originY": "center", "left": 220.0,
            "top": y, "width": 440.0, "height": 0.0, "scaleX": 1, "scaleY": 1,
            "strokeWidth": 20, "stroke": colour,
            "path": [["M", 0.0, y], ["L", 440.0, y]]}


def test_a_stale_save_keeps_the_edit_and_saves_it_after_reload(sqlite_store, signed_in):
    """AppTest cannot draw: the canvas's state is set as the browser would report it."""
    from pipeline.demo import TISSUE_CLASSES
    from pipeline.review_view import Screen, ToolColours

    at, _ = signed_in
    item_id = _shown_item(at)
    colour = ToolColours.for_classes(TISSUE_CLASSES).by_value[1]
    at.session_state[f"canvas-{item_id}-0"] = {"drawing": {"raw": {
        "objects": [_stroke(colour, 256.0)]}}}
    at.run()
    assert "**Your correction:** 1 stroke(s)" in _text(at)
    assert at.button(key="review_accept").disabled and not at.button(key="review_save").disabled

    with sqlite_store.session(immediate=True) as s:
        mv = ensure_model_version(s, "fm", "test-fm-v2", "test")
        old = labels.head(s, item_id)
        newer = labels.record_proposal(s, item_id, old.mask_blob, mv.id, "test-fm-v2", 0.95,
                                       "worker", "test")
    at.button(key="review_save").click().run()
    assert any("changed since you opened it" in e.value for e in at.error)
    assert _labels(sqlite_store, item_id)[-1].id == newer.id  # nothing written
    assert "**Your correction:** 1 stroke(s)" in _text(at)  # the edit is still on screen

    at.button(key="review_reload").click().run()
    assert "**Your correction:** kept edit" in _text(at)
    at.button(key="review_save").click().run()
    corrected = _labels(sqlite_store, item_id)[-1]
    assert (corrected.kind, corrected.parent_id) == (LabelKind.corrected, newer.id)
    mask = sqlite_store.blobs.get_array(corrected.mask_blob)
    row = int(256.0 * Screen.fit(mask.shape).sy)  # the stroke's row in image pixels
    assert (mask[row] == 1).all() and corrected.dice_vs_parent < 1.0
    assert corrected.interactions >= 1 and _shown_item(at) != item_id


def test_a_ct_item_without_proposal_offers_ct_windows_and_no_accept(sqlite_store, signed_in):
    from pipeline.demo import DICOM_PROJECT

    at, _ = signed_in
    at.selectbox(key="review_project").select(DICOM_PROJECT).run()
    assert not at.exception
    assert any("No proposal for this item yet" in i.value for i in at.info)
    accept = at.button(key="review_accept")
    assert accept.disabled and any("no proposal yet" in c.value for c in at.caption)
    # Both items (CT_small.dcm, MR_small.dcm) in the order the queue serves them (the cold
    # start's, issue 10): each offers its modality's windows.
    seen = []
    for _ in range(2):
        item_id = _shown_item(at)
        modality = "CT" if any(c.value.startswith("CT ·") for c in at.caption) else "MR"
        assert any(c.value.startswith(f"{modality} ·") for c in at.caption)
        seen.append(modality)
        window = at.selectbox(key=f"review_preset-{modality}")
        if modality == "CT":
            assert window.value == "soft_tissue"
            assert {"brain", "lung", "abdomen", "bone", "percentile"} <= set(window.options)
            window.select("lung").run()
            assert at.slider(key=f"window-{item_id}").value == pytest.approx((-1350, 150),
                                                                             abs=5)
        else:
            assert window.options == ["percentile"]
        at.button(key="review_skip").click().run()
        assert not at.exception
    assert sorted(seen) == ["CT", "MR"]


def test_a_synthetic_item_carries_a_badge_with_its_generator(sqlite_store):
    from store.models import Item, Source

    demo = demo_with_proposals(sqlite_store)
    first = brain_items(sqlite_store)[0]
    with sqlite_store.session(immediate=True) as s:
        item = s.get(Item, first.id)
        item.source = Source.synthetic
        item.provenance = {"generator": "ddpm-brain-v3",
                           "settings": {"sampler": "ddim", "steps": 50}}
        s.add(item)
    at = _sign_in(demo.passwords["clinician"])
    assert _shown_item(at) == first.id
    [badge] = [w.value for w in at.warning if "SYNTHETIC" in w.value]
    assert "ddpm-brain-v3" in badge and "sampler=ddim" in badge and "steps=50" in badge


def test_nothing_is_leased_until_a_project_is_chosen_and_the_choice_is_remembered(
        sqlite_store):
    from store.models import Item

    demo = demo_with_proposals(sqlite_store)
    at = _sign_in(demo.passwords["clinician"], project=None)
    assert at.selectbox(key="review_project").value is None
    assert any("Choose the project" in i.value for i in at.info)
    with sqlite_store.session() as s:
        assert s.exec(select(Item).where(Item.leased_by.is_not(None))).all() == []
    at.selectbox(key="review_project").select(BRAIN_PROJECT).run()
    first = _shown_item(at)
    with sqlite_store.session() as s:
        assert [i.id for i in s.exec(select(Item).where(Item.leased_by.is_not(None)))] == [
            first]
    # Next time (another browser, another day) the review page opens on that project.
    again = _sign_in(demo.passwords["clinician"], project=None)
    assert again.selectbox(key="review_project").value == BRAIN_PROJECT
    assert _shown_item(again) == first  # the clinician's own lease comes back first


def test_no_finding_saves_a_validated_empty_label_in_one_click(sqlite_store, signed_in):
    at, clinician = signed_in
    item_id = _shown_item(at)
    at.button(key="review_no_finding").click().run()
    assert not at.exception and _shown_item(at) != item_id
    versions = _labels(sqlite_store, item_id)
    saved = versions[-1]
    assert (saved.kind, saved.reason, saved.parent_id) == (
        LabelKind.corrected, "no finding", versions[-2].id)
    assert not sqlite_store.blobs.get_array(saved.mask_blob).any()
    assert saved.dice_vs_parent == 0.0  # the proposal had tissue in it
    with sqlite_store.session() as s:
        [event] = s.exec(select(AuditEvent).where(AuditEvent.action == "label.no_finding")).all()
    assert event.entity_id == saved.id and event.actor == "clinician"


def test_clear_starts_from_an_empty_mask_and_save_keeps_it_empty(sqlite_store, signed_in):
    at, _ = signed_in
    item_id = _shown_item(at)
    assert at.button(key="review_save").disabled
    at.button(key="review_clear").click().run()
    assert not at.button(key="review_save").disabled and at.button(key="review_accept").disabled
    assert any(c.value == "empty mask" for c in at.caption)  # the area follows the edit
    at.button(key="review_save").click().run()
    saved = _labels(sqlite_store, item_id)[-1]
    assert saved.kind == LabelKind.corrected
    assert not sqlite_store.blobs.get_array(saved.mask_blob).any()


def test_a_task_model_proposal_refined_by_the_fm_names_both(sqlite_store):
    demo = demo_with_proposals(sqlite_store)
    first = brain_items(sqlite_store)[0]
    with sqlite_store.session(immediate=True) as s:
        task = ensure_model_version(s, "task", "task-unet-j7", "test")
        fm = ensure_model_version(s, "fm", "litemedsam-test", "test")
        head = labels.head(s, first.id)
        labels.record_proposal(s, first.id, head.mask_blob, fm.id, "litemedsam-test", 0.9,
                               "worker", "task-unet-j7: 2 box(es)", prompt_model_id=task.id)
    at = _sign_in(demo.passwords["clinician"])
    assert _shown_item(at) == first.id
    assert "**Proposal** by `task-unet-j7` refined by `litemedsam-test`" in _text(at)
