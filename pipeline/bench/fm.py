"""Foundation-model benchmark on CPU: LiteMedSAM embed and decode times, and Dice against
ground truth with ground-truth-box prompts on every lesion slice of the shared cases."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from sqlmodel import select

from pipeline.fm.device import configure_threads
from pipeline.fm.litemedsam import load_litemedsam
from pipeline.fm.multiclass import boxes_from_mask
from pipeline.imaging import axial_slices, dice

# case -> normalisations to try (the first is the one a user would pick)
CASES: dict[str, tuple[str, ...]] = {
    "brain1": ("MR",),
    "brain2": ("MR",),
    "breast1": ("MR",),
    "lung1": ("CT:lung", "CT:percentile", "CT"),
}
AXIAL = 2


def default_data_dir() -> Path:
    """`shared/data/radiomics` beside the repository clone."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "radiomics"


def load_case(data_dir: Path, case: str) -> tuple[np.ndarray, np.ndarray]:
    """Image and label volumes of a case, canonical (RAS+), as (slices, rows, cols) axial
    slices oriented as `pipeline.imaging.cut_slice(volume, 2, k)` shows them."""
    volumes = []
    for part in ("image", "label"):
        img = nib.as_closest_canonical(nib.load(Path(data_dir) / f"{case}_{part}.nii.gz"))
        volumes.append(axial_slices(np.asanyarray(img.dataobj), AXIAL))
    return volumes[0], volumes[1]


def run_fm_bench(
    out_csv: Path, n_timing: int = 20, data_dir: Path | None = None, margin_px: int = 2
) -> pd.DataFrame:
    """Run the benchmark, print its tables, write `out_csv` (Dice per lesion slice) and
    `<stem>_timing.csv` beside it; return the Dice table (timings in `.attrs["timing"]`)."""
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    out_csv = Path(out_csv)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    configure_threads()  # the library's default, as the app and worker run it
    started = time.perf_counter()
    fm = load_litemedsam()
    load_s = time.perf_counter() - started

    rows = []
    for case, modalities in CASES.items():
        image, label = load_case(data_dir, case)
        for k in np.flatnonzero((label > 0).any(axis=(1, 2))):
            gt = label[k] > 0
            boxes = boxes_from_mask(gt.astype(np.uint8), 1, margin_px=margin_px)
            for modality in modalities:
                t0 = time.perf_counter()
                embedding = fm.embed(image[k], modality)
                t1 = time.perf_counter()
                result = fm.segment(embedding, boxes=boxes)
                t2 = time.perf_counter()
                merged = result.masks.any(axis=0)
                rows.append({
                    "case": case, "normalisation": modality, "slice": int(k),
                    "rows": gt.shape[0], "cols": gt.shape[1], "lesion_px": int(gt.sum()),
                    "boxes": len(boxes), "dice": round(dice(merged, gt), 4),
                    "predicted_iou": round(float(result.iou.mean()), 4),
                    "embed_s": round(t1 - t0, 3), "decode_s": round(t2 - t1, 3),
                })
    table = pd.DataFrame(rows)

    # Timing on 256 x 256 slices (brain1 is 256 x 256: no resize), one box per decode.
    image, label = load_case(data_dir, "brain1")
    k = int((label > 0).sum(axis=(1, 2)).argmax())
    embed_times = []
    for i in range(n_timing):
        t0 = time.perf_counter()
        embedding = fm.embed(image[(k + i) % len(image)], "MR")
        embed_times.append(time.perf_counter() - t0)
    embedding = fm.embed(image[k], "MR")
    box = boxes_from_mask((label[k] > 0).astype(np.uint8), 1, margin_px=margin_px)[:1]
    fm.segment(embedding, boxes=box)  # warm-up
    decode_times = []
    for _ in range(n_timing):
        t0 = time.perf_counter()
        fm.segment(embedding, boxes=box)
        decode_times.append(time.perf_counter() - t0)
    timing = pd.DataFrame([{
        "model": fm.version, "device": str(fm.device), "torch_threads": torch.get_num_threads(),
        "load_s": round(load_s, 3), "n": n_timing,
        "embed_256_median_s": round(statistics.median(embed_times), 4),
        "decode_box_median_s": round(statistics.median(decode_times), 4),
    }])
    table.attrs["timing"] = timing.to_dict(orient="records")[0]

    table.to_csv(out_csv, index=False)
    timing.to_csv(out_csv.with_name(f"{out_csv.stem}_timing.csv"), index=False)
    summary = (
        table.groupby(["case", "normalisation"], sort=False)["dice"]
        .agg(["count", "mean", "min", "max"]).round(3)
    )
    with pd.option_context("display.width", 160, "display.max_rows", 200):
        print(table.to_string(index=False))
        print()
        print(summary.to_string())
        print()
        print(timing.to_string(index=False))
    return table


def run_batch_bench(out_csv: Path, n_items: int = 100) -> pd.DataFrame:
    """Batch proposal throughput through the store: n_items MNI152 axial slices (grey and
    white matter, one box per component per class, the ground truth standing in for the task
    model's coarse mask), cold cache (embed + decode) and warm cache (decode only)."""
    import tempfile
    from dataclasses import replace

    from pipeline.demo import TISSUE_CLASSES, mni152_volumes
    from pipeline.fm import load_foundation_model
    from pipeline.fm.proposals import propose_batch
    from pipeline.ingest.importer import ingest
    from store import labels
    from store.db import Store
    from store.models import Item
    from store.projects import create_project
    from store.settings import load_settings

    fm = load_foundation_model()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = Store(replace(load_settings(), data_dir=tmp / "data",
                              database_url=f"sqlite:///{tmp / 'data' / 'medloop.db'}"))
        store.upgrade()
        with store.session(immediate=True) as s:
            project = create_project(s, "bench", "MR", TISSUE_CLASSES, "bench")
        image, tissue = mni152_volumes(tmp, z_step=1)
        ingest(store, project, [image], masks=[tissue], actor="bench")
        with store.session() as s:
            items = s.exec(select(Item).order_by(Item.slice_index)).all()
            gt = {i.id: store.blobs.get_array(labels.ground_truth(s, i.id).mask_blob)
                  for i in items}
        with_tissue = [i.id for i in items if gt[i.id].any()]
        step = max(1, len(with_tissue) // n_items)
        chosen = with_tissue[::step][:n_items]
        by_id = {i.id: i for i in items}
        for cache in ("cold", "warm"):
            result = propose_batch(store, fm, chosen, lambda it: gt[it.id], "bench")
            rows.append({"model": fm.version, "cache": cache, "items": len(chosen),
                         "proposed": result.proposed, "seconds": round(result.seconds, 2),
                         "items_per_s": round(len(chosen) / result.seconds, 3),
                         "shape": "x".join(map(str, by_id[chosen[0]].shape))})
    table = pd.DataFrame(rows)
    table.to_csv(out_csv, index=False)
    print(table.to_string(index=False))
    return table


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="medloop bench fm", description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench-results/fm.csv"))
    parser.add_argument("--n", type=int, default=20, help="repeats for the timings")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--batch-items", type=int, default=100,
                        help="items for the batch-proposal throughput (0 skips it)")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    run_fm_bench(args.out, n_timing=args.n, data_dir=args.data_dir)
    if args.batch_items:
        print()
        run_batch_bench(args.out.with_name(f"{args.out.stem}_batch.csv"), args.batch_items)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
