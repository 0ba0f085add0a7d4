"""Review-screen latency in headless Chromium against `streamlit run`, with 10,000 items
(each with a proposal) in a SQLite store:

- Accept -> next image: from the click on Accept to the next item's image (with its overlay)
  drawn on the canvas; median and p95 over 50 items.
- Box -> refined mask: from releasing a drawn box to the FM's refined mask drawn in place;
  the first box on an item whose embedding is not cached yet is reported apart.

    medloop bench review [--items 10000] [--accepts 50] [--boxes 10] [--out CSV]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from store.db import Store
from store.settings import load_settings

CLASSES = [{"name": "lesion", "value": 1, "color": "#e6194b"}]
USER, PASSWORD = "bench-clinician", "bench-password-1"
PROPOSAL_SHIFT = 7  # px: proposals are the lesion moved, so a refined box visibly changes it


@dataclass(frozen=True)
class Lesion:
    cx: float
    cy: float
    r: float


def _volume(rng: np.random.Generator, n: int, size: int) -> tuple[np.ndarray, list[Lesion]]:
    """n MR-like slices: a noisy ellipse of tissue with one bright round lesion each."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2.0
    body = ((xx - c) / (0.42 * size)) ** 2 + ((yy - c) / (0.36 * size)) ** 2 <= 1.0
    vol = np.empty((n, size, size), np.int16)
    lesions = []
    for k in range(n):
        r = float(rng.uniform(0.06, 0.12) * size)
        cx, cy = (float(v) for v in rng.uniform(c - 0.22 * size, c + 0.22 * size, 2))
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r
        img = np.where(body, 400.0, 20.0) + rng.normal(0, 25, (size, size))
        img[disc] = 900.0 + rng.normal(0, 25, int(disc.sum()))
        vol[k] = np.clip(img, 0, 4000).astype(np.int16)
        lesions.append(Lesion(cx, cy, r))
    return vol, lesions


def build_store(data_dir: Path, n_items: int, size: int = 128,
                per_volume: int = 1000) -> tuple[Store, list[int], dict[int, Lesion]]:
    """A store with n_items slices (volumes of per_volume) each with a proposal, and the
    bench clinician. Returns the store, item ids in queue order, and each item's lesion."""
    from sqlmodel import select

    from store import labels
    from store.imports import SeriesRecord, SliceRecord, record_series
    from store.models import Item, Role
    from store.projects import create_project
    from store.registry import ensure_model_version
    from store.users import create_user

    url = f"sqlite:///{data_dir / 'medloop.db'}"
    store = Store(replace(load_settings(), data_dir=data_dir, database_url=url))
    store.upgrade()
    rng = np.random.default_rng(0)
    with store.session(immediate=True) as s:
        project = create_project(s, "bench-review", "MR", CLASSES, "bench")
        create_user(s, USER, Role.clinician, PASSWORD, "bench")
    truth: dict[int, Lesion] = {}
    yy, xx = np.mgrid[0:size, 0:size]
    for v in range((n_items + per_volume - 1) // per_volume):
        n = min(per_volume, n_items - v * per_volume)
        vol, lesions = _volume(rng, n, size)
        sha, _ = store.blobs.put_array(vol)
        slices = []
        for k in range(n):
            blob, _ = store.blobs.put_array(vol[k])
            slices.append(SliceRecord(blob=blob, shape=[size, size], dtype="int16",
                                      pixel_spacing=[1.0, 1.0], slice_index=k))
        series = SeriesRecord(source_format="nifti", source_name=f"bench-{v}.nii.gz",
                              modality="MR", blob=sha, shape=list(vol.shape), dtype="int16",
                              spacing=[1.0, 1.0, 1.0], affine=None, axis=0,
                              patient_pseudonym=f"bench-{v}")
        series.slices = slices
        with store.session(immediate=True) as s:
            _, items = record_series(s, project, series, "bench", 0.0, 0.0)
            mv = ensure_model_version(s, "fm", "bench-fm", "bench")
            for item, lesion in zip(items, lesions, strict=True):
                moved = ((xx - lesion.cx - PROPOSAL_SHIFT) ** 2 + (yy - lesion.cy) ** 2
                         <= lesion.r ** 2).astype(np.uint8)
                mask_sha, _ = store.blobs.put_array(moved)
                labels.record_proposal(s, item.id, mask_sha, mv.id, "bench-fm", 0.5, "bench",
                                       "bench")
                truth[item.id] = lesion
    with store.session() as s:
        order = list(s.exec(select(Item.id).where(Item.project_id == project.id)
                            .order_by(Item.priority.desc(), Item.id)).all())
    return store, order, truth


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run(n_items: int, n_accepts: int, n_boxes: int, out_csv: Path,
        data_dir: Path | None = None) -> pd.DataFrame:
    from pipeline.bench.browser import (
        canvas_box,
        choose,
        chromium_page,
        drag,
        sign_in,
        streamlit_app,
        wait_background_change,
        wait_idle,
    )
    from pipeline.fm import load_foundation_model
    from pipeline.fm.proposals import item_embedding
    from pipeline.review_view import Screen
    from store.models import Item

    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        data = Path(tmp)
        t0 = time.perf_counter()
        store, order, truth = build_store(data, n_items)
        print(f"store: {len(order)} items with proposals in {time.perf_counter() - t0:.1f} s")
        # Boxes go on the items after the accepted ones: the first with no cached embedding
        # (the first-box case), the others cached beforehand (the usual case: proposals
        # were made by the FM, which cached them).
        box_items = order[n_accepts:n_accepts + n_boxes + 1]
        fm = load_foundation_model()
        t0 = time.perf_counter()
        with store.session() as s:
            for item_id in box_items[1:]:
                item_embedding(store, fm, s.get(Item, item_id))
        print(f"embeddings cached for {len(box_items) - 1} items in "
              f"{time.perf_counter() - t0:.1f} s")

        rows = []
        env = {"MEDLOOP_DATA_DIR": str(data), "MEDLOOP_DATABASE_URL": store.settings.database_url}
        with streamlit_app(env=env, log=data / "streamlit.log") as url, chromium_page() as page:
            sign_in(page, url, USER, PASSWORD)
            choose(page, "Project", "bench-review")  # a first visit: nothing remembered
            shown = wait_background_change(page, None, timeout_ms=120_000)
            wait_idle(page)
            accept = page.get_by_role("button", name="Accept", exact=True)
            for i in range(n_accepts):
                page.get_by_role("heading", name=f"Item {order[i]}", exact=True).wait_for()
                t = time.perf_counter()
                accept.click()
                shown = wait_background_change(page, shown)
                rows.append({"measure": "accept_to_next_image", "i": i, "item": order[i],
                             "ms": (time.perf_counter() - t) * 1000})
                wait_idle(page)
            for i, item_id in enumerate(box_items):
                page.get_by_role("heading", name=f"Item {item_id}", exact=True).wait_for()
                lesion = truth[item_id]
                screen = Screen.fit((128, 128))
                pad = 3
                start = screen.to_screen(lesion.cx - lesion.r - pad, lesion.cy - lesion.r - pad)
                end = screen.to_screen(lesion.cx + lesion.r + pad, lesion.cy + lesion.r + pad)
                box = canvas_box(page)
                drag(page, box, start, end, steps=4)
                t = time.perf_counter()  # the box is released
                shown = wait_background_change(page, shown)
                rows.append({"measure": "box_to_mask_first" if i == 0 else "box_to_mask",
                             "i": i, "item": item_id, "ms": (time.perf_counter() - t) * 1000})
                wait_idle(page)
                page.get_by_role("button", name="Save correction").click()
                shown = wait_background_change(page, shown)
                wait_idle(page)

    runs = pd.DataFrame(rows)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out_csv, index=False)
    summary = runs.groupby("measure", sort=False)["ms"].agg(
        n="count", median_ms="median", p95_ms=lambda v: _percentile(list(v), 95),
        min_ms="min", max_ms="max")
    summary.attrs["items"] = len(order)
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="medloop bench review")
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--accepts", type=int, default=50)
    p.add_argument("--boxes", type=int, default=10, help="boxes on cached embeddings")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="where the temporary store goes (default: the system's temp dir)")
    p.add_argument("--out", type=Path, default=Path("bench-results/review.csv"))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # the bench process only embeds; leave the cores to the app
    summary = run(args.items, args.accepts, args.boxes, args.out, args.data_dir)
    pd.set_option("display.width", 120)
    print(f"\nreview screen, {summary.attrs['items']} items in SQLite, headless Chromium")
    print(summary.round(0).to_string())
    print(f"\nper-measurement rows written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
