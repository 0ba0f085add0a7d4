"""The review page in headless Chromium against `streamlit run`: a clinician accepts one
item, corrects another by drawing a box that the FM refines, rejects a third; the store
then holds those label versions, authors and audit events."""

from __future__ import annotations

import numpy as np
import pytest
from sqlmodel import select

from browser import (
    ARTIFACTS,
    canvas_box,
    choose,
    chromium_page,
    drag,
    require_browser,
    sign_in,
    streamlit_app,
    wait_background_change,
    wait_idle,
)
from pipeline.demo import BRAIN_PROJECT
from pipeline.fm import load_foundation_model
from pipeline.fm.proposals import refine
from pipeline.review_view import Screen
from review_helpers import brain_items, demo_with_proposals
from store import labels
from store.models import AuditEvent, Label, LabelKind


def _item_heading(page, item_id: int):
    return page.get_by_role("heading", name=f"Item {item_id}", exact=True)


@pytest.mark.browser
def test_clinician_accepts_corrects_and_rejects_in_chromium(sqlite_store, tmp_path):
    require_browser()
    fm = load_foundation_model()
    demo = demo_with_proposals(sqlite_store, fm, with_fm=2)  # FM proposals + embeddings
    items = brain_items(sqlite_store)
    first, second, third = (i.id for i in items[:3])
    with sqlite_store.session() as s:
        gt = sqlite_store.blobs.get_array(labels.ground_truth(s, second).mask_blob)
    # A box around the white matter of the second item, in image pixels, then on screen.
    rows, cols = np.nonzero(gt == 2)
    box_img = (cols.min() - 2, rows.min() - 2, cols.max() + 3, rows.max() + 3)
    screen = Screen.fit(items[1].shape[:2])
    x0, y0 = screen.to_screen(box_img[0], box_img[1])
    x1, y1 = screen.to_screen(box_img[2], box_img[3])

    with streamlit_app(log=tmp_path / "streamlit.log") as url, chromium_page() as page:
        try:
            sign_in(page, url, "clinician", demo.passwords["clinician"])
            # Nothing is opened (or leased) until the clinician picks the project.
            page.get_by_text("Choose the project you want to review").wait_for()
            choose(page, "Project", BRAIN_PROJECT)
            _item_heading(page, first).wait_for(timeout=90_000)
            shown = wait_background_change(page, None)
            wait_idle(page)
            page.get_by_text("Proposal by").wait_for()
            page.get_by_role("button", name="Accept", exact=True).click()

            _item_heading(page, second).wait_for(timeout=30_000)
            shown = wait_background_change(page, shown)
            wait_idle(page)
            choose(page, "Class", "white matter")
            page.get_by_text("the FM outlines it as white matter").wait_for()
            wait_idle(page)
            drag(page, canvas_box(page), (x0, y0), (x1, y1))
            page.get_by_text("Your correction:").wait_for(timeout=30_000)
            wait_background_change(page, shown)  # the refined mask, drawn in place
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "review.png"), full_page=True)
            page.get_by_role("button", name="Save correction").click()

            _item_heading(page, third).wait_for(timeout=30_000)
            shown = wait_background_change(page, shown)
            wait_idle(page)
            page.locator("[data-testid='stExpander'] summary").click()
            choose(page, "Reason", "ambiguous")
            page.get_by_role("textbox", name="Note (optional)").fill("two tissues blur here")
            page.get_by_role("textbox", name="Note (optional)").press("Enter")
            page.get_by_role("button", name="Reject", exact=True).click()
            _item_heading(page, items[3].id).wait_for(timeout=30_000)
            assert wait_background_change(page, shown) != shown  # the fourth item's picture
        except Exception:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "review-failure.png"), full_page=True)
            raise

    with sqlite_store.session() as s:
        def versions(item_id):
            return s.exec(select(Label).where(Label.item_id == item_id,
                                              Label.kind != LabelKind.ground_truth)
                          .order_by(Label.id)).all()

        proposal, accepted = versions(first)
        assert proposal.kind == LabelKind.proposal and proposal.author == fm.version
        assert (accepted.kind, accepted.author, accepted.parent_id, accepted.mask_blob) == (
            LabelKind.accepted, "clinician", proposal.id, proposal.mask_blob)

        proposal, corrected = versions(second)
        assert (corrected.kind, corrected.author, corrected.parent_id) == (
            LabelKind.corrected, "clinician", proposal.id)
        assert corrected.seconds_spent > 0 and corrected.interactions >= 1
        assert 0.0 < corrected.dice_vs_parent < 1.0
        mask = sqlite_store.blobs.get_array(corrected.mask_blob)
        assert mask.shape == gt.shape and set(np.unique(mask)) <= {0, 1, 2}
        # The white matter is the FM's mask for the box drawn on screen, scaled back to
        # image pixels: the same as the FM gives for the box in image pixels here.
        expected = refine(sqlite_store, fm, items[1], box_img).masks[0]
        wm = mask == 2
        agree = 2.0 * (wm & expected).sum() / (wm.sum() + expected.sum())
        assert agree > 0.95, f"Dice {agree:.3f} between the saved and the expected FM mask"

        proposal, rejected = versions(third)
        assert (rejected.kind, rejected.author, rejected.parent_id, rejected.reason) == (
            LabelKind.rejected, "clinician", proposal.id, "ambiguous: two tissues blur here")

        events = s.exec(select(AuditEvent).where(AuditEvent.actor == "clinician",
                                                 AuditEvent.action.like("label.%"))
                        .order_by(AuditEvent.id)).all()
        assert [(e.action, e.details["item_id"]) for e in events] == [
            ("label.accept", first), ("label.correct", second), ("label.reject", third)]


@pytest.mark.browser
def test_box_replaces_a_wrong_proposal_and_clear_and_no_finding_take_one_click(sqlite_store,
                                                                              tmp_path):
    """Seen in the walk-through: a box added to a wrong proposal, and blanking a slice took
    14 eraser strokes. Now: a box replaces its class's proposal; "Clear" and "No finding"
    are one click each."""
    require_browser()
    fm = load_foundation_model()
    demo = demo_with_proposals(sqlite_store, fm, with_fm=1)
    items = brain_items(sqlite_store)
    first, second, third = items[:3]
    with sqlite_store.session() as s:
        proposal = sqlite_store.blobs.get_array(labels.head(s, first.id).mask_blob)
    # A box over the upper half of the white matter: the proposal's lower half must go.
    rows, cols = np.nonzero(proposal == 2)
    mid = int(np.median(rows))
    box_img = (cols.min() - 2, rows.min() - 2, cols.max() + 3, mid)
    screen = Screen.fit(first.shape[:2])
    x0, y0 = screen.to_screen(box_img[0], box_img[1])
    x1, y1 = screen.to_screen(box_img[2], box_img[3])
    with streamlit_app(log=tmp_path / "streamlit.log") as url, chromium_page() as page:
        try:
            sign_in(page, url, "clinician", demo.passwords["clinician"])
            choose(page, "Project", BRAIN_PROJECT)
            _item_heading(page, first.id).wait_for(timeout=90_000)
            shown = wait_background_change(page, None)
            wait_idle(page)
            choose(page, "Class", "white matter")
            wait_idle(page)
            drag(page, canvas_box(page), (x0, y0), (x1, y1))
            page.get_by_text("Your correction:").wait_for(timeout=30_000)
            shown = wait_background_change(page, shown)
            wait_idle(page)
            page.get_by_role("button", name="Save correction").click()

            _item_heading(page, second.id).wait_for(timeout=30_000)
            shown = wait_background_change(page, shown)
            wait_idle(page)
            page.get_by_role("button", name="Clear", exact=True).click()
            page.get_by_text("empty mask", exact=True).wait_for(timeout=30_000)
            wait_idle(page)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "review-cleared.png"), full_page=True)
            page.get_by_role("button", name="Save correction").click()

            _item_heading(page, third.id).wait_for(timeout=30_000)
            wait_background_change(page, shown)
            wait_idle(page)
            page.get_by_role("button", name="No finding").click()
            _item_heading(page, items[3].id).wait_for(timeout=30_000)
            page.get_by_text(f"Item {third.id}: no finding").wait_for(timeout=30_000)
        except Exception:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "review-failure.png"), full_page=True)
            raise

    with sqlite_store.session() as s:
        boxed, cleared, nothing = (labels.head(s, i.id) for i in (first, second, third))
    mask = sqlite_store.blobs.get_array(boxed.mask_blob)
    assert boxed.kind == LabelKind.corrected
    wm_rows = np.nonzero(mask == 2)[0]
    assert wm_rows.size and wm_rows.max() <= box_img[3] + 1  # nothing left below the box
    assert ((mask == 1) == (proposal == 1)).mean() > 0.9  # grey matter as proposed
    assert cleared.kind == LabelKind.corrected
    assert not sqlite_store.blobs.get_array(cleared.mask_blob).any()
    assert (nothing.kind, nothing.reason) == (LabelKind.corrected, "no finding")
    assert not sqlite_store.blobs.get_array(nothing.mask_blob).any()
