"""The SAM adapter, checkpoint loader, model loader and weight download, exercised with a
tiny randomly initialised SAM built from segment_anything's own modules."""

from __future__ import annotations

import hashlib
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from pipeline.fm import embedding_from_bytes, embedding_to_bytes
from pipeline.fm.loader import clear_cache, load_foundation_model, try_load_foundation_model
from pipeline.fm.sam import load_sam
from pipeline.fm.weights import fetch_weights
from store.errors import InvalidInput, MedloopError, NotFound

torch.set_num_threads(1)

IMG = 64


def build_tiny_sam(out_chans: int = 32, embed_dim: int = 32, seed: int = 0) -> Sam:
    """A SAM with ViT-B's structure and toy sizes: 64 x 64 input, 4 x 4 embedding."""
    torch.manual_seed(seed)
    grid = IMG // 16
    encoder = ImageEncoderViT(
        img_size=IMG, patch_size=16, in_chans=3, embed_dim=embed_dim, depth=1, num_heads=2,
        mlp_ratio=2.0, out_chans=out_chans, qkv_bias=True,
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), act_layer=torch.nn.GELU,
        use_rel_pos=True, window_size=0, global_attn_indexes=(),
    )
    prompt = PromptEncoder(
        embed_dim=out_chans, image_embedding_size=(grid, grid), input_image_size=(IMG, IMG),
        mask_in_chans=4,
    )
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=TwoWayTransformer(depth=1, embedding_dim=out_chans, mlp_dim=64, num_heads=2),
        transformer_dim=out_chans, iou_head_depth=2, iou_head_hidden_dim=16,
    )
    return Sam(image_encoder=encoder, prompt_encoder=prompt, mask_decoder=decoder)


@pytest.fixture
def tiny_checkpoint(tmp_path) -> Path:
    path = tmp_path / "tiny_sam.pth"
    torch.save(build_tiny_sam().state_dict(), path)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_save_load_sha256_embed_segment(tiny_checkpoint):
    fm = load_sam("sam_vit_b", tiny_checkpoint, builder=build_tiny_sam, device="cpu")
    assert fm.checkpoint_sha256 == sha(tiny_checkpoint)
    assert fm.version == f"sam_vit_b-{sha(tiny_checkpoint)[:12]}"
    assert fm.input_size == IMG and fm.keep_aspect
    for name, tensor in build_tiny_sam().state_dict().items():
        torch.testing.assert_close(fm.sam.state_dict()[name], tensor)

    image = np.random.default_rng(0).normal(100, 20, (45, 120)).astype(np.float32)
    emb = fm.embed(image, "MR")
    assert emb.features.dtype == np.float16 and emb.features.shape == (32, 4, 4)
    assert emb.geometry.resized_shape == (24, 64) and emb.padding == (40, 0)
    boxes = np.array([[10, 5, 60, 30], [70, 10, 110, 40]])
    seg = fm.segment(emb, boxes=boxes)
    assert seg.masks.shape == (2, 45, 120) and seg.masks.dtype == bool
    assert seg.iou.shape == (2,) and seg.low_res_logits.shape == (2, 16, 16)

    # Same prompts through segment_anything's own SamPredictor on the same embedding.
    predictor = SamPredictor(fm.sam)
    predictor.original_size = (45, 120)
    predictor.input_size = emb.geometry.resized_shape
    predictor.features = torch.from_numpy(emb.features.astype(np.float32))[None]
    predictor.is_image_set = True
    for i, box in enumerate(boxes):
        masks, iou, low_res = predictor.predict(box=box, multimask_output=False)
        np.testing.assert_allclose(seg.low_res_logits[i], low_res[0], atol=1e-4)
        np.testing.assert_allclose(seg.iou[i], iou[0], atol=1e-5)
        assert (seg.masks[i] != masks[0]).mean() < 0.001
    point = np.array([[40.0, 20.0]])
    masks, iou, low_res = predictor.predict(
        point_coords=point, point_labels=np.array([1]), multimask_output=True
    )
    seg = fm.segment(emb, points=point, point_labels=[1], multimask=True)
    np.testing.assert_allclose(seg.iou[0], iou.max(), atol=1e-5)
    np.testing.assert_allclose(seg.low_res_logits[0], low_res[iou.argmax()], atol=1e-4)

    # a cached embedding decodes exactly like the fresh one
    cached = embedding_from_bytes(embedding_to_bytes(emb))
    again = fm.segment(cached, boxes=boxes[:1], points=point, point_labels=[0])
    fresh = fm.segment(emb, boxes=boxes[:1], points=point, point_labels=[0])
    np.testing.assert_array_equal(again.masks, fresh.masks)
    np.testing.assert_array_equal(again.iou, fresh.iou)


def test_prompt_shapes_and_refusals(tiny_checkpoint):
    fm = load_sam("sam_vit_b", tiny_checkpoint, builder=build_tiny_sam, device="cpu")
    emb = fm.embed(np.random.default_rng(1).random((50, 30)), "CT")
    with pytest.raises(InvalidInput, match="never invents"):
        fm.segment(emb)
    prior = np.zeros((50, 30), bool)
    prior[10:30, 5:20] = True
    seg = fm.segment(emb, prior_mask=prior)
    assert seg.masks.shape == (1, 50, 30)
    seg = fm.segment(emb, boxes=[[1, 1, 20, 20], [25, 30, 5, 40]], mask_logits=seg.low_res_logits)
    assert len(seg) == 2
    seg = fm.segment(emb, points=np.zeros((3, 2, 2)), point_labels=np.ones((3, 2)))
    assert len(seg) == 3
    seg = fm.segment(emb, boxes=[[1, 1, 20, 20]], points=np.zeros((3, 2, 2)))
    assert len(seg) == 3  # the one box applies to each click set
    empty = fm.segment(emb, boxes=np.zeros((0, 4)))
    assert empty.masks.shape == (0, 50, 30) and empty.iou.shape == (0,)
    with pytest.raises(InvalidInput, match="do not match"):
        fm.segment(emb, boxes=np.zeros((2, 4)), points=np.zeros((3, 1, 2)))
    with pytest.raises(InvalidInput, match="prior_mask"):
        fm.segment(emb, prior_mask=np.zeros((10, 10), bool))
    other = load_sam("medsam_vit_b", tiny_checkpoint, builder=build_tiny_sam, device="cpu")
    with pytest.raises(InvalidInput, match="embed the image again"):
        other.segment(emb, boxes=[[1, 1, 5, 5]])


def test_medsam_stretches_and_scales_to_unit_range(tiny_checkpoint):
    fm = load_sam("medsam_vit_b", tiny_checkpoint, builder=build_tiny_sam, device="cpu")
    assert fm.version.startswith("medsam_vit_b-") and not fm.keep_aspect
    assert fm.trained_prompts == {"box"}
    emb = fm.embed(np.random.default_rng(2).random((45, 120)), "MR")
    assert emb.geometry.resized_shape == (IMG, IMG) and emb.padding == (0, 0)
    x, _ = fm.model_input(np.random.default_rng(2).random((45, 120)), "MR")
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 + 1e-6
    seg = fm.segment(emb, boxes=[[0, 0, 119, 44]])
    assert seg.masks.shape == (1, 45, 120)


def test_wrong_sha256_names_the_file(tiny_checkpoint):
    with pytest.raises(InvalidInput) as err:
        load_sam("sam_vit_b", tiny_checkpoint, expected_sha256="0" * 64, builder=build_tiny_sam)
    assert str(tiny_checkpoint) in str(err.value) and sha(tiny_checkpoint) in str(err.value)
    fm = load_sam("sam_vit_b", tiny_checkpoint, expected_sha256=sha(tiny_checkpoint).upper(),
                  builder=build_tiny_sam)
    assert fm.checkpoint_sha256 == sha(tiny_checkpoint)


def test_missing_and_corrupt_checkpoints(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(NotFound, match="nope.pth"):
        load_sam("sam_vit_b", missing, builder=build_tiny_sam)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InvalidInput, match="not a readable PyTorch checkpoint") as err:
        load_sam("sam_vit_b", corrupt, builder=build_tiny_sam)
    assert str(corrupt) in str(err.value) and "sam_vit_b" in str(err.value)
    not_a_state = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_a_state)
    with pytest.raises(InvalidInput, match="no state dict"):
        load_sam("sam_vit_b", not_a_state, builder=build_tiny_sam)


def test_checkpoint_of_another_architecture(tmp_path):
    other = tmp_path / "other.pth"
    torch.save(build_tiny_sam(out_chans=16).state_dict(), other)
    with pytest.raises(InvalidInput, match="shape mismatch") as err:
        load_sam("sam_vit_b", other, builder=build_tiny_sam)
    assert str(other) in str(err.value) and "a sam_vit_b checkpoint" in str(err.value)

    state = build_tiny_sam().state_dict()
    state.pop("mask_decoder.iou_token.weight")
    state["image_encoder.blocks.1.norm1.weight"] = torch.ones(32)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": state, "epoch": 3}, wrapped)
    with pytest.raises(InvalidInput, match="1 missing keys.*1 unexpected keys"):
        load_sam("sam_vit_b", wrapped, builder=build_tiny_sam)


def test_loader_reads_environment_and_refuses_clearly(monkeypatch, tmp_path):
    clear_cache()
    monkeypatch.setenv("MEDLOOP_FM_KIND", "sam_vit_b")
    monkeypatch.delenv("MEDLOOP_FM_CHECKPOINT", raising=False)
    with pytest.raises(NotFound, match="MEDLOOP_FM_CHECKPOINT"):
        load_foundation_model()
    monkeypatch.setenv("MEDLOOP_FM_CHECKPOINT", str(tmp_path / "absent.pth"))
    model, message = try_load_foundation_model()
    assert model is None and "absent.pth" in message and "no proposals" in message
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidInput, match="corrupt.pth"):
        load_foundation_model(checkpoint=corrupt)
    with pytest.raises(InvalidInput, match="MEDLOOP_FM_KIND"):
        load_foundation_model(kind="sam_vit_z")


def test_fetch_weights_from_file_url(tmp_path):
    source = tmp_path / "src" / "weights.pth"
    source.parent.mkdir()
    source.write_bytes(np.random.default_rng(3).bytes(3 << 20))
    dest = tmp_path / "models"
    seen = []
    path = fetch_weights("sam_vit_b", dest, url=source.as_uri(), sha256=sha(source),
                         progress=lambda done, total: seen.append(done))
    assert path == dest / "sam_vit_b_01ec64.pth"
    assert path.read_bytes() == source.read_bytes() and seen[-1] == 3 << 20
    assert sorted(p.name for p in dest.iterdir()) == [path.name]
    # already there with the right sha256: no download (the URL no longer exists)
    assert fetch_weights("sam_vit_b", dest, url=(tmp_path / "gone").as_uri(),
                         sha256=sha(source)) == path
    custom = fetch_weights("mine", tmp_path / "m2", url=source.as_uri(), sha256=sha(source))
    assert custom.name == "weights.pth"


def test_fetch_weights_bad_sha_leaves_nothing(tmp_path):
    source = tmp_path / "weights.pth"
    source.write_bytes(b"x" * 1000)
    dest = tmp_path / "models"
    with pytest.raises(InvalidInput, match="expected"):
        fetch_weights("sam_vit_b", dest, url=source.as_uri())  # the official sha256
    assert list(dest.iterdir()) == []
    with pytest.raises(MedloopError, match="could not download"):
        fetch_weights("sam_vit_b", dest, url=(tmp_path / "absent").as_uri(), sha256="ab" * 32)
    assert list(dest.iterdir()) == []
    with pytest.raises(InvalidInput, match="sha256"):
        fetch_weights("medsam_vit_b", dest, url=source.as_uri())
    with pytest.raises(InvalidInput, match="no direct download"):
        fetch_weights("medsam_vit_b", dest)


def test_device_and_thread_defaults(monkeypatch):
    from pipeline.fm.device import default_thread_count, select_device

    monkeypatch.delenv("MEDLOOP_FM_DEVICE", raising=False)
    monkeypatch.delenv("MEDLOOP_TORCH_THREADS", raising=False)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device().type == expected
    assert select_device("cpu").type == "cpu"
    monkeypatch.setenv("MEDLOOP_FM_DEVICE", "cpu")
    assert select_device().type == "cpu"
    assert 1 <= default_thread_count() <= 4
    monkeypatch.setenv("MEDLOOP_TORCH_THREADS", "3")
    assert default_thread_count() == 3
