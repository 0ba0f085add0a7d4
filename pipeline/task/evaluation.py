"""Task-model quality on the frozen holdout, and whether a challenger beats the champion.

The holdout split is fixed per patient at ingest and never trained on. Its reference masks
are the newest validated label of each holdout item, else its imported ground truth.
Champion and challenger are scored on the same cases at decision time (paired).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.networks.utils import one_hot

from pipeline.task.model import TaskModel
from store import labels
from store.db import Store
from store.models import Item, Split


@dataclass
class Case:
    item_id: int
    source: str  # real | synthetic
    image: np.ndarray
    modality: str
    reference: np.ndarray
    spacing: tuple[float, float]


def holdout_cases(store: Store, project_id: int) -> list[Case]:
    cases = []
    with store.session() as s:
        for item, ref in labels.heads(s, Item.project_id == project_id,
                                      Item.split == Split.holdout):
            if ref is None or ref.kind not in labels.VALIDATED:
                ref = labels.ground_truth(s, item.id)
            if ref is None or ref.mask_blob is None:
                continue
            cases.append(Case(item.id, str(item.source.value), store.blobs.get_array(item.blob),
                              item.modality, store.blobs.get_array(ref.mask_blob),
                              tuple(item.pixel_spacing or (1.0, 1.0))))
    return cases


def case_metrics(pred: np.ndarray, ref: np.ndarray, class_values: Sequence[int],
                 spacing: Sequence[float]) -> dict:
    """Dice and HD95 (mm) per class for one 2D case.

    Dice counts an absent class predicted absent as 1 and any false positive on it as 0
    (ignore_empty=False): a model that paints lesions on empty slices must lose. HD95 is
    undefined (None) when the class is missing from prediction or reference.
    """
    n = len(class_values) + 1
    idx_pred = np.zeros(pred.shape, np.int64)
    idx_ref = np.zeros(ref.shape, np.int64)
    for i, v in enumerate(class_values, start=1):
        idx_pred[pred == v] = i
        idx_ref[ref == v] = i
    p = one_hot(torch.from_numpy(idx_pred)[None, None], n)
    r = one_hot(torch.from_numpy(idx_ref)[None, None], n)
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=False)(p, r)[0]
    out = {"dice": {}, "hd95": {}, "present": {}}
    for i, v in enumerate(class_values):
        out["dice"][str(v)] = float(dice[i])
        out["present"][str(v)] = bool(r[0, i + 1].any())
        if p[0, i + 1].any() and r[0, i + 1].any():
            hd = HausdorffDistanceMetric(include_background=False, percentile=95,
                                         reduction="none")(p[:, [0, i + 1]], r[:, [0, i + 1]],
                                                           spacing=list(spacing))
            out["hd95"][str(v)] = float(hd[0, 0])
        else:
            out["hd95"][str(v)] = None
    out["mean_dice"] = float(np.mean(list(out["dice"].values())))
    return out


def score_cases(model: TaskModel, cases: Sequence[Case]) -> dict[int, dict]:
    """Per-case metrics keyed by item id."""
    preds = model.predict([c.image for c in cases], [c.modality for c in cases])
    values = model.cfg.class_values
    return {c.item_id: {"source": c.source, **case_metrics(p, c.reference, values, c.spacing)}
            for c, p in zip(cases, preds, strict=True)}


def score_empty(cases: Sequence[Case], class_values: Sequence[int]) -> dict[int, dict]:
    """Per-case metrics of proposing nothing (an empty mask everywhere): the baseline every
    model must beat, since a wrong proposal costs a clinician more than none."""
    return {c.item_id: {"source": c.source,
                        **case_metrics(np.zeros_like(c.reference), c.reference, class_values,
                                       c.spacing)}
            for c in cases}


def summarise(per_case: dict[int, dict]) -> dict:
    """Means over cases: mean Dice, Dice and HD95 per class, and the same per source."""
    def block(rows: list[dict]) -> dict:
        if not rows:
            return {"cases": 0}
        classes = rows[0]["dice"].keys()
        hd = {c: [r["hd95"][c] for r in rows if r["hd95"][c] is not None] for c in classes}
        # Dice over the cases whose reference holds the class: on slices that are mostly
        # empty, the all-case mean rewards a model that finds nothing.
        found = {c: [r["dice"][c] for r in rows if r.get("present", {}).get(c)]
                 for c in classes}
        return {"cases": len(rows),
                "mean_dice": float(np.mean([r["mean_dice"] for r in rows])),
                "dice": {c: float(np.mean([r["dice"][c] for r in rows])) for c in classes},
                "dice_where_present": {c: (float(np.mean(v)) if v else None)
                                       for c, v in found.items()},
                "cases_with": {c: len(v) for c, v in found.items()},
                "hd95": {c: (float(np.mean(v)) if v else None) for c, v in hd.items()}}
    rows = list(per_case.values())
    out = block(rows)
    out["by_source"] = {src: block([r for r in rows if r["source"] == src])
                        for src in sorted({r["source"] for r in rows})}
    return out


@dataclass
class Decision:
    promote: bool
    reason: str
    mean_delta: float | None = None
    class_delta: dict[str, float] = field(default_factory=dict)
    wins: int = 0
    losses: int = 0
    ties: int = 0
    # Why it may not serve at all (it does not beat proposing nothing, or a class is below
    # the floor): such a version stays a candidate, for the curator to look at.
    below_bar: bool = False
    delta_vs_empty: float | None = None

    def to_dict(self) -> dict:
        return {"promoted": self.promote, "reason": self.reason, "mean_delta": self.mean_delta,
                "class_delta": self.class_delta, "wins": self.wins, "losses": self.losses,
                "ties": self.ties, "below_bar": self.below_bar,
                "delta_vs_empty": self.delta_vs_empty}


def _paired(a: dict[int, dict], b: dict[int, dict]) -> tuple[list[int], np.ndarray]:
    ids = sorted(set(a) & set(b))
    return ids, np.array([a[i]["mean_dice"] - b[i]["mean_dice"] for i in ids])


def bar(challenger: dict[int, dict], empty: dict[int, dict], margin: float,
        floor: float, names: dict[str, str] | None = None) -> str | None:
    """Why a version may not serve at all, or None when it may: it must beat proposing
    nothing by more than the margin (paired mean Dice over the holdout), and reach `floor`
    Dice on the holdout slices that hold each class."""
    names = names or {}
    ids, delta = _paired(challenger, empty)
    gain = float(delta.mean())
    if gain <= margin:
        return (f"it does not beat proposing nothing: mean paired holdout Dice {gain:+.3f} "
                f"against empty masks (it must gain more than {margin:.3f}), so its "
                "proposals would cost clinicians more than they save")
    low = []
    for c in challenger[ids[0]]["dice"]:
        found = [challenger[i]["dice"][c] for i in ids if challenger[i]["present"][c]]
        if found and float(np.mean(found)) < floor:
            low.append(f"{names.get(c, c)} {np.mean(found):.3f} on the {len(found)} holdout "
                       f"slice(s) with it")
    if low:
        return f"Dice below the floor {floor:.2f}: {', '.join(low)}"
    return None


def compare(challenger: dict[int, dict], champion: dict[int, dict] | None, margin: float,
            names: dict[str, str] | None = None, empty: dict[int, dict] | None = None,
            floor: float = 0.0) -> Decision:
    """Promote only if the version clears the bar (see `bar`; with `empty` given) and the
    paired mean Dice gain over the champion exceeds `margin` with no class losing more than
    `margin`; names maps class values to names for the reason text."""
    names = names or {}
    if not challenger:
        return Decision(False, "no holdout item has a reference mask, so nothing says whether "
                               "it is any good: promotion is left to the curator (label or "
                               "import masks for some holdout items, then evaluate again)")
    delta_empty = float(_paired(challenger, empty)[1].mean()) if empty else None
    why_not = bar(challenger, empty, margin, floor, names) if empty else None
    if why_not is not None:
        return Decision(False, f"kept as a candidate: {why_not}", below_bar=True,
                        delta_vs_empty=delta_empty)
    if champion is None:
        mean = float(np.mean([c["mean_dice"] for c in challenger.values()]))
        return Decision(True, f"first task model for this project: holdout Dice {mean:.3f} "
                              f"on {len(challenger)} cases"
                        + (f", {delta_empty:+.3f} over proposing nothing"
                           if delta_empty is not None else ""),
                        mean_delta=None, delta_vs_empty=delta_empty)
    ids, deltas = _paired(challenger, champion)
    classes = list(challenger[ids[0]]["dice"])
    class_delta = {c: float(np.mean([challenger[i]["dice"][c] - champion[i]["dice"][c]
                                     for i in ids])) for c in classes}
    tol = 1e-6
    d = Decision(False, "", float(deltas.mean()), class_delta,
                 wins=int((deltas > tol).sum()), losses=int((deltas < -tol).sum()),
                 ties=int((np.abs(deltas) <= tol).sum()), delta_vs_empty=delta_empty)
    tally = f"{d.wins} cases better, {d.losses} worse, {d.ties} equal of {len(ids)}"
    dropped = {c: v for c, v in class_delta.items() if v < -margin}
    if dropped:
        worst = ", ".join(f"{names.get(c, c)} {v:+.3f}" for c, v in dropped.items())
        d.reason = f"champion kept: Dice dropped by more than the margin {margin:.3f} for " \
                   f"{worst} ({tally})"
    elif d.mean_delta <= margin:
        d.reason = f"champion kept: mean paired Dice change {d.mean_delta:+.3f} is not above " \
                   f"the margin {margin:.3f} ({tally})"
    else:
        d.promote = True
        d.reason = f"beats the champion by {d.mean_delta:+.3f} mean paired Dice (margin " \
                   f"{margin:.3f}; {tally})"
    return d


def labels_needed(history: Sequence[tuple[int, float]], floor: float,
                  max_factor: float = 10.0) -> str:
    """How many more validated labels a project likely needs before its task model reaches
    `floor` Dice, from its versions' (train labels, holdout Dice where present) so far.

    Segmentation Dice grows roughly with the log of the training-set size (learning curves
    of nnU-Net and MONAI models on medical data are near-linear in log n over this range);
    a straight line in log n through the versions gives the estimate. With one version
    there is no slope yet: the honest answer is "about twice as many", to be refined once
    the second version is scored.
    """
    points = sorted({n: d for n, d in history if n > 0 and d is not None}.items())
    if not points:
        return ""
    n_now, d_now = points[-1]
    if len(points) < 2:
        return (f"with {n_now} validated labels it reaches {d_now:.2f}; try about twice as "
                f"many (~{n_now} more) and retrain: the estimate firms up with a second "
                "version")
    x = np.log([n for n, _ in points])
    y = np.array([d for _, d in points])
    slope, intercept = np.polyfit(x, y, 1)
    if slope <= 1e-3:
        return (f"more labels have not raised its Dice so far ({len(points)} versions, "
                f"{points[0][0]} to {n_now} labels): check the labels and the settings "
                "before adding more")
    target = float(np.exp((floor - intercept) / slope))
    if target > max_factor * n_now:
        return (f"at the rate seen so far it would need more than {max_factor:.0f}x the "
                f"{n_now} labels it has: check the labels and the settings")
    more = max(1, int(np.ceil(target - n_now)))
    return f"likely about {more} more validated labels (a log-linear fit over " \
           f"{len(points)} versions)"
