"""Propagation: from one validated slice, FM proposals for the slices around it, outward
slice by slice until each structure ends.

For each class and each direction, the structure's components on the slice before are the
prompts on the next one: one box per component (its bounding box plus a margin) *and* the
component itself as the FM's dense mask prior, so a small or split slice does not send the
box off. The FM's mask is then re-centred (a second pass with the box of what it found) and
checked against the slice before; a class stops in a direction when the check fails (see
`StopRule`).

With the slices' pixels (`image`), each step is checked against the image itself: an
`IntensityModel` fitted on the validated slice (inside the mask against a band around it)
refines the slice before's mask onto this slice (grown by REACH_PX, kept where the pixels
look like the structure, opened), and the FM is prompted from that refined mask. The FM's
mask is kept when it agrees with the refined one (Dice >= FM_AGREEMENT), else the refined
mask is: the FM alone drifts off a thin or low-contrast structure (the MNI grey matter
ribbon: mean Dice 0.08 with the FM alone, 0.83 refined), the pixels alone cannot grow past
REACH_PX a slice. The naive follow (previous mask's box + 2 px, no prior, no stop) is kept for the
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
REACH_PX = 3  # how far a structure may grow between slices without the FM's say
BAND_PX = 15  # the background the intensity model is fitted on: this far around the mask
BINS = 32
# Dice with the refined mask for the FM's mask to be kept. Measured (`medloop bench
# propagate`, stop rule min_agreement 0.2; mean Dice brain1 / brain2 / breast1 / lung1 /
# MNI grey / MNI white): 0.7: 0.63 / 0 / 0.58 / 0.81 / 0.83 / 0.62; 0.8: 0.63 / 0 / 0.58 /
# 0.91 / 0.87 / 0.67; 0.9: 0.59 / 0 / 0.69 / 0.91 / 0.91 / 0.69 (about the refined
# neighbour alone). The FM helps on brain1 (its outline of the lesion beats the pixels,
# 0.84-0.88 against 0.66-0.83 a slice) and lets a structure grow past REACH_PX a slice; it
# costs on breast1 and the MNI tissue. 0.8 keeps brain1's gain and most of the rest.
FM_AGREEMENT = 0.8


@dataclass(frozen=True)
class StopRule:
    """When a structure has ended, judged per class and slice on the FM's mask for it.

    A slice is proposed only when the mask is not empty (at least `min_pixels`), the FM's
    predicted IoU (mean over the class's components) is at least `min_iou` (judged only when
    the mask is the FM's: a refined neighbour's mask is not the FM's guess), its area is
    within [min_area_ratio, max_area_ratio] of the slice before, its Dice with the slice
    before is at least `min_agreement`, at least `min_support` of it looks like the
    structure to the intensity model, and the FM's own mask agrees with the refined
    neighbour's (Dice) at least `min_fm_agreement` (past a structure's end the FM, given the
    neighbour as its prior, mostly finds nothing there, while the pixels may still pass).
    DEFAULT_RULE (below) was chosen by `medloop bench propagate --rules`; its comment gives
    the figures.
    """

    min_pixels: int = MIN_COMPONENT_PX
    min_iou: float = 0.0
    min_area_ratio: float = 0.0
    max_area_ratio: float = float("inf")
    min_agreement: float = 0.0
    min_support: float = 0.0
    min_fm_agreement: float = 0.0

    def passes(self, step: Step) -> bool:
        return (step.area >= self.min_pixels
                and (step.source != "fm" or step.iou >= self.min_iou)
                and self.min_area_ratio <= step.area_ratio <= self.max_area_ratio
                and step.agreement >= self.min_agreement
                and step.support >= self.min_support
                and step.fm_agreement >= self.min_fm_agreement)


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
    support: float = 1.0  # fraction of the mask the intensity model calls the structure
    source: str = "fm"  # "fm": the FM's mask; "neighbour": the refined slice before's
    fm_agreement: float = 1.0  # Dice of the FM's mask with the refined one (1.0: not checked)


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


@dataclass(frozen=True)
class IntensityModel:
    """p(structure | pixel value) from one slice: a histogram Bayes classifier, the pixels
    inside the mask against a BAND_PX band around it (equal priors), BINS bins over the
    1-99th percentile of both, each histogram smoothed (Gaussian, sigma 1 bin).

    Our own (a dozen lines): scikit-learn's naive Bayes models are Gaussian (one lesion's
    values next to a bright skull or fat are not) or categorical without smoothing across
    neighbouring bins, which a 32-bin histogram of a few hundred pixels needs.
    """

    edges: np.ndarray  # (BINS + 1,)
    p_bin: np.ndarray  # (BINS,) p(structure) per bin

    @classmethod
    def fit(cls, image: np.ndarray, mask: np.ndarray) -> IntensityModel | None:
        """None when the slice gives nothing to fit on (an empty mask or no band)."""
        image, mask = np.asarray(image, np.float64), np.asarray(mask, bool)
        if image.shape != mask.shape:
            raise ValueError(f"image {image.shape} and mask {mask.shape} differ in shape")
        band = (ndimage.distance_transform_edt(~mask) <= BAND_PX) & ~mask
        if not mask.any() or not band.any():
            return None
        lo, hi = np.percentile(image[mask | band], (1, 99))
        if hi <= lo:
            hi = lo + 1.0
        edges = np.linspace(lo, hi, BINS + 1)
        hist = []
        for region in (mask, band):
            h, _ = np.histogram(np.clip(image[region], lo, hi), edges)
            h = ndimage.gaussian_filter1d(h.astype(np.float64), 1.0, mode="nearest")
            hist.append(h / h.sum() + 1e-6)
        return cls(edges, hist[0] / (hist[0] + hist[1]))

    def p_foreground(self, image: np.ndarray) -> np.ndarray:
        index = np.clip(np.searchsorted(self.edges, image, side="right") - 1, 0, BINS - 1)
        return self.p_bin[index]

    def support(self, image: np.ndarray, mask: np.ndarray) -> float:
        """The fraction of `mask` whose pixels look like the structure (1.0 when empty)."""
        return float((self.p_foreground(image[mask]) > 0.5).mean()) if mask.any() else 1.0


def refine_neighbour(prev: np.ndarray, image: np.ndarray, model: IntensityModel) -> np.ndarray:
    """The slice before's mask carried onto this slice: grown by REACH_PX, kept where the
    pixels look like the structure, opened (speckle and one-pixel bridges off)."""
    reach = ndimage.binary_dilation(prev, np.ones((3, 3), bool), iterations=REACH_PX)
    return ndimage.binary_opening(reach & (model.p_foreground(image) > 0.5))


def _fm_union(fm: FoundationModel, emb: Embedding, parts: list[np.ndarray], prior: bool,
              recentre: bool, per_component_agreement: float) -> tuple[np.ndarray, list[float]]:
    """The FM's mask for `parts` (the components to follow), union over the components
    whose mask stayed on the one it came from (one that left it has drifted: it alone is
    dropped), and the FM's predicted IoU of each kept."""
    masks, iou = _segment_components(fm, emb, parts, prior, recentre)
    keep = [i for i, m in enumerate(masks)
            if m.sum() and dice(m, parts[i]) >= per_component_agreement]
    union = np.zeros(parts[0].shape, bool)
    for i in keep:
        union |= masks[i]
    return union, [float(iou[i]) for i in keep]


def follow(fm: FoundationModel, embed: Callable[[int], Embedding], n_slices: int,
           start: int, validated: np.ndarray, class_values: Sequence[int],
           rule: StopRule | None = None, prior: bool = True, recentre: bool = True,
           per_component_agreement: float = 0.1, limit: int | None = None,
           skip: Callable[[int], bool] | None = None,
           image: Callable[[int], np.ndarray] | None = None,
           use_fm: bool = True,
           on_slice: Callable[[int, np.ndarray, list[Step]], None] | None = None
           ) -> Propagation:
    """Propose masks outward from `validated` (the label map of slice `start`).

    Immediate neighbours are done first (both directions' first slices before anything
    further), so the next slice is ready while the clinician is on this one. `skip(k)`
    says a slice may not be proposed (reviewed, or someone holds it): the structure is still
    followed through it, from the mask found there. `limit` caps the slices per direction.
    `image(k)` gives slice k's pixels: with it each step is checked against the pixels (the
    module's docstring); without it the FM's mask alone is followed. `use_fm=False` (with
    `image`) follows the refined neighbour alone (the benchmark's ablation).
    `on_slice(k, label_map, steps)` is called once per proposed slice as soon as nothing can
    change it any more (every front has gone past it), nearest first: a job writes the
    slices while the walk goes on, so the clinician's next slices need not wait for its end.
    """
    rule = rule or DEFAULT_RULE
    if image is None and not use_fm:
        raise ValueError("follow without the FM needs the slices' pixels (image=...)")
    out = Propagation()
    # (class, direction) -> (slice index, components on it, its class mask)
    fronts: dict[tuple[int, int], tuple[int, list[np.ndarray], np.ndarray]] = {}
    models: dict[int, IntensityModel | None] = {}
    for value in class_values:
        mask = validated == value
        parts = components(mask)
        if parts:
            models[int(value)] = (IntensityModel.fit(image(start), mask)
                                  if image is not None else None)
            for d in (1, -1):
                fronts[(int(value), d)] = (start, parts, mask)
    handed: set[int] = set()

    def hand_over(upto: float) -> None:
        # A front at distance m writes at m + 1: slices up to the nearest front are final.
        if on_slice is None:
            return
        for k in sorted((k for k in out.proposals if k not in handed and abs(k - start) <= upto),
                        key=lambda k: abs(k - start)):
            handed.add(k)
            on_slice(k, out.proposals[k], [s for s in out.steps if s.slice_index == k and s.kept])

    while fronts:
        hand_over(min(abs(f[0] - start) for f in fronts.values()))
        # the nearest slice first, so the neighbours of `start` come out first
        (value, d), (k, parts, prev_mask) = min(
            fronts.items(), key=lambda kv: (abs(kv[1][0] - start), -kv[0][1], kv[0][0]))
        nxt = k + d
        if not 0 <= nxt < n_slices or (limit is not None and abs(nxt - start) > limit):
            del fronts[(value, d)]
            continue
        t0 = time.perf_counter()
        model = models[value]
        pixels = np.asarray(image(nxt)) if model is not None else None
        source, ious, support, fm_agreement = "fm", [], 1.0, 1.0
        if model is None:
            union, ious = _fm_union(fm, embed(nxt), parts, prior, recentre,
                                    per_component_agreement)
        else:
            union = refine_neighbour(prev_mask, pixels, model)
            source = "neighbour"
            found = components(union)
            if use_fm and found:
                fm_mask, fm_ious = _fm_union(fm, embed(nxt), found, prior, recentre,
                                             per_component_agreement)
                fm_agreement = dice(fm_mask, union) if fm_mask.any() else 0.0
                if fm_agreement >= FM_AGREEMENT:
                    union, source = fm_mask, "fm"
                ious = fm_ious
            support = model.support(pixels, union)
        area, before = int(union.sum()), max(1, int(prev_mask.sum()))
        step = Step(nxt, value, d, union, float(np.mean(ious)) if ious else 0.0, area,
                    area / before, dice(union, prev_mask), len(components(union)),
                    time.perf_counter() - t0, support=support, source=source,
                    fm_agreement=fm_agreement)
        step.kept = rule.passes(step)
        out.steps.append(step)
        if not step.kept:
            del fronts[(value, d)]
            continue
        if skip is None or not skip(nxt):
            target = out.proposals.setdefault(nxt, np.zeros(validated.shape, validated.dtype))
            target[union & (target == 0)] = value
        fronts[(value, d)] = (nxt, components(union) or [union], union)
    hand_over(float("inf"))
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


# Chosen by `medloop bench propagate --rules` (432 rules of RULE_GRID, each scored on one
# permissive run per structure) across ALL the shared cases: brain1, brain2, breast1, lung1
# (lesions over 2-6 slices besides the validated one) and the demo's MNI152 grey and white
# matter (about 50 slices each), by the clinician's cost (bench FALSE_SLICE_COST), mean over
# the six structures. With no rule: 7 false slices beyond the ends (6 at one end, brain2 and
# lung1), cost 0.665, mean Dice 0.627. With this one: no false slice, cost 0.373, mean Dice
# 0.627 (worst structure brain2, 0.097); the next best (Dice with the slice before >= 0.2)
# has cost 0.389. Why: past a structure's end the FM, prompted with the refined neighbour
# as box and prior, finds (almost) nothing, while the pixels alone still pass; on every
# structure slice it agreed (Dice >= 0.05). The FM's predicted IoU, the area ratio and the
# intensity support changed nothing among the best rules, so they are left off.
DEFAULT_RULE = StopRule(min_fm_agreement=0.05)
