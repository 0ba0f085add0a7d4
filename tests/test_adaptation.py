"""FM adaptation through the store: validated train labels in, a registered FM version out."""

from __future__ import annotations

import numpy as np
import pytest
from sqlmodel import select

from pipeline.bench.fm import dice
from pipeline.fm import load_litemedsam
from pipeline.fm.adaptation import adapt_foundation_model, load_fm_version
from pipeline.fm.proposals import item_embedding, propose_item
from pipeline.ingest.importer import ingest
from pipeline.task.training_set import validated_items
from store import labels, review
from store.errors import InvalidInput
from store.models import Item, ModelVersion, Split
from store.users import create_user
from tests_helpers import make_project_simple


@pytest.fixture(scope="module")
def fm():
    return load_litemedsam(device="cpu")


def test_adapted_decoder_is_registered_and_reloads(sqlite_store, radiomics, fm):
    store = sqlite_store
    project = make_project_simple(store, "brain")
    ingest(store, project, [radiomics / "brain1_image.nii.gz"],
           masks=[radiomics / "brain1_label.nii.gz"])
    with store.session(immediate=True) as s:
        uid = create_user(s, "ana", "clinician", "a long password", "admin").id
        items = s.exec(select(Item).order_by(Item.slice_index)).all()
        gts = {i.id: store.blobs.get_array(labels.ground_truth(s, i.id).mask_blob)
               for i in items}
    assert {i.split for i in items} == {Split.train}
    with pytest.raises(InvalidInput, match="no validated labels"):
        adapt_foundation_model(store, fm, project.id, epochs=1)
    lesion = [i for i in items if gts[i.id].any()][:3]
    for item in lesion:  # the FM proposes from the true mask; the clinician accepts
        prop = propose_item(store, fm, item, gts[item.id], [1], "task model")
        review.accept(store, uid, item.id, prop.id)
    assert [i.id for i, _ in validated_items(store, project.id)] == [i.id for i in lesion]

    progress = []
    mv = adapt_foundation_model(store, fm, project.id, epochs=2, actor="curator",
                                progress=lambda p, m: progress.append(p))
    assert progress[-1] == 100
    with store.session() as s:
        parent = s.get(ModelVersion, mv.parent_id)
    assert parent.name == fm.version and mv.name.startswith(fm.version + "+dec-")
    assert mv.metrics["train_dice_after"] > 0.5 and len(mv.metrics["losses"]) == 2
    assert mv.config["embedding_version"] == fm.embedding_version

    adapted = load_fm_version(store, mv.id)
    assert adapted.version == mv.name
    # Decoder-only: the cached embeddings of the base model are used as they are.
    emb = item_embedding(store, adapted, lesion[0])
    rows, cols = np.nonzero(gts[lesion[0].id])
    seg = adapted.segment(emb, boxes=np.array([[cols.min() - 2, rows.min() - 2,
                                                 cols.max() + 2, rows.max() + 2]]))
    assert dice(seg.masks[0], gts[lesion[0].id] == 1) > 0.7
