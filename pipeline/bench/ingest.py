"""Ingest throughput (slices/s, median of repeats) into SQLite and PostgreSQL, and store size.

    medloop bench ingest [--case ../shared/data/radiomics/lung1] [--pg URL] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import pandas as pd
from sqlalchemy import text

from pipeline.ingest.importer import ingest
from store.db import Store
from store.projects import create_project
from store.scratch import scratch_postgres
from store.settings import load_settings

DEFAULT_CASE = Path(__file__).resolve().parents[2].parent / "shared/data/radiomics/lung1"


def _db_bytes(store: Store) -> int:
    if store.engine.dialect.name == "sqlite":
        return sum(p.stat().st_size for p in store.settings.data_dir.glob("medloop.db*"))
    with store.engine.connect() as c:
        return int(c.execute(text("SELECT pg_database_size(current_database())")).scalar())


def _one_run(db: str, case: Path, pg_url: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        data = Path(tmp)
        if db == "sqlite":
            url = f"sqlite:///{data / 'medloop.db'}"
        else:
            url = stack.enter_context(scratch_postgres(pg_url, "medloop_bench"))
        store = Store(replace(load_settings(), data_dir=data, database_url=url))
        store.upgrade()
        with store.session(immediate=True) as s:
            project = create_project(s, "bench", "CT", [{"name": "lesion", "value": 1,
                                                         "color": "#ff0000"}], "bench")
        image = case.parent / f"{case.name}_image.nii.gz"
        mask = case.parent / f"{case.name}_label.nii.gz"
        db_before = _db_bytes(store)  # an empty schema is not per-slice cost
        t0 = time.perf_counter()
        report = ingest(store, project, [image], masks=[mask], actor="bench")
        seconds = time.perf_counter() - t0
        assert not report.rejected, report.rejected
        db_bytes, blob_bytes = _db_bytes(store) - db_before, store.blobs.total_bytes()
        return {"database": db, "slices": report.n_items, "seconds": seconds,
                "slices_per_s": report.n_items / seconds, "db_bytes": db_bytes,
                "blob_bytes": blob_bytes}


def run(case: Path, pg_url: str | None, repeats: int, out_csv: Path) -> pd.DataFrame:
    rows = []
    for db in ["sqlite"] + (["postgresql"] if pg_url else []):
        for r in range(repeats):
            rows.append({**_one_run(db, case, pg_url), "repeat": r})
    runs = pd.DataFrame(rows)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out_csv, index=False)
    summary = runs.groupby("database").agg(
        slices=("slices", "first"),
        median_s=("seconds", "median"),
        median_slices_per_s=("slices_per_s", "median"),
        db_mb_per_1000=("db_bytes", lambda b: statistics.median(b) / 1e6),
        blob_mb_per_1000=("blob_bytes", lambda b: statistics.median(b) / 1e6),
    )
    per_k = 1000 / summary["slices"]
    summary["db_mb_per_1000"] *= per_k
    summary["blob_mb_per_1000"] *= per_k
    summary["store_mb_per_1000"] = summary["db_mb_per_1000"] + summary["blob_mb_per_1000"]
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="medloop bench ingest")
    p.add_argument("--case", type=Path, default=DEFAULT_CASE,
                   help="path prefix of <case>_image.nii.gz and <case>_label.nii.gz")
    p.add_argument("--pg", default=os.environ.get("MEDLOOP_TEST_PG_URL"),
                   help="PostgreSQL URL of a role that may create databases")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("bench-results/ingest.csv"))
    args = p.parse_args(argv)
    summary = run(args.case, args.pg, args.repeats, args.out)
    pd.set_option("display.width", 120)
    print(summary.round(2).to_string())
    print(f"\nper-run rows written to {args.out}")
    if not args.pg:
        print("(PostgreSQL skipped: pass --pg URL or set MEDLOOP_TEST_PG_URL)")
    return 0
