"""The background loop's speed on this machine, in one run on a temporary SQLite store with
one worker process (`medloop worker --poll 0.2`), as a deployment runs it:

- Retrain -> promoted -> refreshed proposals: wall time from a curator's "Retrain now" on
  `--slices` validated train slices (synthetic MR-like slices with one round lesion each,
  grouped into patients) to the new version being champion, then to its `propose` job done;
  per job (train / evaluate / propose) from the job rows, the promoted model's holdout Dice,
  the proposals written and their Dice against the slices' truth.
- Worker overhead per empty job: `--noops` `noop` jobs queued at once for a warm worker;
  the median gap between consecutive finishes, and the throughput.
- Next-item latency on the review screen, idle worker vs worker training: what the page does
  to show the next item (lease it, load its image and proposal mask from the blob store; and
  the whole render: progress counts, neighbour thumbnails, the overlay PNG), each item then
  accepted so the queue moves.

    medloop bench loop [--slices 200] [--size 256] [--epochs 30] [--out CSV]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.bench.review import CLASSES, Lesion, _percentile, _volume
from pipeline.imaging import dice as _dice
from store.db import Store
from store.models import Job, JobStatus
from store.settings import load_settings

PER_PATIENT = 20  # slices per synthetic patient (one volume each)
CLINICIAN, CURATOR, PASSWORD = "bench-clinician", "bench-curator", "bench-password-1"
DONE = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


@dataclass
class Bench:
    store: Store
    project_id: int
    clinician: int
    curator: int
    truth: dict[int, np.ndarray]  # pool item -> its lesion mask


def _disc(lesion: Lesion, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    return ((xx - lesion.cx) ** 2 + (yy - lesion.cy) ** 2 <= lesion.r ** 2).astype(np.uint8)


def _patients(n: int) -> list[int]:
    """Slices per patient: n split into volumes of PER_PATIENT (the last one shorter)."""
    return [min(PER_PATIENT, n - k) for k in range(0, n, PER_PATIENT)]


def build_store(data_dir: Path, n_train: int, n_holdout: int, n_pool: int, size: int,
                epochs: int | None, settings: dict | None = None) -> Bench:
    """A new SQLite store under data_dir with the phantom project of `populate`."""
    url = f"sqlite:///{data_dir / 'medloop.db'}"
    store = Store(replace(load_settings(), data_dir=data_dir, database_url=url))
    store.upgrade()
    return populate(store, n_train, n_holdout, n_pool, size, epochs, settings)


def populate(store: Store, n_train: int, n_holdout: int, n_pool: int, size: int,
             epochs: int | None, settings: dict | None = None) -> Bench:
    """A phantom project (MR-like slices with one round lesion each, in patients of
    PER_PATIENT slices) in `store`: train and holdout slices validated by the clinician (the
    holdout is the reference of the evaluation); the pool unreviewed, its truth kept as
    ground-truth labels. `settings` override the project's training settings."""
    from store import review
    from store.imports import SeriesRecord, SliceRecord, record_series
    from store.models import Role
    from store.projects import create_project
    from store.retraining import update_training_settings
    from store.users import create_user

    with store.session(immediate=True) as s:
        project = create_project(s, "bench-loop", "MR", CLASSES, "bench")
        clinician = create_user(s, CLINICIAN, Role.clinician, PASSWORD, "bench").id
        curator = create_user(s, CURATOR, Role.curator, PASSWORD, "bench").id
    with store.session(immediate=True) as s:
        # Automatic retraining off: accepting pool items must not start training while the
        # idle latency is measured. Everything else stays at the project's defaults.
        overrides = {"retrain_after_labels": 0, "image_size": size, **(settings or {})}
        if epochs is not None:
            overrides["epochs"] = epochs
        update_training_settings(s, curator, project.id, **overrides)

    rng = np.random.default_rng(0)
    truth: dict[int, np.ndarray] = {}
    to_validate: list[tuple[int, np.ndarray]] = []
    patient = 0
    for split, n in (("train", n_train), ("holdout", n_holdout), ("pool", n_pool)):
        for n_slices in _patients(n):
            vol, lesions = _volume(rng, n_slices, size)
            masks = [_disc(lesion, size) for lesion in lesions]
            sha, _ = store.blobs.put_array(vol)
            slices = [SliceRecord(blob=store.blobs.put_array(vol[k])[0], shape=[size, size],
                                  dtype="int16", pixel_spacing=[1.0, 1.0], slice_index=k,
                                  mask_blob=store.blobs.put_array(masks[k])[0])
                      for k in range(n_slices)]
            series = SeriesRecord(source_format="nifti", source_name=f"bench-{patient}.nii.gz",
                                  modality="MR", blob=sha, shape=list(vol.shape), dtype="int16",
                                  spacing=[1.0, 1.0, 1.0], affine=None, axis=0,
                                  patient_pseudonym=f"bench-{patient}", slices=slices)
            patient += 1
            with store.session(immediate=True) as s:
                # the split is decided per patient: a holdout fraction of 1 or 0 picks it
                _, items = record_series(s, project, series, "bench",
                                         1.0 if split == "holdout" else 0.0, 0.0)
                ids = [i.id for i in items]
            if split == "pool":
                truth.update(zip(ids, masks, strict=True))
            else:
                to_validate += zip(ids, masks, strict=True)
    for item_id, mask in to_validate:
        review.correct(store, clinician, item_id, None, mask, seconds=1.0, interactions=1,
                       propagate=False)
    return Bench(store, project.id, clinician, curator, truth)


# --------------------------------------------------------------------------- worker


def start_worker(store: Store, log: Path) -> subprocess.Popen:
    """One `medloop worker` on the bench store; the rest of the environment (threads
    included) as this machine has it."""
    env = {**os.environ, "MEDLOOP_DATA_DIR": str(store.settings.data_dir),
           "MEDLOOP_DATABASE_URL": store.settings.database_url}
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker", "--poll", "0.2"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)


def stop_worker(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        worker.terminate()  # SIGTERM: the job in hand finishes or checkpoints
        try:
            worker.wait(timeout=120)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def wait_until(test: Callable[[], bool], worker: subprocess.Popen, log: Path,
               timeout_s: float, what: str, poll_s: float = 0.1) -> float:
    """Poll test() until it holds; returns the perf_counter time it was first seen true."""
    end = time.perf_counter() + timeout_s
    while True:
        if test():
            return time.perf_counter()
        if worker.poll() is not None:
            raise RuntimeError(f"the worker exited ({worker.returncode}) while waiting for "
                               f"{what}:\n{log.read_text()[-3000:]}")
        if time.perf_counter() > end:
            raise TimeoutError(f"{what}: not done after {timeout_s:.0f} s")
        time.sleep(poll_s)


def _jobs(store: Store, kind: str | None = None, after: int = 0) -> list[Job]:
    from sqlmodel import select

    with store.session() as s:
        q = select(Job).where(Job.id > after).order_by(Job.id)
        if kind is not None:
            q = q.where(Job.kind == kind)
        return list(s.exec(q).all())


def _job(store: Store, job_id: int) -> Job:
    with store.session() as s:
        return s.get(Job, job_id)


def _enqueue(store: Store, kind: str, n: int = 1, project_id: int | None = None,
             **payload: object) -> list[int]:
    from store.jobs import enqueue

    with store.session(immediate=True) as s:
        jobs = [enqueue(s, kind, "bench", project_id, **payload) for _ in range(n)]
        s.flush()
        return [j.id for j in jobs]


def _all_done(store: Store, ids: list[int]) -> bool:
    from sqlmodel import func, select

    with store.session() as s:
        n = s.exec(select(func.count(Job.id)).where(Job.id.in_(ids),
                                                     Job.status.in_(DONE))).one()
    return n == len(ids)


# --------------------------------------------------------------------------- measurements


def measure_noops(b: Bench, worker: subprocess.Popen, log: Path, n: int) -> list[dict]:
    """n empty jobs queued at once for the warm worker."""
    ids = _enqueue(b.store, "noop", n)
    t0 = time.perf_counter()
    t1 = wait_until(lambda: _all_done(b.store, ids), worker, log, 60 + n, f"{n} noop jobs",
                    poll_s=0.02)
    jobs = _jobs(b.store, "noop", after=ids[0] - 1)
    bad = [j.id for j in jobs if j.status != JobStatus.succeeded]
    if bad:
        raise RuntimeError(f"noop jobs {bad} did not succeed")
    finishes = sorted(j.finished_at for j in jobs)
    gaps = np.diff([f.timestamp() for f in finishes]) * 1000
    runs = [(j.finished_at - j.started_at).total_seconds() * 1000 for j in jobs]
    span = (finishes[-1] - finishes[0]).total_seconds()
    return [
        _row("worker: per empty job (median gap between finishes)", float(np.median(gaps)),
             "ms", f"{n} noop jobs queued at once; p95 {_percentile(list(gaps), 95):.1f} ms; "
                   "claim + run + finish, each its own transaction"),
        _row("worker: empty job claimed -> finished (median)", float(np.median(runs)), "ms",
             "heartbeat thread start/join + the finish transaction"),
        _row("worker: empty-job throughput", (n - 1) / span if span > 0 else float("nan"),
             "jobs/s", f"first to last finish; {n} jobs seen done by the bench after "
                       f"{t1 - t0:.2f} s"),
    ]


def measure_retrain(b: Bench, worker: subprocess.Popen, log: Path, timeout_s: float
                    ) -> list[dict]:
    """'Retrain now' -> champion -> propose job succeeded, with the jobs' own times."""
    from sqlmodel import func, select

    from store import labels, registry
    from store.models import Label, LabelKind
    from store.retraining import retrain_now

    last_job = max([j.id for j in _jobs(b.store)] or [0])
    with b.store.session() as s:
        last_label = s.exec(select(func.max(Label.id))).one() or 0
    t0 = time.perf_counter()
    with b.store.session(immediate=True) as s:
        train_id = retrain_now(s, b.curator, b.project_id)[0].id

    seen: dict[str, float] = {}

    def settled() -> bool:
        with b.store.session() as s:
            mv = registry.champion(s, b.project_id)
        if mv is not None and mv.name.endswith(f"-j{train_id}"):
            seen.setdefault("champion", time.perf_counter())
        jobs = _jobs(b.store, after=last_job)
        failed = [j for j in jobs if j.status in (JobStatus.failed, JobStatus.cancelled)]
        if failed:
            raise RuntimeError(f"{failed[0].kind} job {failed[0].id} {failed[0].status.value}: "
                               f"{failed[0].error}")
        if "champion" not in seen and any(j.kind == "evaluate" and j.status in DONE
                                          for j in jobs):
            raise RuntimeError("the new version was evaluated but not promoted")
        return any(j.kind == "propose" and j.status == JobStatus.succeeded for j in jobs)

    t_done = wait_until(settled, worker, log, timeout_s, "a promoted model and refreshed "
                        "proposals", poll_s=0.2)
    t_champion = seen["champion"]
    jobs = {j.kind: j for j in _jobs(b.store, after=last_job)}
    with b.store.session() as s:
        mv = registry.champion(s, b.project_id)
        new = s.exec(select(Label).where(Label.id > last_label,
                                         Label.kind == LabelKind.proposal)).all()
        heads = {i: labels.head(s, i) for i in b.truth}
    counts = json.loads(b.store.blobs.get_bytes(jobs["propose"].checkpoint))["counts"] \
        if jobs["propose"].checkpoint else {}
    dice = [_dice(b.store.blobs.get_array(h.mask_blob), b.truth[i])
            for i, h in heads.items() if h is not None and h.mask_blob is not None]
    train = mv.metrics["train"]
    cfg = mv.config
    holdout = mv.metrics["holdout"]
    rows = [
        _row("retrain -> promoted", t_champion - t0, "s",
             f"'Retrain now' to the new version champion: {train['items']} validated slices "
             f"at {cfg['image_size']} px, {cfg['epochs']} epochs, {cfg['architecture']}"),
        _row("retrain -> proposals refreshed", t_done - t0, "s",
             "'Retrain now' to the propose job succeeded (one worker, polling every 0.2 s)"),
    ]
    for kind in ("train", "evaluate", "propose"):
        j = jobs[kind]
        rows.append(_row(f"  {kind} job", (j.finished_at - j.started_at).total_seconds(), "s",
                         f"job {j.id}: started -> finished; {j.message}"))
    handoffs = sum((jobs[b_].started_at - jobs[a].finished_at).total_seconds()
                   for a, b_ in (("train", "evaluate"), ("evaluate", "propose")))
    handoffs += (jobs["train"].started_at - jobs["train"].created_at).total_seconds()
    rows += [
        _row("  queue waits (3 hand-offs)", handoffs, "s",
             "queued -> claimed, summed over train, evaluate and propose"),
        _row("  training seconds per epoch", train["seconds"] / max(cfg["epochs"], 1), "s",
             f"{train['seconds']:.0f} s for {cfg['epochs']} epochs; final loss "
             f"{train['losses'][-1]:.3f}"),
        _row("promoted model: holdout Dice", holdout.get("mean_dice", float("nan")), "",
             f"{holdout.get('cases', 0)} holdout slices; {mv.metrics['decision']['reason']}"),
        _row("proposals written", len(new), "labels",
             f"pool of {len(b.truth)}: " + ", ".join(f"{v} {k}" for k, v in counts.items())),
        _row("proposals: Dice vs truth", float(np.mean(dice)) if dice else float("nan"), "",
             f"mean over {len(dice)} pool slices (the synthetic lesion)"),
    ]
    return rows


def show_next_item(b: Bench) -> tuple[float, float, tuple[int, int | None] | None]:
    """What the review page does to show the next item, as pages/review.py does it:
    (lease + load seconds, whole render seconds, (item, seen head)) or None when empty."""
    from sqlmodel import select

    from pipeline import review_view as rv
    from store import labels, review
    from store.models import Item

    t0 = time.perf_counter()
    item = review.lease_next(b.store, b.clinician, b.project_id)
    if item is None:
        return time.perf_counter() - t0, time.perf_counter() - t0, None
    with b.store.session() as s:
        head = labels.head(s, item.id)
    image = b.store.blobs.get_array(item.blob)
    mask = b.store.blobs.get_array(head.mask_blob) if head is not None and \
        head.mask_blob is not None else np.zeros(tuple(item.shape[:2]), np.uint8)
    t1 = time.perf_counter()
    with b.store.session() as s:
        review.progress(s, b.clinician, b.project_id)
        near = s.exec(select(Item).where(
            Item.volume_id == item.volume_id,
            Item.slice_index.in_([item.slice_index - 1, item.slice_index + 1]))).all()
    presets = rv.window_presets(item.modality, image)
    window = presets[rv.default_preset(item.modality)]
    for other in near:
        rv.context_picture(b.store.blobs.get_array(other.blob), window)
    rv.png_bytes(rv.render(image, mask if mask.any() else None, CLASSES, window, 0.35,
                           rv.Screen.fit(item.shape[:2])))
    t2 = time.perf_counter()
    return t1 - t0, t2 - t0, (item.id, head.id if head is not None else None)


def review_latencies(b: Bench, n: int, condition: str) -> list[dict]:
    from store import review

    rows = []
    for i in range(n):
        load_s, total_s, shown = show_next_item(b)
        if shown is None:
            raise RuntimeError(f"the review queue ran dry after {i} items ({condition}): "
                               "raise --pool")
        rows.append({"condition": condition, "i": i, "item": shown[0],
                     "lease_load_ms": load_s * 1000, "render_ms": total_s * 1000})
        review.accept(b.store, b.clinician, shown[0], shown[1], seconds=1.0, propagate=False)
    return rows


def measure_review(b: Bench, worker: subprocess.Popen, log: Path, n: int,
                   busy_epochs: int) -> tuple[list[dict], pd.DataFrame]:
    """n items with the worker idle, then n while it trains (a second training job, cancelled
    once measured)."""
    from store.jobs import request_cancel

    samples = review_latencies(b, n, "idle")
    (train_id,) = _enqueue(b.store, "train", project_id=b.project_id, reason="bench: busy",
                           overrides={"epochs": busy_epochs})

    def training() -> bool:  # past loading the labels: inside the epoch loop
        job = _job(b.store, train_id)
        if job.status in DONE:
            raise RuntimeError(f"the busy training job ended ({job.status.value}) before the "
                               "measurement: raise --busy-epochs")
        return job.status == JobStatus.running and job.progress > 2.0

    wait_until(training, worker, log, 600, "the busy training job to start its epochs")
    samples += review_latencies(b, n, "training")
    job = _job(b.store, train_id)
    still_training = job.status == JobStatus.running
    with b.store.session(immediate=True) as s:
        if job.status not in DONE:
            request_cancel(s, train_id, b.curator)
    wait_until(lambda: _all_done(b.store, [train_id]), worker, log, 300,
               "the busy training job to stop")
    runs = pd.DataFrame(samples)
    rows = []
    for col, what in (("lease_load_ms", "lease + load image and mask"),
                      ("render_ms", "whole item render")):
        stats = {}
        for cond in ("idle", "training"):
            v = runs.loc[runs.condition == cond, col].tolist()
            stats[cond] = (float(np.median(v)), _percentile(v, 95))
            note = f"{len(v)} items, each then accepted"
            if cond == "training":
                note += "; worker training throughout" if still_training else \
                    "; the training job ENDED during the measurement"
            rows.append(_row(f"next item, {what}, {cond}: median", stats[cond][0], "ms", note))
            rows.append(_row(f"next item, {what}, {cond}: p95", stats[cond][1], "ms", ""))
        rows.append(_row(f"next item, {what}: training / idle (median)",
                         stats["training"][0] / stats["idle"][0], "x",
                         f"p95 ratio {stats['training'][1] / stats['idle'][1]:.2f}"))
    return rows, runs


def _row(metric: str, value: float, unit: str, notes: str) -> dict:
    return {"metric": metric, "value": value, "unit": unit, "notes": notes}


# --------------------------------------------------------------------------- run


def run(slices: int, holdout: int, pool: int, size: int, epochs: int | None, noops: int,
        reviews: int, busy_epochs: int, out_csv: Path, data_dir: Path | None = None,
        timeout_s: float = 3600.0, floor: float | None = None) -> pd.DataFrame:
    if pool < 2 * reviews:
        raise SystemExit(f"--pool ({pool}) must hold the {2 * reviews} items reviewed "
                         "(--reviews idle + --reviews while training)")
    rows = []
    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        data = Path(tmp)
        t0 = time.perf_counter()
        b = build_store(data, slices, holdout, pool, size, epochs,
                        {} if floor is None else {"min_class_dice": floor})
        print(f"store: {slices} validated train, {holdout} holdout, {pool} pool slices at "
              f"{size} px in {time.perf_counter() - t0:.1f} s", flush=True)
        log = data / "worker.log"
        worker = start_worker(b.store, log)
        try:
            # Warm: the worker has started, imported its handlers and run one job.
            warm = _enqueue(b.store, "noop")
            wait_until(lambda: _all_done(b.store, warm), worker, log, 300, "the worker to warm up")
            print(f"worker warm after {time.perf_counter() - t0:.1f} s; {noops} noop jobs",
                  flush=True)
            rows += measure_noops(b, worker, log, noops)
            print("retrain -> promoted -> proposals ...", flush=True)
            rows += measure_retrain(b, worker, log, timeout_s)
            print(f"review latency: {reviews} items idle, {reviews} while training ...",
                  flush=True)
            review_rows, runs = measure_review(b, worker, log, reviews, busy_epochs)
            rows += review_rows
        finally:
            stop_worker(worker)
    table = pd.DataFrame(rows)
    table.attrs["omp"] = os.environ.get("OMP_NUM_THREADS", "unset")
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_csv, index=False)
    runs.to_csv(out_csv.with_name(f"{out_csv.stem}_review.csv"), index=False)
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="medloop bench loop", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slices", type=int, default=200, help="validated train slices")
    p.add_argument("--holdout", type=int, default=40, help="holdout slices (validated)")
    p.add_argument("--pool", type=int, default=60,
                   help="unreviewed slices: proposals are refreshed for them, then reviewed")
    p.add_argument("--size", type=int, default=256, help="slice size and training image size")
    p.add_argument("--epochs", type=int, default=None,
                   help="training epochs (default: the project's default, 30)")
    p.add_argument("--noops", type=int, default=200, help="empty jobs for the worker overhead")
    p.add_argument("--reviews", type=int, default=30, help="items per review condition")
    p.add_argument("--busy-epochs", type=int, default=1000,
                   help="epochs of the training job that keeps the worker busy (cancelled)")
    p.add_argument("--timeout", type=float, default=3600.0,
                   help="seconds to wait for the retrained model and its proposals")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="where the temporary store goes (default: the system's temp dir)")
    p.add_argument("--floor", type=float, default=None,
                   help="the project's Dice floor for promotion (default: the project "
                        "default); this bench measures time, so a tiny run may set 0")
    p.add_argument("--out", type=Path, default=Path("bench-loop.csv"))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # the bench process only renders; leave the cores to the worker
    load = os.getloadavg()[0]
    table = run(args.slices, args.holdout, args.pool, args.size, args.epochs, args.noops,
                args.reviews, args.busy_epochs, args.out, args.data_dir, args.timeout,
                args.floor)
    print(f"\nbackground loop, SQLite, one worker, {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS={table.attrs['omp']}; load average {load:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after")
    with pd.option_context("display.width", 250, "display.max_colwidth", 120,
                           "display.max_rows", 100):
        print(table.to_string(index=False, formatters={"value": "{:.3f}".format}))
    print(f"\nwritten to {args.out} (per-item review latencies: "
          f"{args.out.with_name(args.out.stem + '_review.csv')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
