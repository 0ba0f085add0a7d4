"""Adapting the real LiteMedSAM to validated labels of brain1: decoder fine-tuning on cached
embeddings, LoRA on the encoder's attention, the adapted model as a new version, bad input."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.fm import boxes_from_mask, load_litemedsam
from pipeline.fm.adapt import (
    AdaptSample,
    apply_adaptation,
    finetune,
    state_from_bytes,
    state_to_bytes,
)
from store.errors import InvalidInput

torch.set_num_threads(1)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "radiomics"
pytestmark = pytest.mark.skipif(
    not (DATA / "brain1_image.nii.gz").is_file(), reason=f"shared cases not found at {DATA}"
)


@pytest.fixture(scope="module")
def fm():
    return load_litemedsam(device="cpu")


@pytest.fixture(scope="module")
def lesion_slices() -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, label map) of every axial slice of brain1 with lesion (7 of them)."""
    import nibabel as nib

    from pipeline.imaging import cut_slice

    def volume(name: str) -> np.ndarray:
        return np.asanyarray(nib.as_closest_canonical(nib.load(DATA / name)).dataobj)

    image, label = volume("brain1_image.nii.gz"), volume("brain1_label.nii.gz")
    slices = [
        (cut_slice(image, 2, k), cut_slice(label, 2, k).astype(np.int64))
        for k in range(image.shape[2])
        if (label[:, :, k] > 0).any()
    ]
    assert len(slices) == 7
    return slices


@pytest.fixture(scope="module")
def samples(fm, lesion_slices) -> list[AdaptSample]:
    """Four lesion slices with cached embeddings, as the store would hand them over."""
    return [
        AdaptSample(image, "MR", label, embedding=fm.embed(image, "MR"))
        for image, label in lesion_slices[::2]
    ]


@pytest.fixture(scope="module")
def decoder_run(fm, samples):
    before = {k: v.clone() for k, v in fm.sam.state_dict().items()}
    reports: list[tuple[float, str]] = []
    result = finetune(
        fm, samples, method="decoder", epochs=5, lr=1e-4,
        progress=lambda pct, msg: reports.append((pct, msg)),
    )
    return result, before, reports


def test_decoder_finetune_learns_and_leaves_the_base_model_alone(fm, decoder_run):
    result, before, reports = decoder_run
    assert result.method == "decoder" and len(result.losses) == 5
    assert result.losses[-1] < result.losses[0]
    assert result.dice_after >= result.dice_before - 0.02
    assert result.config["n_samples"] == 4 and result.config["n_prompts"] >= 4
    assert result.config["base_version"] == fm.version and result.config["seed"] == 0
    assert all(k.startswith("mask_decoder.") for k in result.state)
    assert len(result.state) == len(fm.sam.mask_decoder.state_dict())

    percents = [pct for pct, _ in reports]
    assert percents == sorted(percents) and percents[-1] == 100.0
    assert sum("epoch" in msg for _, msg in reports) == 5

    after = fm.sam.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert any(
        not torch.equal(v, before[k]) for k, v in result.state.items()
    ), "training changed no decoder weight"


def test_adapted_decoder_is_a_new_version_that_reuses_base_embeddings(fm, samples, decoder_run):
    result, _, _ = decoder_run
    adapted = apply_adaptation(fm, result.state, "decoder")
    assert adapted is not fm and adapted.sam is not fm.sam
    assert adapted.version != fm.version and adapted.version.startswith(f"{fm.version}+dec-")
    assert adapted.embedding_version == fm.embedding_version == fm.version
    assert adapted.sam.image_encoder is fm.sam.image_encoder  # frozen: shared, not copied
    loaded = adapted.sam.mask_decoder.state_dict()
    assert all(torch.equal(loaded[k.removeprefix("mask_decoder.")], v)
               for k, v in result.state.items())

    sample = samples[1]
    box = np.array([[60, 60, 200, 200]])  # any box: the decoders must now disagree
    boxes = boxes_from_mask(sample.label_map, 1, margin_px=2)
    base = fm.segment(sample.embedding, boxes=boxes)
    tuned = adapted.segment(sample.embedding, boxes=boxes)  # the base's cached embedding
    assert tuned.masks.shape == base.masks.shape
    assert not np.allclose(tuned.low_res_logits, base.low_res_logits)
    assert (tuned.masks != base.masks).any()
    assert not np.allclose(
        adapted.segment(sample.embedding, boxes=box).low_res_logits,
        fm.segment(sample.embedding, boxes=box).low_res_logits,
    )
    # an embedding the adapted model computes is the base's, and serves both
    assert adapted.embed(sample.image, "MR").fm_version == fm.embedding_version


def test_state_round_trips_through_bytes(fm, decoder_run):
    result, _, _ = decoder_run
    data = state_to_bytes(result.state)
    restored = state_from_bytes(data)
    assert set(restored) == set(result.state)
    assert all(torch.equal(restored[k], v) for k, v in result.state.items())
    assert apply_adaptation(fm, restored, "decoder").version == (
        apply_adaptation(fm, result.state, "decoder").version
    )
    with pytest.raises(InvalidInput, match="not saved FM adaptation weights"):
        state_from_bytes(b"not a checkpoint")


def test_same_seed_same_weights_with_or_without_a_cached_embedding(fm, samples):
    cached = samples[2]
    fresh = AdaptSample(cached.image, cached.modality, cached.label_map)  # embeds itself
    stale = AdaptSample(cached.image, cached.modality, cached.label_map,  # another FM's
                        embedding=replace(cached.embedding, fm_version="sam_vit_b-0"))
    runs = [finetune(fm, [s], epochs=1, seed=3) for s in (cached, fresh, stale)]
    for other in runs[1:]:
        assert other.losses == runs[0].losses
        assert all(torch.equal(other.state[k], v) for k, v in runs[0].state.items())


def test_lora_trains_small_adapters_and_needs_new_embeddings(fm, lesion_slices):
    image, label = lesion_slices[3]
    encoder_before = {k: v.clone() for k, v in fm.sam.image_encoder.state_dict().items()}
    result = finetune(fm, [AdaptSample(image, "MR", label)], method="lora", epochs=1,
                      lr=1e-3, lora_rank=2)
    assert result.method == "lora" and len(result.losses) == 1
    assert result.config["lora_rank"] == 2
    encoder_keys = [k for k in result.state if k.startswith("image_encoder.")]
    assert encoder_keys and all(".lora_A." in k or ".lora_B." in k for k in encoder_keys)
    assert all(k.startswith("mask_decoder.") for k in set(result.state) - set(encoder_keys))
    lora_params = sum(result.state[k].numel() for k in encoder_keys)
    encoder_params = sum(p.numel() for p in fm.sam.image_encoder.parameters())
    assert lora_params < encoder_params / 100
    assert all(result.state[k].shape[0] == 2 for k in encoder_keys if ".lora_A." in k)

    # the base encoder got no LoRA layers and kept its weights
    assert not any("lora" in k for k in fm.sam.image_encoder.state_dict())
    after = fm.sam.image_encoder.state_dict()
    assert all(torch.equal(after[k], v) for k, v in encoder_before.items())

    adapted = apply_adaptation(fm, state_from_bytes(state_to_bytes(result.state)), "lora")
    assert adapted.version.startswith(f"{fm.version}+lora-")
    assert adapted.embedding_version == adapted.version != fm.embedding_version
    assert set(adapted.sam.state_dict()) == set(fm.sam.state_dict())  # LoRA merged away
    embedding = adapted.embed(image, "MR")
    assert embedding.fm_version == adapted.version
    assert not np.array_equal(embedding.features, fm.embed(image, "MR").features)
    seg = adapted.segment(embedding, boxes=boxes_from_mask(label, 1, margin_px=2))
    assert seg.masks.any()
    with pytest.raises(InvalidInput, match="embed the image again"):
        adapted.segment(fm.embed(image, "MR"), boxes=np.array([[10, 10, 50, 50]]))
    with pytest.raises(InvalidInput, match="not a 'decoder' adaptation"):
        apply_adaptation(fm, result.state, "decoder")


def test_bad_input_says_what_to_do(fm, lesion_slices, decoder_run):
    image, label = lesion_slices[0]
    with pytest.raises(InvalidInput, match="no validated labels"):
        finetune(fm, [])
    with pytest.raises(InvalidInput, match="nothing to learn from"):
        finetune(fm, [AdaptSample(image, "MR", np.zeros_like(label))])
    with pytest.raises(InvalidInput, match="unknown adaptation method 'full'"):
        finetune(fm, [AdaptSample(image, "MR", label)], method="full")
    with pytest.raises(InvalidInput, match="does not match image"):
        finetune(fm, [AdaptSample(image, "MR", label[:-1])])
    with pytest.raises(InvalidInput, match="unknown adaptation method"):
        apply_adaptation(fm, decoder_run[0].state, "full")
    with pytest.raises(InvalidInput, match="not a 'lora' adaptation"):
        apply_adaptation(fm, decoder_run[0].state, "lora")
    with pytest.raises(InvalidInput, match="holds no weights"):
        apply_adaptation(fm, {}, "decoder")
