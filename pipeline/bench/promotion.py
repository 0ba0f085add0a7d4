"""Where the promotion floor (`min_class_dice`) lies: how good a task model's coarse mask must
be, on the slices that hold a structure, for the FM's refinement of it to give a proposal a
clinician accepts or fixes quickly, measured on every structure slice of the shared cases
(radiomics brain1, brain2, breast1, lung1; the MNI152 grey and white matter).

For each structure slice the ground truth is degraded the way weak models err (shifted by a
fraction of the structure's radius, shrunk or grown, speckled, or a part dropped); each
coarse mask is refined by the FM exactly as the `propose` job refines a task model's mask
(one box per component). The table gives, per band of coarse-mask Dice, the median Dice of
the refined proposal and the share of refined proposals at or above an "accept or small fix"
level (0.7 by default). The floor is the lowest band from which the refined proposals are
mostly usable.

    medloop bench promotion [--out bench-results/promotion.csv] [--mni-slices 6]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from pipeline.bench.fm import CASES, default_data_dir, load_case
from pipeline.fm.proposals import segment_classes
from pipeline.imaging import dice

BANDS = np.round(np.arange(0.0, 1.01, 0.1), 1)
SHIFTS = (0.0, 0.35, 0.7, 1.0, 1.4, 2.0)  # in radii of the structure
MORPH = (-2, 0, 2)  # erosion (-) or dilation (+) iterations


def _structures(data_dir: Path, mni_slices: int, tmp: Path):
    """(case, modality, image, binary mask) for every slice and class with a structure."""
    for case in CASES:
        image, label = load_case(data_dir, case)
        modality = "CT:percentile" if case == "lung1" else "MR"
        for k in range(image.shape[0]):
            if label[k].any():
                yield case, modality, image[k], label[k] > 0
    from pipeline.demo import mni152_volumes
    from pipeline.imaging import cut_slice
    from pipeline.ingest.readers import read_nifti

    img_path, lab_path = mni152_volumes(tmp, z_step=6)
    image, label = read_nifti(img_path).array, read_nifti(lab_path).array
    picks = np.linspace(image.shape[2] * 0.25, image.shape[2] * 0.75, mni_slices).astype(int)
    for k in picks:
        img2d, lab2d = cut_slice(image, 2, int(k)), cut_slice(label, 2, int(k))
        for value, name in ((1, "grey"), (2, "white")):
            if (lab2d == value).any():
                yield f"mni152-{name}", "MR", img2d, lab2d == value


def degraded(mask: np.ndarray, rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """Coarse masks a weak model might give for this structure."""
    radius = max(1.0, float(np.sqrt(mask.sum() / np.pi)))
    out = []
    for shift in SHIFTS:
        angle = rng.uniform(0, 2 * np.pi)
        dy, dx = shift * radius * np.sin(angle), shift * radius * np.cos(angle)
        moved = ndimage.shift(mask.astype(np.uint8), (dy, dx), order=0) > 0
        for m in MORPH:
            shaped = moved
            if m < 0:
                shaped = ndimage.binary_erosion(moved, iterations=-m)
            elif m > 0:
                shaped = ndimage.binary_dilation(moved, iterations=m)
            if shaped.any():
                out.append((f"shift{shift}:morph{m}", shaped))
    # Speckle around the structure, and half the structure dropped.
    speckle = mask.copy()
    speckle[rng.random(mask.shape) < 0.002] = True
    out.append(("speckle", speckle))
    rows = np.flatnonzero(mask.any(1))
    half = mask.copy()
    half[: rows[len(rows) // 2]] = False
    if half.any():
        out.append(("half", half))
    return out


def run(out_csv: Path, mni_slices: int = 6, usable: float = 0.7, seed: int = 0
        ) -> tuple[pd.DataFrame, pd.DataFrame]:
    from pipeline.fm import configure_threads, load_foundation_model

    configure_threads()
    fm = load_foundation_model()
    rng = np.random.default_rng(seed)
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for case, modality, image, mask in _structures(default_data_dir(), mni_slices,
                                                       Path(tmp)):
            emb = fm.embed(image, modality)
            for how, coarse in degraded(mask, rng):
                refined, _, boxes = segment_classes(fm, emb, coarse.astype(np.uint8), [1])
                rows.append({"case": case, "degradation": how, "structure_px": int(mask.sum()),
                             "coarse_dice": dice(coarse, mask),
                             "refined_dice": dice(refined == 1, mask), "boxes": boxes})
    seconds = time.perf_counter() - t0
    per_case = pd.DataFrame(rows)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    per_case.to_csv(out_csv, index=False)
    per_case["band"] = pd.cut(per_case["coarse_dice"], BANDS, include_lowest=True, right=False)
    table = per_case.groupby("band", observed=True).agg(
        masks=("refined_dice", "size"),
        cases=("case", "nunique"),
        median_refined_dice=("refined_dice", "median"),
        usable_share=("refined_dice", lambda v: float((v >= usable).mean())))
    table["median_gain"] = per_case.groupby("band", observed=True).apply(
        lambda g: float((g["refined_dice"] - g["coarse_dice"]).median()), include_groups=False)
    table.to_csv(out_csv.with_name(out_csv.stem + "_bands.csv"))
    print(f"{len(per_case)} coarse masks over {per_case['case'].nunique()} cases "
          f"({seconds:.0f} s)\n")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    per_case["coarse >= 0.5"] = per_case["coarse_dice"] >= 0.5
    by_case = per_case.groupby(["case", "coarse >= 0.5"]).agg(
        masks=("refined_dice", "size"), median_refined_dice=("refined_dice", "median"),
        usable_share=("refined_dice", lambda v: float((v >= usable).mean())))
    print("\nper case, coarse Dice below / from 0.5:\n"
          + by_case.unstack("coarse >= 0.5").to_string(float_format=lambda v: f"{v:.3f}"))
    mostly = table[table["usable_share"] >= 0.5]
    if len(mostly):
        print(f"\nrefined proposals are mostly usable (Dice >= {usable}) from coarse Dice "
              f"{mostly.index[0].left:.1f} up")
    return per_case, table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="medloop bench promotion", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("bench-results/promotion.csv"))
    p.add_argument("--mni-slices", type=int, default=6)
    p.add_argument("--usable", type=float, default=0.7,
                   help="refined Dice from which a proposal counts as accept-or-small-fix")
    args = p.parse_args(argv)
    run(args.out, args.mni_slices, args.usable)
    return 0
