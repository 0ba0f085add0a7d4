"""Propagation in Chromium (issue 10): a clinician accepts a slice of a volume; the worker
follows it with the FM, and the next slice opens with its propagated proposal and says
where that came from."""

from __future__ import annotations

import pytest
from sqlmodel import select
from test_propagate_job import phantom_volume_project

from browser import (
    ARTIFACTS,
    choose,
    chromium_page,
    require_browser,
    sign_in,
    streamlit_app,
    wait_idle,
)
from loop_helpers import worker_process
from pipeline.fm import load_foundation_model
from pipeline.fm.proposals import item_embedding, propose_item
from store import labels
from store.models import Item


@pytest.mark.browser
def test_after_an_accept_the_next_slice_shows_its_propagated_proposal(sqlite_store, tmp_path):
    require_browser()
    fm = load_foundation_model()
    store = sqlite_store
    _, clin, _, by_slice, truth, start = phantom_volume_project(store, tmp_path)
    seed = by_slice[start]
    with store.session(immediate=True) as s:  # the largest lesion slice first in the queue
        item = s.get(Item, seed.id)
        item.priority = 10.0
        s.add(item)
    propose_item(store, fm, seed, truth[start], [1], "reference box", actor="test")
    for item in by_slice.values():  # cached, as the review page leaves them: the job decodes
        item_embedding(store, fm, item)

    with worker_process("--poll", "0.1", env={"MEDLOOP_WORKER_NICE": "0"}), \
            streamlit_app(log=tmp_path / "streamlit.log") as url, chromium_page() as page:
        try:
            sign_in(page, url, "clara", "a long password")
            choose(page, "Project", "phantom")
            page.get_by_role("heading", name=f"Item {seed.id}", exact=True).wait_for(
                timeout=90_000)
            page.get_by_text("Proposal by").wait_for()
            wait_idle(page)
            page.get_by_role("button", name="Accept", exact=True).click()
            page.get_by_text("Propagated by").wait_for(timeout=60_000)
            with store.session() as s:
                shown = s.exec(select(Item).where(Item.leased_by == clin)).one()
                head = labels.head(s, shown.id)
            page.get_by_role("heading", name=f"Item {shown.id}", exact=True).wait_for()
            page.get_by_text(f"from slice {start} (validated by clara)").wait_for()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "propagate.png"), full_page=True)
        except Exception:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "propagate-failure.png"), full_page=True)
            raise
    assert abs(shown.slice_index - start) == 1  # the neighbour of the accepted slice
    with store.session() as s:
        accepted = labels.head(s, seed.id)
    assert head.source_label_id == accepted.id and head.author == fm.version
