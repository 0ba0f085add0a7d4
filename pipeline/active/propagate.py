"""Propagation: from one validated slice, FM proposals for the slices around it, outward
slice by slice until each structure ends.

For each class and each direction, the structure's components on the slice before are the
prompts on the next one: one box per component (its bounding box plus a margin) *and* the
component itself as the FM's dense mask prior, so a small or split slice does not send the
box off. The FM's mask is then re-centred (a second pass with the box of what it found) and
checked against the slice before; a class stops in a direction when the check fails (see
`StopRule`). The naive follow (previous mask's box + 2 px, no prior, no stop) is kept for the
benchmark that measures the difference (`medloop bench propagate`).

Nothing here touches the store: `follow` takes a function that embeds a slice, so a job can
use the embedding cache and a benchmark its own.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from pipeline.fm.base import Embedding, FoundationModel
from pipeline.fm.proposals import MIN_COMPONENT_PX, MIN_FRACTION_OF_LARGEST
from pipeline.imaging import dice

MARGIN_PX = 2


@dataclass(frozen=True)
class StopRule:
    """When a structure has ended, judged per class and slice on the FM's mask for it.

    A slice is proposed only when the mask is not empty (at least `min_pixels`), the FM's
    predicted IoU (mean over the class's components) is at least `min_iou`, its area is
    within [min_area_ratio, max_area_ratio] of the slice before, and its Dice with the slice
    before is at least `min_agreement`. Defaults: chosen by `medloop bench propagate --rules`
    (see the constants below for the figures).
    """

    min_pixels: int = MIN_COMPONENT_PX
    min_iou: float = 0.0
    min_area_ratio: float = 0.0
    max_area_ratio: float = float("inf")
    min_agreement: float = 0.0

    def passes(self, step: Step) -> bool:
        return (step.area >= self.min_pixels and step.iou >= self.min_iou
                and self.min_area_ratio <= step.area_ratio <= self.max_area_ratio
                and step.agreement >= self.min_agreement)


NEVER_STOP = StopRule(min_pixels=1)  # until the mask is empty (the naive follow's rule)


@dataclass
class Step:
    """One class on one slice: what the FM gave and the figures the stop rule judges."""

    slice_index: int
    class_value: int
    direction: int  # +1 / -1
    mask: np.ndarray  # bool (rows, cols)
    iou: float  # FM's predicted IoU, mean over the components followed
    area: int
    area_ratio: float  # area / area on the slice before
    agreement: float  # Dice with the class's mask on the slice before
    components: int
    seconds: float
    kept: bool = True


@dataclass
class Propagation:
    """Label maps proposed per slice (the start slice excluded) and every step taken."""

    proposals: dict[int, np.ndarray] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)


def components(mask: np.ndarray, min_pixels: int = MIN_COMPONENT_PX) -> list[np.ndarray]:
    """The connected components worth following (8-connected), largest first: at least
    `min_pixels` and at least MIN_FRACTION_OF_LARGEST of the largest (the proposals' rule:
    speckle beside a structure gets no box)."""
    labelled, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return []
    sizes = np.bincount(labelled.ravel())[1:]
    order = np.argsort(-sizes)
    floor = max(min_pixels, MIN_FRACTION_OF_LARGEST * sizes[order[0]])
    return [labelled == (i + 1) for i in order if sizes[i] >= floor]


def box_of(mask: np.ndarray, margin: int = MARGIN_PX) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    r1, c1 = mask.shape[0] - 1, mask.shape[1] - 1
    return np.array([max(0, cols.min() - margin), max(0, rows.min() - margin),
                     min(c1, cols.max() + margin + 1), min(r1, rows.max() + margin + 1)],
                    np.float64)


def _segment_components(fm: FoundationModel, emb: Embedding, prev: list[np.ndarray],
                        prior: bool, recentre: bool) -> tuple[list[np.ndarray], np.ndarray]:
    """The FM's mask for each component of the slice before, on this slice."""
    boxes = np.stack([box_of(c) for c in prev])
    priors = np.stack(prev) if prior else None
    seg = fm.segment(emb, boxes=boxes, prior_mask=priors)
    masks, iou = list(seg.masks), seg.iou
    if recentre:
        # The structure moves and changes size between slices: a box around what the FM
        # found here fits it better than the one carried over.
        found = [i for i, m in enumerate(masks) if m.sum() >= MIN_COMPONENT_PX]
        if found:
            again = fm.segment(emb, boxes=np.stack([box_of(masks[i]) for i in found]),
                               prior_mask=np.stack([prev[i] for i in found]) if prior else None)
            for j, i in enumerate(found):
                masks[i], iou[i] = again.masks[j], again.iou[j]
    return masks, iou


def follow(fm: FoundationModel, embed: Callable[[int], Embedding], n_slices: int,
           start: int, validated: np.ndarray, class_values: Sequence[int],
           rule: StopRule | None = None, prior: bool = True, recentre: bool = True,
           per_component_agreement: float = 0.1, limit: int | None = None,
           skip: Callable[[int], bool] | None = None,
           image: Callable[[int], np.ndarray] | None = None) -> Propagation:
    """Propose masks outward from `validated` (the label map of slice `start`).

    Immediate neighbours are done first (both directions' first slices before anything
    further), so the next slice is ready while the clinician is on this one. `skip(k)`
    says a slice may not be proposed (reviewed, or someone holds it): the structure is still
    followed through it, from the FM's mask there. `limit` caps the slices per direction.
    `image(k)` gives slice k's pixels (for checks against the image itself; optional).
    """
    rule = rule or DEFAULT_RULE
    out = Propagation()
    # (class, direction) -> (slice index, components on it, its class mask)
    fronts: dict[tuple[int, int], tuple[int, list[np.ndarray], np.ndarray]] = {}
    for value in class_values:
        mask = validated == value
        parts = components(mask)
        if parts:
            for d in (1, -1):
                fronts[(int(value), d)] = (start, parts, mask)
    taken = 0
    while fronts:
        # the nearest slice first, so the neighbours of `start` come out first
        (value, d), (k, parts, prev_mask) = min(
            fronts.items(), key=lambda kv: (abs(kv[1][0] - start), -kv[0][1], kv[0][0]))
        nxt = k + d
        if not 0 <= nxt < n_slices or (limit is not None and abs(nxt - start) > limit):
            del fronts[(value, d)]
            continue
        t0 = time.perf_counter()
        emb = embed(nxt)
        masks, iou = _segment_components(fm, emb, parts, prior, recentre)
        # A component whose mask left the one it came from has drifted: drop it alone.
        keep = [i for i, m in enumerate(masks)
                if m.sum() and dice(m, parts[i]) >= per_component_agreement]
        union = np.zeros_like(prev_mask)
        for i in keep:
            union |= masks[i]
        area, before = int(union.sum()), max(1, int(prev_mask.sum()))
        step = Step(nxt, value, d, union, float(np.mean([iou[i] for i in keep])) if keep else 0.0,
                    area, area / before, dice(union, prev_mask), len(keep),
                    time.perf_counter() - t0)
        step.kept = rule.passes(step)
        out.steps.append(step)
        taken += 1
        if not step.kept:
            del fronts[(value, d)]
            continue
        if skip is None or not skip(nxt):
            target = out.proposals.setdefault(nxt, np.zeros(validated.shape, validated.dtype))
            target[union & (target == 0)] = value
        fronts[(value, d)] = (nxt, components(union) or [union], union)
    return out


def naive_follow(fm: FoundationModel, embed: Callable[[int], Embedding], n_slices: int,
                 start: int, validated: np.ndarray, class_values: Sequence[int]) -> Propagation:
    """The follow that the issue measured failing: the previous slice's mask box + 2 px,
    one box per class, no prior, no re-centring, on until the mask is empty."""
    out = Propagation()
    for value in class_values:
        for d in (1, -1):
            prev, k = validated == value, start
            while prev.sum() and 0 <= k + d < n_slices:
                k += d
                t0 = time.perf_counter()
                seg = fm.segment(embed(k), boxes=box_of(prev, 2)[None])
                mask = seg.masks[0]
                out.steps.append(Step(k, int(value), d, mask, float(seg.iou[0]),
                                      int(mask.sum()), mask.sum() / max(1, prev.sum()),
                                      dice(mask, prev), 1, time.perf_counter() - t0))
                if not mask.any():
                    break
                target = out.proposals.setdefault(k, np.zeros(validated.shape, validated.dtype))
                target[mask & (target == 0)] = value
                prev = mask
    return out


# Chosen by `medloop bench propagate --rules` (360 rules, scored on one permissive run per
# volume) on the shared radiomics cases (lesions over 3-7 slices) and the demo's MNI152
# volume, by the clinician's cost (bench FALSE_SLICE_COST): with no stop rule, 84 false
# slices beyond the ends (32 at one end, lung1) and a cost of 3.73 boxes per structure slice;
# with this one, no false slice and a cost of 0.82, but it stops early (mean Dice 0.18 over
# the structure slices). Work in progress (issue 10): the follow itself does not yet beat
# the naive one, so the rule mostly stops it.
DEFAULT_RULE = StopRule(min_iou=0.7, min_area_ratio=0.5, max_area_ratio=2.0)
