"""Propagation (issue 10): from one validated slice, the FM follows the structure through
the volume, checked against the pixels, and stops at its ends."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.active.propagate import (
    REACH_PX,
    IntensityModel,
    Step,
    StopRule,
    follow,
    refine_neighbour,
)
from pipeline.bench.propagate import Embeddings, Volume, phantom_volume, seed_slice
from pipeline.fm import load_foundation_model
from pipeline.imaging import dice


@pytest.fixture(scope="module")
def fm():
    return load_foundation_model()


@pytest.fixture(scope="module")
def phantom(fm):
    volume = phantom_volume(slices=9, size=64)
    return volume, Embeddings(fm, volume)


def two_class_volume(slices: int = 9, size: int = 64) -> Volume:
    """Class 1: two bright discs (two components a slice) over slices 2-5; class 2: a
    grey ellipse below them over slices 4-7; inside a flat head, with noise."""
    z, y, x = np.mgrid[:slices, :size, :size].astype(np.float32)
    head = ((y - size / 2) / (size / 2.2)) ** 2 + ((x - size / 2) / (size / 2.2)) ** 2 <= 1
    label = np.zeros((slices, size, size), np.uint8)
    for k, r in zip(range(2, 6), (3.5, 5.5, 5.5, 3.5), strict=True):
        for cx in (size * 0.3, size * 0.7):
            label[k][(y[k] - size * 0.35) ** 2 + (x[k] - cx) ** 2 <= r * r] = 1
    for k, (ry, rx) in zip(range(4, 8), ((3, 6), (5, 10), (5, 10), (3, 6)), strict=True):
        label[k][((y[k] - size * 0.7) / ry) ** 2 + ((x[k] - size / 2) / rx) ** 2 <= 1] = 2
    image = 150.0 * head + np.select([label == 1, label == 2], [550.0, 250.0], 0.0)
    image += np.random.default_rng(1).normal(0, 10, image.shape)
    return Volume("two classes", image.astype(np.float32), label, "MR", (1, 2))


def slices_of(volume: Volume, value: int) -> set[int]:
    return {k for k in range(len(volume.label)) if (volume.label[k] == value).any()}


def test_follow_covers_a_phantom_lesion_and_stops_at_its_ends(fm, phantom):
    volume, embed = phantom
    start = seed_slice(volume)
    result = follow(fm, embed, len(volume.label), start, volume.label[start], (1,),
                    image=volume.image.__getitem__)
    present = slices_of(volume, 1) - {start}
    proposed = {k for k, m in result.proposals.items() if m.any()}
    assert proposed == present  # every slice of the lesion, none beyond its ends
    for k in present:
        assert dice(result.proposals[k] == 1, volume.label[k] == 1) > 0.8, k
    # the neighbours of the validated slice come first
    assert {s.slice_index for s in result.steps[:2]} == {start - 1, start + 1}
    assert {s.source for s in result.steps} <= {"fm", "neighbour"}
    assert all(0.0 <= s.support <= 1.0 for s in result.steps)


def test_several_classes_and_components_are_each_followed_to_their_own_ends(fm):
    volume = two_class_volume()
    start = 4  # both classes on it, class 1 in two parts
    result = follow(fm, Embeddings(fm, volume), len(volume.label), start,
                    volume.label[start], (1, 2), image=volume.image.__getitem__)
    for value in (1, 2):
        present = slices_of(volume, value) - {start}
        proposed = {k for k, m in result.proposals.items() if (m == value).any()}
        assert proposed == present, value
        for k in present:
            assert dice(result.proposals[k] == value, volume.label[k] == value) > 0.7, (value, k)
    # both discs of class 1 are followed, not only the larger one
    above = result.proposals[start - 1] == 1
    assert above[:, : 32].any() and above[:, 32:].any()


def test_each_slice_is_handed_over_once_when_final_nearest_first(fm):
    volume = two_class_volume()
    start = 4
    handed: list[tuple[int, np.ndarray]] = []
    result = follow(fm, Embeddings(fm, volume), len(volume.label), start, volume.label[start],
                    (1, 2), image=volume.image.__getitem__,
                    on_slice=lambda k, m, steps: handed.append((k, m.copy())))
    order = [k for k, _ in handed]
    assert sorted(order) == sorted(result.proposals) and len(set(order)) == len(order)
    assert [abs(k - start) for k in order] == sorted(abs(k - start) for k in order)
    for k, m in handed:  # what was handed over is what the walk ended with
        assert np.array_equal(m, result.proposals[k]), k


def test_a_slice_that_may_not_be_proposed_is_followed_through_but_left_alone(fm, phantom):
    volume, embed = phantom
    start = seed_slice(volume)
    held = start + 1
    result = follow(fm, embed, len(volume.label), start, volume.label[start], (1,),
                    skip=lambda k: k == held, image=volume.image.__getitem__)
    assert held not in result.proposals
    assert start + 2 in result.proposals  # the walk went on through the held slice


def test_follow_without_the_fm_needs_the_pixels(fm, phantom):
    volume, embed = phantom
    with pytest.raises(ValueError, match="pixels"):
        follow(fm, embed, len(volume.label), 4, volume.label[4], (1,), use_fm=False)


def test_intensity_model_tells_the_structure_from_its_surroundings():
    rng = np.random.default_rng(0)
    image = rng.normal(100, 5, (48, 48))
    mask = np.zeros((48, 48), bool)
    mask[18:30, 18:30] = True
    image[mask] += 200
    model = IntensityModel.fit(image, mask)
    p = model.p_foreground(image)
    assert (p[mask] > 0.5).mean() > 0.95 and (p[~mask] < 0.5).mean() > 0.95
    assert model.support(image, mask) > 0.95
    assert model.support(image, ~mask) < 0.1
    assert IntensityModel.fit(image, np.zeros_like(mask)) is None
    with pytest.raises(ValueError, match="shape"):
        IntensityModel.fit(image, mask[:10])


def test_refined_neighbour_grows_at_most_reach_and_only_onto_the_structure():
    image = np.full((40, 40), 100.0)
    image[5:35, 5:35] = 300.0  # the structure on this slice: larger than the one before
    before = np.zeros((40, 40), bool)
    before[15:25, 15:25] = True
    model = IntensityModel.fit(np.where(before, 300.0, 100.0), before)
    refined = refine_neighbour(before, image, model)
    reach = np.zeros_like(before)
    reach[15 - REACH_PX:25 + REACH_PX, 15 - REACH_PX:25 + REACH_PX] = True
    assert not (refined & ~reach).any()  # no further than REACH_PX
    assert refined.sum() >= reach.sum() - 4  # all of it (the opening rounds the corners)
    # gone on this slice: nothing carried over
    assert refine_neighbour(before, np.full((40, 40), 100.0), model).sum() == 0


def test_stop_rule_judges_each_figure():
    mask = np.ones((4, 4), bool)
    step = Step(3, 1, 1, mask, iou=0.8, area=16, area_ratio=0.5, agreement=0.6,
                components=1, seconds=0.0, support=0.7)
    assert StopRule().passes(step)
    assert not StopRule(min_iou=0.9).passes(step)
    assert not StopRule(min_area_ratio=0.6).passes(step)
    assert not StopRule(max_area_ratio=0.4).passes(step)
    assert not StopRule(min_agreement=0.7).passes(step)
    assert not StopRule(min_pixels=17).passes(step)
    assert not StopRule(min_support=0.8).passes(step)
    step.fm_agreement = 0.1  # the FM found little of the refined neighbour's mask
    assert StopRule(min_fm_agreement=0.05).passes(step)
    assert not StopRule(min_fm_agreement=0.2).passes(step)
    # the FM's predicted IoU judges the FM's mask only, not a refined neighbour's
    step.source = "neighbour"
    assert StopRule(min_iou=0.9).passes(step)
