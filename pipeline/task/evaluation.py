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

    def to_dict(self) -> dict:
        return {"promoted": self.promote, "reason": self.reason, "mean_delta": self.mean_delta,
                "class_delta": self.class_delta, "wins": self.wins, "losses": self.losses,
                "ties": self.ties}


def compare(challenger: dict[int, dict], champion: dict[int, dict] | None, margin: float,
            names: dict[str, str] | None = None) -> Decision:
    """Promote only if the paired mean Dice gain exceeds `margin` and no class loses more
    than `margin`; names maps class values to names for the reason text."""
    names = names or {}
    if not challenger:
        return Decision(False, "no holdout item has a reference mask: label some holdout "
                               "items (or import their masks), then evaluate again")
    if champion is None:
        mean = float(np.mean([c["mean_dice"] for c in challenger.values()]))
        return Decision(True, f"first task model for this project: holdout Dice {mean:.3f} "
                              f"on {len(challenger)} cases", mean_delta=None)
    ids = sorted(set(challenger) & set(champion))
    deltas = np.array([challenger[i]["mean_dice"] - champion[i]["mean_dice"] for i in ids])
    classes = list(challenger[ids[0]]["dice"])
    class_delta = {c: float(np.mean([challenger[i]["dice"][c] - champion[i]["dice"][c]
                                     for i in ids])) for c in classes}
    tol = 1e-6
    d = Decision(False, "", float(deltas.mean()), class_delta,
                 wins=int((deltas > tol).sum()), losses=int((deltas < -tol).sum()),
                 ties=int((np.abs(deltas) <= tol).sum()))
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
