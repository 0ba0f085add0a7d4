"""Proposals through the store: cached embeddings, prompts from coarse masks and clinicians,
proposal label versions authored by the FM version, batch proposals."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from sqlmodel import select

from pipeline.bench.fm import dice
from pipeline.fm import load_litemedsam
from pipeline.fm.proposals import (
    item_embedding,
    propose_batch,
    propose_from_prompts,
    propose_item,
    refine,
)
from pipeline.ingest.importer import ingest
from store import labels
from store.errors import InvalidInput
from store.models import AuditEvent, Item, ItemEmbedding, Label, LabelKind, ModelVersion, Project
from tests_helpers import make_project_simple


@pytest.fixture(scope="module")
def fm():
    return load_litemedsam(device="cpu")


class CountingEmbeds:
    """The real FM, counting how often it runs its encoder (a spy, not a stand-in)."""

    def __init__(self, fm):
        self._fm, self.calls = fm, 0

    def __getattr__(self, name):
        return getattr(self._fm, name)

    def embed(self, image, modality):
        self.calls += 1
        return self._fm.embed(image, modality)


def _brain1(store, radiomics):
    project = make_project_simple(store, "brain")
    ingest(store, project, [radiomics / "brain1_image.nii.gz"],
           masks=[radiomics / "brain1_label.nii.gz"])
    with store.session() as s:
        items = s.exec(select(Item).order_by(Item.slice_index)).all()
        gts = {i.id: store.blobs.get_array(labels.ground_truth(s, i.id).mask_blob)
               for i in items}
    return project, items, gts


def test_proposal_from_a_coarse_mask_is_a_labelled_version(store, radiomics, fm):
    _, items, gts = _brain1(store, radiomics)
    item = max(items, key=lambda i: gts[i.id].sum())
    label = propose_item(store, fm, item, gts[item.id], [1], source="task model")
    assert dice(store.blobs.get_array(label.mask_blob) == 1, gts[item.id] == 1) >= 0.8
    with store.session() as s:
        mv = s.get(ModelVersion, label.author_model_id)
        assert (mv.family, mv.name) == ("fm", fm.version)
        assert label.kind == LabelKind.proposal and label.parent_id is None
        assert 0 < label.predicted_iou <= 1
        event = s.exec(select(AuditEvent).where(AuditEvent.action == "label.propose")).one()
        assert event.entity_id == label.id and "1 box" in event.details["prompts"]
    # A second proposal stacks on the first: history, never an overwrite.
    again = propose_item(store, fm, item, gts[item.id], [1], source="task model")
    assert again.parent_id == label.id


def test_nothing_is_proposed_without_a_prompt(sqlite_store, radiomics, fm):
    _, items, gts = _brain1(sqlite_store, radiomics)
    empty = next(i for i in items if not gts[i.id].any())
    assert propose_item(sqlite_store, fm, items[0], None, [1], "task model") is None
    assert propose_item(sqlite_store, fm, empty, gts[empty.id], [1], "task model") is None
    with sqlite_store.session() as s:
        assert s.exec(select(Label).where(Label.kind == LabelKind.proposal)).all() == []
        assert s.exec(select(ItemEmbedding)).all() == []  # no prompt, no encoder run


def test_embeddings_are_cached_per_encoder_version(sqlite_store, radiomics, fm):
    _, items, gts = _brain1(sqlite_store, radiomics)
    item = max(items, key=lambda i: gts[i.id].sum())
    spy = CountingEmbeds(fm)
    first = item_embedding(sqlite_store, spy, item)
    assert first.features.dtype == np.float16
    box = [60, 60, 140, 140]
    for _ in range(3):
        refine(sqlite_store, spy, item, box)
    assert spy.calls == 1
    np.testing.assert_array_equal(item_embedding(sqlite_store, spy, item).features,
                                  first.features)
    # New weights, new version: the old embedding is not used.
    changed = copy.copy(fm)
    changed.version = fm.version + "-retrained"
    changed.embedding_version = changed.version
    spy2 = CountingEmbeds(changed)
    item_embedding(sqlite_store, spy2, item)
    assert spy2.calls == 1
    with sqlite_store.session() as s:
        versions = sorted(e.fm_version for e in s.exec(select(ItemEmbedding)).all())
    assert versions == sorted([fm.version, changed.version])


def test_clinician_box_and_clicks_make_a_proposal(sqlite_store, radiomics, fm):
    _, items, gts = _brain1(sqlite_store, radiomics)
    item = max(items, key=lambda i: gts[i.id].sum())
    rows, cols = np.nonzero(gts[item.id])
    box = [cols.min() - 2, rows.min() - 2, cols.max() + 2, rows.max() + 2]
    with pytest.raises(InvalidInput, match="needs a box first"):
        refine(sqlite_store, fm, item, None, points=[[cols.mean(), rows.mean()]],
               point_labels=[1])
    label = propose_from_prompts(sqlite_store, fm, item, 1, box)
    assert dice(sqlite_store.blobs.get_array(label.mask_blob) == 1, gts[item.id] == 1) >= 0.8
    with sqlite_store.session() as s:
        assert "clinician: box + 0 click(s)" in s.exec(
            select(AuditEvent.details).where(AuditEvent.action == "label.propose")).one()[
            "prompts"]


def test_multi_class_proposals_on_the_demo_brain(sqlite_store, fm):
    from pipeline.demo import BRAIN_PROJECT, create_demo

    create_demo(sqlite_store)
    with sqlite_store.session() as s:
        item = s.exec(select(Item).join(Project).where(Project.name == BRAIN_PROJECT)
                      .order_by(Item.slice_index).offset(30)).first()
        gt = sqlite_store.blobs.get_array(labels.ground_truth(s, item.id).mask_blob)
    label = propose_item(sqlite_store, fm, item, gt, [1, 2], "task model")
    proposal = sqlite_store.blobs.get_array(label.mask_blob)
    assert set(np.unique(proposal)) == {0, 1, 2}


def test_batch_proposals_go_on_past_a_bad_item(sqlite_store, radiomics, fm):
    _, items, gts = _brain1(sqlite_store, radiomics)
    lesion = [i for i in items if gts[i.id].any()][:3]
    empty = [i for i in items if not gts[i.id].any()][:2]

    def coarse(item):
        if item.id == empty[1].id:
            return np.zeros((3, 3), np.uint8) + 1  # wrong shape: reported, not fatal
        return gts[item.id]

    seen = []
    result = propose_batch(sqlite_store, fm, [i.id for i in lesion + empty], coarse,
                           "task model", progress=lambda d, t, m: seen.append((d, t)))
    assert (result.proposed, result.skipped, result.failed) == (3, 1, 1)
    assert "shape (3, 3)" in result.errors[0]
    assert seen[0] == (0, 5) and seen[-1] == (5, 5)
