"""Active-learning strategies on a tiny real UNet and small synthetic slices: every strategy
gives finite, deterministic scores, one per item; the queue follows the scores; the cold
start sends empty slices to the back; FM embeddings pool without their letterbox padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from pipeline.active.features import fm_vector, fm_vectors
from pipeline.active.strategies import (
    DEFAULT_STRATEGY,
    LABELS,
    STRATEGIES,
    Pool,
    k_centre,
    rank,
    score,
)
from pipeline.fm.base import Embedding
from pipeline.fm.preprocess import Letterbox
from pipeline.task.model import TaskModelConfig, build_network
from store.errors import InvalidInput

SIZE = 32


def _slices(n: int = 12, empty: int = 3, seed: int = 0) -> np.ndarray:
    """n slices: the first `empty` background only (constant), the rest a bright disc of
    varying size and place on a noisy head."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    out = np.zeros((n, SIZE, SIZE), np.float32)
    for i in range(empty, n):
        head = ((yy - 16) / 13) ** 2 + ((xx - 16) / 11) ** 2 <= 1
        cy, cx, r = rng.integers(10, 22), rng.integers(10, 22), rng.integers(2, 6)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img = 1.0 * head + 2.0 * disc + rng.normal(0, 0.1, (SIZE, SIZE))
        out[i] = (img - img.mean()) / img.std()
    return out


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    cfg = TaskModelConfig(class_values=(1,), image_size=SIZE, channels=(4, 8, 16))
    return build_network(cfg).eval()


def _grow(_i: int, coarse: np.ndarray) -> np.ndarray:
    """A stand-in FM refinement: the coarse mask grown by one pixel (a real change)."""
    return ndimage.binary_dilation(coarse > 0).astype(np.int64)


def _pool(n: int = 12, empty: int = 3) -> Pool:
    rng = np.random.default_rng(1)
    images = _slices(n, empty)
    return Pool(list(range(100, 100 + n)), images, embeddings=rng.normal(size=(n, 6)),
                fm_refine=_grow, labelled_images=_slices(2, 0, seed=5))


def test_the_api_names_every_strategy_for_the_picker():
    assert DEFAULT_STRATEGY in STRATEGIES
    assert set(LABELS) == set(STRATEGIES)
    assert all(LABELS[s] for s in STRATEGIES)


@pytest.mark.parametrize("name", STRATEGIES)
def test_each_strategy_gives_finite_deterministic_scores(name, model):
    pool = _pool()
    m = None if name == "cold_start" else model
    a = score(name, m, pool, seed=3)
    b = score(name, m, pool, seed=3)
    assert a.shape == (len(pool),)
    assert np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    order, reasons = rank(name, a, pool, batch=4, seed=3)
    assert sorted(order.tolist()) == list(range(len(pool)))  # a permutation of the pool
    assert len(reasons) == len(pool) and all(isinstance(r, str) and r for r in reasons)


def test_random_scores_change_with_the_seed(model):
    pool = _pool()
    assert not np.array_equal(score("random", None, pool, seed=0),
                              score("random", None, pool, seed=1))


def test_rank_follows_the_scores():
    pool = Pool(list(range(5)), np.zeros((5, 8, 8), np.float32))
    order, reasons = rank("entropy", np.array([0.1, 0.5, 0.3, 0.9, 0.2]), pool)
    assert order.tolist() == [3, 1, 2, 4, 0]
    assert reasons[0] == "high uncertainty (entropy 0.90)"


def test_rank_moves_near_copies_out_of_a_batch():
    # items 0 and 1 have the same embedding; with a batch of 2 the second copy waits
    emb = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    pool = Pool(list(range(4)), np.zeros((4, 8, 8), np.float32), embeddings=emb)
    order, _ = rank("entropy", np.array([0.9, 0.8, 0.7, 0.1]), pool, batch=2)
    assert order.tolist()[:2] == [0, 2]
    assert order.tolist()[2] == 1


def test_cold_start_sends_near_empty_slices_to_the_back():
    pool = _pool(n=14, empty=4)
    order, reasons = rank("cold_start", score("cold_start", None, pool, seed=0), pool, seed=0)
    assert set(order[-4:].tolist()) == {0, 1, 2, 3}
    assert all("near-empty" in r for r in reasons[-4:])
    assert reasons[0].startswith("typical of cluster 1 of ")


def test_cold_start_without_embeddings_still_orders_by_the_images():
    pool = Pool(list(range(10)), _slices(10, 2))
    order, _ = rank("cold_start", score("cold_start", None, pool), pool)
    assert set(order[-2:].tolist()) == {0, 1}


def test_foreground_random_draws_every_class_in_the_first_batch():
    hints = np.empty(9, dtype=object)
    for i, cs in enumerate([set(), set(), set(), set(), set(), {1}, {1}, {2}, set()]):
        hints[i] = cs
    pool = Pool(list(range(9)), np.zeros((9, 8, 8), np.float32), hint_foreground=hints)
    order, _ = rank("foreground_random", score("foreground_random", None, pool, seed=4,
                                               n_classes=3), pool, batch=3)
    first = set(order[:3].tolist())
    assert first & {5, 6} and 7 in first and first & {0, 1, 2, 3, 4, 8}


def test_coreset_asks_for_an_already_labelled_image_last(model):
    images = _slices(8, 0, seed=2)
    pool = Pool(list(range(8)), images, labelled_images=images[3:4].copy())
    order, _ = rank("coreset", score("coreset", model, pool), pool)
    assert order[-1] == 3


def test_k_centre_picks_the_far_point_second():
    x = np.array([[0.0], [0.1], [0.2], [5.0]])
    assert k_centre(x, 2, start=0).tolist() == [0, 3]


def test_bald_measures_disagreement_under_mc_dropout(model):
    pool = _pool()
    s = score("bald", model, pool, seed=0)
    assert (s >= 0).all() and s.max() > 0
    assert not model.training  # dropout switched back off


def test_fm_disagreement_is_zero_when_the_fm_agrees(model):
    pool = _pool()
    same = Pool(pool.item_ids, pool.images, fm_refine=lambda _i, c: c)
    np.testing.assert_array_equal(score("fm_disagreement", model, same), 0.0)
    assert score("fm_disagreement", model, pool).max() > 0


def test_bad_input_is_refused_with_a_clear_message(model):
    pool = _pool()
    with pytest.raises(InvalidInput, match="unknown strategy"):
        score("nope", model, pool)
    with pytest.raises(InvalidInput, match="needs a trained task model"):
        score("entropy", None, pool)
    with pytest.raises(InvalidInput, match="fm_refine"):
        score("fm_disagreement", model, Pool(pool.item_ids, pool.images))
    with pytest.raises(InvalidInput, match="scores for"):
        rank("entropy", np.zeros(3), pool)
    with pytest.raises(InvalidInput, match="images for"):
        Pool([1, 2], np.zeros((3, 8, 8), np.float32))


def test_fm_vector_leaves_the_letterbox_padding_out():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(4, 8, 8)).astype(np.float16)
    padded = feats.copy()
    padded[:, 4:, :] = 100.0  # the rows the letterbox padded
    geo = Letterbox((50, 100), 64, (32, 64))  # a wide image: the lower half is padding
    v = fm_vector(Embedding(padded, geo, "test"))
    np.testing.assert_allclose(v, fm_vector(feats[:, :4, :]), rtol=1e-5)
    assert v.shape == (8,) and np.isclose(np.linalg.norm(v), 1.0)
    assert fm_vectors([feats, feats]).shape == (2, 8)
    with pytest.raises(InvalidInput):
        fm_vector(np.zeros((4, 4)))
