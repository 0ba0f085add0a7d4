"""Propagation through a volume from one validated slice, as a clinician would get it.

A simulated clinician validates the slice where the structure is largest (its reference
mask), then the FM propagates it; every other slice is scored against the reference. Side
by side: the naive follow (previous mask's box + 2 px, no stop), medloop's follow
(`pipeline.active.propagate`) under its default stop rule (and two ablations: the refined
neighbour alone, the FM alone without the pixels check), and the upper bound of a reference
box drawn on every slice (one per component). Printed: a table per slice (Dice, accepted as
is = Dice >= 0.9, seconds) and a summary line per structure and variant (slices of the
structure covered, mean Dice, accepted-as-is share, false slices beyond each end, seconds).
Written: propagate.csv (summary), propagate-slices.csv, propagate.png (Dice per slice).
With `--rules`, stop rules are compared on the same runs (a stricter rule only ends each
class's walk earlier, so one permissive run per case scores every rule exactly).

    medloop bench propagate [IMAGE MASK [--modality CT] [--classes 1,2]] [--rules]
                            [--out-dir bench-results] [--cache DIR] [--quick]

With no IMAGE, the shared radiomics cases (brain1, brain2, breast1, lung1) and the demo's
MNI152 volume are used.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.active.propagate import (
    DEFAULT_RULE,
    NEVER_STOP,
    Propagation,
    Step,
    StopRule,
    box_of,
    components,
    follow,
    naive_follow,
)
from pipeline.fm.base import FoundationModel, embedding_from_bytes, embedding_to_bytes
from pipeline.imaging import axial_slices, dice

ACCEPT_DICE = 0.9  # "accepted as is"


@dataclass
class Volume:
    name: str
    image: np.ndarray  # (slices, rows, cols)
    label: np.ndarray  # (slices, rows, cols) integer classes
    modality: str  # as the FM normalises it
    classes: tuple[int, ...]


def shared_volumes(data_dir: Path | None = None) -> list[Volume]:
    from pipeline.bench.fm import CASES, default_data_dir, load_case

    out = []
    for case, modalities in CASES.items():
        image, label = load_case(data_dir or default_data_dir(), case)
        out.append(Volume(case, image, (label > 0).astype(np.uint8), modalities[0], (1,)))
    from pipeline.demo import mni152_volumes
    from pipeline.ingest.readers import read_nifti

    with tempfile.TemporaryDirectory() as tmp:
        img_path, lab_path = mni152_volumes(Path(tmp))  # the demo's volume
        image, label = read_nifti(img_path).array, read_nifti(lab_path).array
    out.append(Volume("mni152", axial_slices(image), axial_slices(label).astype(np.uint8), "MR",
                      (1, 2)))
    return out


def phantom_volume(slices: int = 9, size: int = 64) -> Volume:
    """A small MR-like volume with an ellipsoid lesion over the middle slices (tests)."""
    z, y, x = np.mgrid[:slices, :size, :size].astype(np.float32)
    rng = np.random.default_rng(0)
    lesion = (((z - slices / 2) / (slices / 3)) ** 2 + ((y - size / 2) / (size / 6)) ** 2
              + ((x - size / 2.2) / (size / 5)) ** 2) <= 1.0
    head = ((y - size / 2) / (size / 2.3)) ** 2 + ((x - size / 2) / (size / 2.6)) ** 2 <= 1.0
    image = 200.0 * head + 500.0 * lesion + rng.normal(0, 10, head.shape)
    return Volume("phantom", image.astype(np.float32), lesion.astype(np.uint8), "MR", (1,))


def load_volume(parser: argparse.ArgumentParser, image_path: Path, mask_path: Path,
                modality: str, classes: str | None) -> Volume:
    """A volume and its reference mask from NIfTI files, as axial slices; clear errors for
    a missing file, shapes that differ or classes the mask does not hold."""
    from pipeline.ingest.readers import read_nifti

    for path in (image_path, mask_path):
        if not path.is_file():
            parser.error(f"{path}: no such file")
    image = axial_slices(read_nifti(image_path).array)
    label = np.rint(axial_slices(read_nifti(mask_path).array)).astype(np.int32)
    if image.shape != label.shape:
        parser.error(f"the image {image.shape} and the mask {label.shape} differ in shape")
    present = tuple(int(v) for v in np.unique(label) if v)
    if not present:
        parser.error(f"{mask_path}: the mask is empty")
    try:
        wanted = tuple(int(c) for c in classes.split(",")) if classes else present
    except ValueError:
        parser.error(f"--classes {classes!r}: give class values such as 1,2")
    missing = sorted(set(wanted) - set(present))
    if missing:
        parser.error(f"--classes: the mask holds no pixel of class {missing} "
                     f"(it holds {list(present)})")
    return Volume(image_path.name, image.astype(np.float32), label, modality, wanted)


class Embeddings:
    """Each slice embedded once, shared by every variant of a volume; with `cache_dir`, kept
    on disk between runs (keyed by FM version, volume, modality and slice)."""

    def __init__(self, fm: FoundationModel, volume: Volume, cache_dir: Path | None = None):
        self.fm, self.volume, self.cache, self.seconds = fm, volume, {}, 0.0
        self.cache_dir = cache_dir

    def __call__(self, k: int):
        if k not in self.cache:
            path = None
            if self.cache_dir is not None:
                key = f"{self.fm.version}-{self.volume.name}-{self.volume.modality}-{k}"
                path = self.cache_dir / (key.replace(":", "_").replace("/", "_") + ".emb")
            if path is not None and path.exists():
                self.cache[k] = embedding_from_bytes(path.read_bytes())
            else:
                t0 = time.perf_counter()
                self.cache[k] = self.fm.embed(self.volume.image[k], self.volume.modality)
                self.seconds += time.perf_counter() - t0
                if path is not None:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(embedding_to_bytes(self.cache[k]))
        return self.cache[k]


def seed_slice(volume: Volume) -> int:
    return int(np.argmax([(s > 0).sum() for s in volume.label]))


def bound(fm: FoundationModel, embed: Embeddings, volume: Volume, start: int) -> Propagation:
    """A reference box on every slice, one per component of each class."""
    out = Propagation()
    for k in range(len(volume.label)):
        if k == start or not volume.label[k].any():
            continue
        target = np.zeros(volume.label[k].shape, volume.label.dtype)
        for value in volume.classes:
            parts = components(volume.label[k] == value, min_pixels=1)
            if not parts:
                continue
            t0 = time.perf_counter()
            seg = fm.segment(embed(k), boxes=np.stack([box_of(p) for p in parts]))
            union = seg.masks.any(0)
            target[union & (target == 0)] = value
            out.steps.append(Step(k, value, 0, union, float(seg.iou.mean()), int(union.sum()),
                                  1.0, 1.0, len(parts), time.perf_counter() - t0))
        out.proposals[k] = target
    return out


def truncated(steps: list[Step], rule: StopRule, shape, dtype) -> dict[int, np.ndarray]:
    """The proposals a stricter rule would have made from a permissive run's steps."""
    stopped: set[tuple[int, int]] = set()
    proposals: dict[int, np.ndarray] = {}
    for step in steps:
        walk = (step.class_value, step.direction)
        if walk in stopped:
            continue
        if not (NEVER_STOP.passes(step) and rule.passes(step)):
            stopped.add(walk)
            continue
        target = proposals.setdefault(step.slice_index, np.zeros(shape, dtype))
        target[step.mask & (target == 0)] = step.class_value
    return proposals


def score(volume: Volume, start: int, proposals: dict[int, np.ndarray],
          steps: list[Step] = ()) -> list[dict]:
    """Per class and slice (the validated one excepted): Dice against the reference, and
    the seconds the variant spent on that class there (`steps`)."""
    spent: dict[tuple[int, int], float] = {}
    for st in steps:
        spent[(st.class_value, st.slice_index)] = \
            spent.get((st.class_value, st.slice_index), 0.0) + st.seconds
    rows = []
    for value in volume.classes:
        present = [k for k in range(len(volume.label)) if (volume.label[k] == value).any()]
        if not present:
            continue
        first, last = min(present), max(present)
        for k in range(len(volume.label)):
            if k == start:
                continue
            truth = volume.label[k] == value
            got = proposals.get(k)
            got = (got == value) if got is not None else np.zeros_like(truth)
            if not truth.any() and not got.any():
                continue
            rows.append({"volume": volume.name, "class": value, "slice": k,
                         "in_structure": bool(truth.any()), "proposed": bool(got.any()),
                         "dice": dice(got, truth) if truth.any() else 0.0,
                         "accepted": bool(truth.any() and dice(got, truth) >= ACCEPT_DICE),
                         "beyond": ("below" if k < first else "above" if k > last else ""),
                         "seconds": round(spent.get((value, k), 0.0), 3)})
    return rows


def summary(rows: list[dict], variant: str, seconds: float) -> list[dict]:
    df = pd.DataFrame(rows)
    out = []
    for (volume, value), g in df.groupby(["volume", "class"]):
        inside = g[g["in_structure"]]
        false = g[~g["in_structure"] & g["proposed"]]
        out.append({
            "volume": volume, "class": value, "variant": variant,
            "structure slices": len(inside), "covered": int(inside["proposed"].sum()),
            "mean Dice": float(inside["dice"].mean()) if len(inside) else float("nan"),
            "accepted as is": float((inside["dice"] >= ACCEPT_DICE).mean()) if len(inside)
            else float("nan"),
            "false below": int((false["beyond"] == "below").sum()),
            "false above": int((false["beyond"] == "above").sum()),
            "false inside": int((false["beyond"] == "").sum()),
            "seconds": round(seconds, 1)})
    return out


RULE_GRID = {
    "min_iou": (0.0, 0.7),
    "min_area_ratio": (0.0, 0.2, 0.35),
    "max_area_ratio": (float("inf"), 2.0),
    "min_agreement": (0.0, 0.2, 0.4),
    "min_support": (0.0, 0.5, 0.9),
    "min_fm_agreement": (0.0, 0.05, 0.2, 0.4),
}


# What a clinician pays, in boxes drawn: a structure slice costs (1 - Dice) of a box (none
# when the proposal is right, a whole one when it is missing), a false slice half a box (one
# click on No finding, but it had to be looked at).
FALSE_SLICE_COST = 0.5


def compare_rules(runs: list[tuple[Volume, int, Propagation]]) -> pd.DataFrame:
    """Every rule of RULE_GRID scored on the permissive runs: mean Dice over the structure
    slices of all volumes, false slices beyond the ends, and the clinician's cost
    (FALSE_SLICE_COST), mean over volumes and classes: lowest first."""
    table = []
    names = list(RULE_GRID)
    for values in itertools.product(*RULE_GRID.values()):
        rule = replace(DEFAULT_RULE, **dict(zip(names, values, strict=True)))
        rows = []
        for volume, start, run in runs:
            rows += score(volume, start, truncated(run.steps, rule, volume.label[0].shape,
                                                   volume.label.dtype))
        s = pd.DataFrame(summary(rows, "rule", 0.0))
        false = s["false below"] + s["false above"] + s["false inside"]
        cost = (s["structure slices"] * (1 - s["mean Dice"]) + FALSE_SLICE_COST * false) \
            / s["structure slices"]
        table.append({**dict(zip(names, values, strict=True)),
                      "cost per structure slice": cost.mean(),
                      "mean Dice": s["mean Dice"].mean(),
                      "worst volume Dice": s["mean Dice"].min(),
                      "false beyond ends": int(s["false below"].sum() + s["false above"].sum()),
                      "max false at one end": int(s[["false below", "false above"]].max().max()),
                      "false inside": int(s["false inside"].sum())})
    return pd.DataFrame(table).sort_values("cost per structure slice")


VARIANTS = ("box on every slice", "naive follow", "medloop", "medloop, neighbour only",
            "medloop, FM only")


def _variant(name: str, fm: FoundationModel, embed: Embeddings, volume: Volume,
             start: int, rule: StopRule | None = None) -> Propagation:
    n, validated = len(volume.label), volume.label[start]
    if name == "box on every slice":
        return bound(fm, embed, volume, start)
    if name == "naive follow":
        return naive_follow(fm, embed, n, start, validated, volume.classes)
    pixels = None if name == "medloop, FM only" else volume.image.__getitem__
    return follow(fm, embed, n, start, validated, volume.classes, rule=rule, image=pixels,
                  use_fm=name != "medloop, neighbour only")


def run(volumes: list[Volume], fm: FoundationModel, rules: bool,
        cache_dir: Path | None = None) -> tuple[pd.DataFrame, ...]:
    per_slice, summaries, permissive = [], [], []
    for volume in tqdm(volumes, desc="volumes", unit="volume"):
        embed = Embeddings(fm, volume, cache_dir)
        for k in tqdm(range(len(volume.image)), desc=f"embedding {volume.name}", unit="slice",
                      leave=False):
            embed(k)  # up front, so the variants' seconds are the prompting alone
        start = seed_slice(volume)
        for name in VARIANTS:
            t0 = time.perf_counter()
            result = _variant(name, fm, embed, volume, start)
            seconds = time.perf_counter() - t0
            rows = score(volume, start, result.proposals, result.steps)
            per_slice += [{**r, "variant": name} for r in rows]
            summaries += [{**r, "embedding seconds": round(embed.seconds, 1)}
                          for r in summary(rows, name, seconds)]
        if rules:
            permissive.append((volume, start, _variant("medloop", fm, embed, volume, start,
                                                       rule=NEVER_STOP)))
    rule_table = compare_rules(permissive) if rules else pd.DataFrame()
    return pd.DataFrame(per_slice), pd.DataFrame(summaries), rule_table


def print_slices(per_slice: pd.DataFrame) -> None:
    """Per structure, one line per slice: Dice per variant, and medloop's accepted-as-is
    and seconds."""
    for (volume, value), g in per_slice.groupby(["volume", "class"], sort=False):
        dice_by = g.pivot_table(index="slice", columns="variant", values="dice",
                                sort=False)[[v for v in VARIANTS if v in set(g["variant"])]]
        ours = g[g["variant"] == "medloop"].set_index("slice")
        table = dice_by.round(3)
        table.insert(0, "in structure", g.groupby("slice")["in_structure"].first())
        table["medloop accepted"] = ours["accepted"].reindex(table.index).fillna(False)
        table["medloop seconds"] = ours["seconds"].reindex(table.index).fillna(0.0)
        print(f"\n{volume}, class {value}: Dice per slice")
        print(table.to_string(float_format=lambda v: f"{v:.3f}"))


def plot_slices(per_slice: pd.DataFrame, path: Path) -> None:
    """Dice per slice, one panel per structure, one line per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(per_slice.groupby(["volume", "class"], sort=False))
    fig, axes = plt.subplots(len(groups), 1, figsize=(8, 2.4 * len(groups)), squeeze=False)
    for ax, ((volume, value), g) in zip(axes[:, 0], groups, strict=True):
        for name, v in g.groupby("variant", sort=False):
            v = v.sort_values("slice")
            ax.plot(v["slice"], v["dice"], marker=".", label=name)
        ax.set_title(f"{volume}, class {value}", fontsize=9)
        ax.set_ylabel("Dice")
        ax.set_ylim(-0.02, 1.02)
    axes[0, 0].legend(fontsize=7, ncol=3)
    axes[-1, 0].set_xlabel("slice")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="medloop bench propagate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image", nargs="?", type=Path)
    p.add_argument("mask", nargs="?", type=Path)
    p.add_argument("--modality", default="MR")
    p.add_argument("--classes", default=None, help="class values, e.g. 1,2 (default: all)")
    p.add_argument("--rules", action="store_true", help="also compare stop rules")
    p.add_argument("--quick", action="store_true", help="a small phantom volume (tests)")
    p.add_argument("--out-dir", type=Path, default=Path("bench-results"))
    p.add_argument("--cache", type=Path, default=None,
                   help="keep slice embeddings here between runs")
    args = p.parse_args(argv)

    from pipeline.fm import load_foundation_model

    if args.quick:
        volumes = [phantom_volume()]
    elif args.image:
        if args.mask is None:
            p.error("give the reference MASK after IMAGE")
        volumes = [load_volume(p, args.image, args.mask, args.modality, args.classes)]
    else:
        volumes = shared_volumes()
    per_slice, table, rules = run(volumes, load_foundation_model(), args.rules, args.cache)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    per_slice.to_csv(args.out_dir / "propagate-slices.csv", index=False)
    table.to_csv(args.out_dir / "propagate.csv", index=False)
    plot_slices(per_slice, args.out_dir / "propagate.png")
    pd.set_option("display.width", 250)
    pd.set_option("display.max_rows", 500)
    print_slices(per_slice)
    print("\nsummary per structure and variant (seconds: prompting, embeddings apart)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if len(rules):
        rules.to_csv(args.out_dir / "propagate-rules.csv", index=False)
        print("\nstop rules (best first):")
        print(rules.head(15).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"\nwritten under {args.out_dir}/ (propagate.csv, propagate-slices.csv, propagate.png"
          + (", propagate-rules.csv)" if len(rules) else ")"))
    return 0
