"""What bounding the FM refinement of coarse masks costs and saves, and how the `propose`
job behaves on one worker (issue 9: a weak model's speckle became ~600 boxes a lung slice,
110 s a slice, a cancel that took minutes and an export that waited 11 minutes).

On the shared radiomics cases (brain1, brain2, breast1 MR; lung1 CT) and the demo's MNI152
tissue slices, in three parts:

- rules (no FM): boxes per slice and the real structures kept under each component rule,
  on ground truth plus a weak model's speckle, on an untrained UNet's masks (a deliberately
  weak task model: speckle with no dominant finding) and on UNets trained 1 and 2 epochs;
  a structure is a ground-truth component of >= MIN_COMPONENT_PX px that the coarse mask
  touches, kept when a component that gets a box touches it.
- fm: per item, boxes before/after bounding, seconds to embed and to decode, and the
  proposal's Dice against the truth (speckled truth as the coarse mask).
- job: one `medloop worker` process on a temporary SQLite store; a propose job with the
  untrained UNet over `--items` pool items: seconds per item, the largest gap between
  progress updates of the job row, how long an export queued behind it waits (and that the
  propose job still succeeds after it), and how long a cancel takes to act.

    medloop bench propose [--items 40] [--unbounded-items 2] [--weak-epochs 1 2]
                          [--parts rules fm job] [--out-dir bench-results]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from pipeline.fm.multiclass import kept_components
from pipeline.fm.proposals import (
    BOUNDED,
    MIN_COMPONENT_PX,
    UNBOUNDED,
    BoxRule,
    coarse_prompts,
    segment_classes,
)
from pipeline.imaging import dice as _dice
from pipeline.task.model import Sample, TaskModel, TaskModelConfig, build_network, train

RADIOMICS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "radiomics"
VOLUMES = {"lung1": "CT", "brain1": "MR", "brain2": "MR", "breast1": "MR"}
# The lung slices: ~600 boxes on 512 x 512; speckle scales with the image area.
SPECKLE_PER_MPX = 600 / (512 * 512 / 1e6)
_EIGHT = np.ones((3, 3), bool)


@dataclass
class Slice:
    volume: str
    z: int
    modality: str
    image: np.ndarray
    truth: np.ndarray  # label map
    classes: tuple[int, ...]


def radiomics_slices(data: Path = RADIOMICS) -> list[Slice]:
    out = []
    for name, modality in VOLUMES.items():
        image = np.asanyarray(nib.load(data / f"{name}_image.nii.gz").dataobj)
        label = np.asanyarray(nib.load(data / f"{name}_label.nii.gz").dataobj)
        out += [Slice(name, z, modality, image[:, :, z].astype(np.float32),
                      (label[:, :, z] > 0).astype(np.uint8), (1,))
                for z in range(image.shape[2])]
    return out


def mni_slices() -> list[Slice]:
    from pipeline.demo import mni152_volumes

    with tempfile.TemporaryDirectory() as tmp:
        image_path, label_path = mni152_volumes(Path(tmp))
        image = np.asanyarray(nib.load(image_path).dataobj)
        label = np.asanyarray(nib.load(label_path).dataobj)
    return [Slice("mni152", z, "MR", image[:, :, z].astype(np.float32),
                  label[:, :, z].astype(np.uint8), (1, 2)) for z in range(image.shape[2])]


def speckle(shape: tuple[int, int], rng: np.random.Generator,
            per_mpx: float = SPECKLE_PER_MPX, model_px: int = 256) -> np.ndarray:
    """A weak model's speckle: blobs on the model's grid (`model_px`), upsampled to the
    image, about `per_mpx` components per megapixel of image."""
    scale = max(1, round(max(shape) / model_px))
    small = (max(1, -(-shape[0] // scale)), max(1, -(-shape[1] // scale)))
    noise = ndimage.gaussian_filter(rng.standard_normal(small), 0.8)
    target = per_mpx * shape[0] * shape[1] / 1e6
    lo, hi = 0.5, 4.0  # threshold in noise standard deviations, bisected to the target count
    for _ in range(20):
        mid = (lo + hi) / 2
        n = ndimage.label(noise > mid * noise.std(), structure=_EIGHT)[1]
        lo, hi = (mid, hi) if n > target else (lo, mid)
    blobs = np.kron(noise > hi * noise.std(), np.ones((scale, scale), bool))
    return blobs[:shape[0], :shape[1]]


def speckled(truth: np.ndarray, value: int, rng: np.random.Generator) -> np.ndarray:
    """The truth of one class plus speckle, as a label map of that class."""
    out = np.where(truth == value, value, 0).astype(np.uint8)
    out[speckle(truth.shape, rng) & (out == 0)] = value
    return out


def untrained_task_model(class_values: tuple[int, ...] = (1,), image_size: int = 128,
                         seed: int = 1) -> TaskModel:
    """A deliberately weak task model: an untrained UNet. With seed 1 at 128 px it paints
    speckle: 650-750 components of >= 8 px on a 512 x 512 lung1 slice, 330-530 on brain."""
    cfg = TaskModelConfig(class_values=class_values, image_size=image_size, epochs=0,
                          seed=seed)
    return TaskModel(build_network(cfg).eval(), cfg)


def trained_task_model(slices: list[Slice], epochs: int, image_size: int = 256) -> TaskModel:
    cfg = TaskModelConfig(class_values=(1,), image_size=image_size, epochs=epochs)
    net, _ = train([Sample(s.image, s.modality, s.truth) for s in slices], cfg)
    return TaskModel(net.eval(), cfg)


def _predict(model: TaskModel, slices: list[Slice]) -> list[np.ndarray]:
    return model.predict([s.image for s in slices], [s.modality for s in slices])


# --------------------------------------------------------------------------- rules

RULES: list[tuple[str, BoxRule]] = [
    ("unbounded: every component >= 8 px", UNBOUNDED),
    ("< 2% of largest & < 0.025% of image", replace(UNBOUNDED, min_fraction_of_largest=0.02,
                                                    min_fraction_of_image=2.5e-4)),
    ("< 5% of largest & < 0.01% of image", replace(UNBOUNDED, min_fraction_of_largest=0.05,
                                                   min_fraction_of_image=1e-4)),
    ("< 5% of largest & < 0.025% of image", replace(UNBOUNDED, min_fraction_of_largest=0.05,
                                                    min_fraction_of_image=2.5e-4)),
    ("< 5% of largest & < 0.05% of image", replace(UNBOUNDED, min_fraction_of_largest=0.05,
                                                   min_fraction_of_image=5e-4)),
    ("< 10% of largest & < 0.025% of image", replace(UNBOUNDED, min_fraction_of_largest=0.1,
                                                     min_fraction_of_image=2.5e-4)),
    ("at most 8 a class", replace(UNBOUNDED, max_boxes=8)),
    ("at most 16 a class", replace(UNBOUNDED, max_boxes=16)),
    ("at most 32 a class", replace(UNBOUNDED, max_boxes=32)),
    ("5% & 0.025%, at most 8", replace(BOUNDED, max_boxes=8)),
    ("BOUNDED (the default)", BOUNDED),
]


def rule_stats(cases: list[tuple[np.ndarray, np.ndarray, int]], rule: BoxRule) -> dict:
    """cases: (truth label map, coarse label map, class value). Boxes per case, boxes on
    no truth pixel (noise), and the truth structures (>= MIN_COMPONENT_PX) the coarse mask
    touches that keep a box, with the share of their pixels inside kept components."""
    boxes, noise, touched, kept, px_touched, px_kept = [], [], 0, 0, 0, 0
    for truth, coarse, value in cases:
        comps, count = ndimage.label(coarse == value, structure=_EIGHT)
        sizes = np.bincount(comps.ravel(), minlength=count + 1)[1:]
        keep = np.zeros(count + 1, bool)
        keep[kept_components(sizes, comps.size, rule.min_pixels, rule.min_fraction_of_largest,
                             rule.min_fraction_of_image, rule.max_boxes) + 1] = True
        on_truth = np.zeros(count + 1, bool)
        on_truth[np.unique(comps[truth == value])] = True
        on_truth[0] = False
        boxes.append(int(keep.sum()))
        noise.append(int((keep & ~on_truth).sum()))
        structures, n_struct = ndimage.label(truth == value, structure=_EIGHT)
        for index, where in enumerate(ndimage.find_objects(structures), start=1):
            inside = structures[where] == index
            if inside.sum() < MIN_COMPONENT_PX:
                continue
            hit = comps[where][inside]
            if not hit.any():
                continue  # the coarse mask missed it: no rule can keep it
            touched += 1
            kept += bool(keep[hit].any())
            px_touched += int((hit > 0).sum())
            px_kept += int(keep[hit].sum())
    return {"slices": len(cases), "boxes/slice mean": float(np.mean(boxes)),
            "boxes/slice max": int(max(boxes)), "noise boxes/slice": float(np.mean(noise)),
            "structures touched": touched, "structures kept": kept,
            "truth px kept": px_kept / max(px_touched, 1)}


def measure_rules(weak_epochs: list[int], rng: np.random.Generator) -> pd.DataFrame:
    rad, mni = radiomics_slices(), mni_slices()
    sets = {
        "radiomics: truth + speckle": [(s.truth, speckled(s.truth, 1, rng), 1) for s in rad],
        "radiomics: untrained UNet": [(s.truth, p, 1) for s, p in
                                      zip(rad, _predict(untrained_task_model(), rad),
                                          strict=True)],
        "MNI152 tissue: truth": [(s.truth, s.truth, v) for s in mni for v in s.classes],
        "MNI152 tissue: truth + speckle": [(s.truth, speckled(s.truth, v, rng), v)
                                           for s in mni for v in s.classes],
    }
    for epochs in weak_epochs:
        print(f"training a weak UNet for {epochs} epoch(s) on the radiomics slices ...",
              flush=True)
        model = trained_task_model(rad, epochs)
        sets[f"radiomics: UNet after {epochs} epoch(s)"] = [
            (s.truth, p, 1) for s, p in zip(rad, _predict(model, rad), strict=True)]
    rows = []
    for name, cases in sets.items():
        for label, rule in RULES:
            rows.append({"cases": name, "rule": label, **rule_stats(cases, rule)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- fm


def bench_slices(slices: list[Slice], n: int) -> list[Slice]:
    """n slices, lesion slices first, taking the volumes in turn (lung first)."""
    by_volume: dict[str, list[Slice]] = {}
    for s in sorted(slices, key=lambda s: (not s.truth.any(), s.z)):
        by_volume.setdefault(s.volume, []).append(s)
    out, turn = [], 0
    while len(out) < min(n, len(slices)):
        queue = list(by_volume.values())[turn % len(by_volume)]
        if queue:
            out.append(queue.pop(0))
        turn += 1
    return out


def measure_fm(n_items: int, n_unbounded: int, rng: np.random.Generator) -> pd.DataFrame:
    from pipeline.fm import load_foundation_model

    fm = load_foundation_model()
    slices = bench_slices(radiomics_slices(), n_items)
    weak = _predict(untrained_task_model(), slices)
    rows = []
    for k, (s, coarse_weak) in enumerate(zip(slices, weak, strict=True)):
        t0 = time.perf_counter()
        # the preprocessing pipeline.fm.proposals.fm_modality picks for the item
        emb = fm.embed(s.image, "CT:percentile" if s.modality == "CT" else s.modality)
        embed_s = time.perf_counter() - t0
        for source, coarse in (("untrained UNet", coarse_weak),
                               ("truth + speckle", speckled(s.truth, 1, rng))):
            before = len(coarse_prompts(coarse, s.classes, UNBOUNDED).boxes)
            t0 = time.perf_counter()
            label_map, _, after = segment_classes(fm, emb, coarse, s.classes)
            bounded_s = time.perf_counter() - t0
            row = {"slice": f"{s.volume}:{s.z}", "pixels": s.truth.size, "source": source,
                   "boxes before": before, "boxes after": after, "embed s": embed_s,
                   "decode s (bounded)": bounded_s,
                   "s/box": bounded_s / after if after else float("nan"),
                   "decode s (unbounded)": float("nan"),
                   "dice (bounded)": _dice(label_map, s.truth) if s.truth.any() else
                   float("nan"), "dice (unbounded)": float("nan")}
            if k < n_unbounded:
                t0 = time.perf_counter()
                full, _, _ = segment_classes(fm, emb, coarse, s.classes, rule=UNBOUNDED)
                row["decode s (unbounded)"] = time.perf_counter() - t0
                if s.truth.any():
                    row["dice (unbounded)"] = _dice(full, s.truth)
            rows.append(row)
        print(f"  fm: {k + 1}/{len(slices)} items", flush=True)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- job


@dataclass
class PoolProject:
    project_id: int
    clinician: int
    curator: int
    pool: list[int]  # the unreviewed items, lung slices first


def pool_project(store, n_items: int, volumes: dict[str, str] | None = None,
                 data: Path = RADIOMICS) -> PoolProject:
    """The radiomics cases (`volumes`: name -> modality) in a new project of `store`, with
    `n_items` slices unreviewed (the pool: CT first) and the rest validated (ground truth
    saved as a clinician's correction: what an export writes); automatic retraining off."""
    from sqlmodel import select

    from pipeline.ingest.importer import ingest
    from store import labels, review
    from store.models import Item, Role
    from store.projects import create_project
    from store.retraining import update_training_settings
    from store.users import create_user

    with store.session(immediate=True) as s:
        project = create_project(s, "bench-propose", "MR",
                                 [{"name": "lesion", "value": 1, "color": "#ff0000"}], "bench")
        clinician = create_user(s, "bench-clinician", Role.clinician, "bench-password-1",
                                "bench").id
        curator = create_user(s, "bench-curator", Role.curator, "bench-password-1",
                              "bench").id
    with store.session(immediate=True) as s:
        # the validations below must not queue training: only the propose job is measured
        update_training_settings(s, curator, project.id, retrain_after_labels=0)
    for name, modality in (volumes or VOLUMES).items():
        ingest(store, project, [data / f"{name}_image.nii.gz"],
               masks=[data / f"{name}_label.nii.gz"], modality=modality)
    with store.session() as s:
        items = s.exec(select(Item).where(Item.project_id == project.id)
                       .order_by(Item.id)).all()
        truth = {i.id: labels.ground_truth(s, i.id).mask_blob for i in items}
        pool = [i.id for i in sorted(items, key=lambda i: (i.modality != "CT", i.id))][:n_items]
    for item_id, blob in truth.items():
        if item_id not in pool:
            review.correct(store, clinician, item_id, None, store.blobs.get_array(blob),
                           seconds=1.0, propagate=False)
    return PoolProject(project.id, clinician, curator, pool)


def register_task_model(store, project_id: int, model: TaskModel, name: str) -> int:
    """A task-model version (a candidate, not champion) a propose job can name."""
    from store.registry import ensure_model_version

    sha, _ = store.blobs.put_bytes(model.to_bytes())
    with store.session(immediate=True) as s:
        return ensure_model_version(s, "task", name, "bench", project_id=project_id,
                                    config=model.cfg.to_dict(), blob=sha).id


class _Watch:
    """Polls one job row; keeps when its progress or message changed, and when it stopped
    running (yielded, or ended)."""

    def __init__(self, store, job_id: int):
        self.store, self.job_id = store, job_id
        self.changes: list[tuple[float, bool]] = []  # (when, running)
        self.last: tuple | None = None

    def poll(self):
        from store.models import Job, JobStatus

        with self.store.session() as s:
            job = s.get(Job, self.job_id)
        state = (job.status, job.progress, job.message)
        if state != self.last:
            self.changes.append((time.perf_counter(), job.status == JobStatus.running))
        self.last = state
        return job

    def max_gap(self) -> float:
        """The longest a running job's row stayed unchanged."""
        gaps = [b[0] - a[0] for a, b in zip(self.changes, self.changes[1:], strict=False)
                if a[1]]
        return max(gaps) if gaps else float("nan")

    def running_s(self) -> float:
        return sum(b[0] - a[0] for a, b in zip(self.changes, self.changes[1:], strict=False)
                   if a[1])


def _items_done(message: str) -> int:
    """k of a 'k/N items' message (0 for any other message)."""
    head = message.split("/", 1)[0]
    return int(head) if head.isdigit() else 0


def measure_job(n_items: int, timeout_s: float, data_dir: Path | None) -> pd.DataFrame:
    from sqlmodel import select

    from pipeline.bench.loop import start_worker, stop_worker
    from store.jobs import enqueue, request_cancel
    from store.models import AuditEvent, Job, JobStatus

    done = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)
    rows = []
    from store.db import Store
    from store.settings import load_settings

    with tempfile.TemporaryDirectory(dir=data_dir) as tmp:
        data = Path(tmp)
        store = Store(replace(load_settings(), data_dir=data,
                              database_url=f"sqlite:///{data / 'medloop.db'}"))
        store.upgrade()
        made = pool_project(store, n_items)
        project_id, curator, pool = made.project_id, made.curator, made.pool
        mv_id = register_task_model(store, project_id, untrained_task_model(),
                                    "task-unet-untrained")
        log = data / "worker.log"
        worker = start_worker(store, log)
        try:
            with store.session(immediate=True) as s:
                propose_id = enqueue(s, "propose", "bench", project_id,
                                     model_version_id=mv_id).id
            watch, export_id, end = _Watch(store, propose_id), None, time.perf_counter() + \
                timeout_s
            while True:
                job = watch.poll()
                if export_id is None and job.status == JobStatus.running \
                        and _items_done(job.message) >= 1:
                    with store.session(immediate=True) as s:
                        export_id = enqueue(s, "export", "bench", project_id).id
                    print("  job: export queued behind the running propose job", flush=True)
                if job.status in done:
                    break
                if worker.poll() is not None or time.perf_counter() > end:
                    raise RuntimeError(f"propose job {job.status.value} {job.message!r}; "
                                       f"worker log:\n{log.read_text()[-3000:]}")
                time.sleep(0.1)
            with store.session() as s:
                propose = s.get(Job, propose_id)
                export = s.get(Job, export_id) if export_id else None
                yields = s.exec(select(AuditEvent).where(
                    AuditEvent.action == "job.yielded", AuditEvent.entity_id == propose_id)
                ).all()
            if propose.status != JobStatus.succeeded:
                raise RuntimeError(f"the propose job {propose.status.value}: {propose.error}")
            rows += [
                _row("propose: seconds per item", watch.running_s() / max(len(pool), 1), "s",
                     f"{len(pool)} items, untrained UNet, while running (loading the models "
                     f"included; the export's turn left out); {propose.message}"),
                _row("propose: largest gap between progress updates", watch.max_gap(), "s",
                     f"{len(watch.changes)} updates of the job row seen (polled every 0.1 s)"),
            ]
            if export is not None:
                wait = (export.started_at - export.created_at).total_seconds()
                rows += [
                    _row("export queued behind propose: wait to start", wait, "s",
                         f"export {export.status.value}; the propose job yielded "
                         f"{len(yields)} time(s) and {propose.status.value}, attempts "
                         f"{propose.attempts}"),
                    _row("export queued behind propose: queued -> finished",
                         (export.finished_at - export.created_at).total_seconds(), "s",
                         "finished before the propose job: "
                         f"{export.finished_at < propose.finished_at}"),
                ]
            # cancel: a second propose job, cancelled once it has done an item
            with store.session(immediate=True) as s:
                again = enqueue(s, "propose", "bench", project_id, model_version_id=mv_id).id
            watch = _Watch(store, again)
            asked = None
            while True:
                job = watch.poll()
                if asked is None and job.status == JobStatus.running \
                        and _items_done(job.message) >= 1:
                    with store.session(immediate=True) as s:
                        request_cancel(s, again, curator)
                    asked = time.perf_counter()
                if job.status in done:
                    break
                if worker.poll() is not None or time.perf_counter() > end:
                    raise RuntimeError(f"cancel: job {job.status.value} {job.message!r}")
                time.sleep(0.05)
            rows.append(_row("cancel: asked -> job cancelled", time.perf_counter() - asked
                             if asked else float("nan"), "s",
                             f"second propose job {job.status.value} at {job.message!r}"))
        finally:
            stop_worker(worker)
    return pd.DataFrame(rows)


def _row(metric: str, value: float, unit: str, notes: str) -> dict:
    return {"metric": metric, "value": value, "unit": unit, "notes": notes}


# --------------------------------------------------------------------------- run


def _fm_summary(per_item: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for source, part in per_item.groupby("source", sort=False):
        per_box = float(np.nanmedian(part["s/box"]))
        measured = part["decode s (unbounded)"].notna()
        rows += [
            _row(f"{source}: boxes per slice before (mean / max)", part["boxes before"].mean(),
                 "boxes", f"max {part['boxes before'].max()}; {len(part)} slices"),
            _row(f"{source}: boxes per slice after (mean / max)", part["boxes after"].mean(),
                 "boxes", f"max {part['boxes after'].max()}"),
            _row(f"{source}: seconds per item, bounded (embed + decode)",
                 float((part["embed s"] + part["decode s (bounded)"]).mean()), "s",
                 f"median {per_box * 1000:.0f} ms per box"),
            _row(f"{source}: seconds per item, unbounded (embed + decode)",
                 float((part["embed s"] + part["decode s (unbounded)"])[measured].mean())
                 if measured.any() else
                 float((part["embed s"] + part["boxes before"] * per_box).mean()), "s",
                 f"measured on {int(measured.sum())} item(s)" if measured.any() else
                 "estimated: boxes before x the bounded run's time per box"),
        ]
        lesion = part["dice (bounded)"].notna()
        both = lesion & measured
        if lesion.any():
            rows.append(_row(f"{source}: Dice vs truth, bounded",
                             float(part.loc[lesion, "dice (bounded)"].mean()), "",
                             f"{int(lesion.sum())} lesion slices; " + (
                                 f"on the {int(both.sum())} also decoded unbounded: "
                                 f"{part.loc[both, 'dice (bounded)'].mean():.3f} bounded, "
                                 f"{part.loc[both, 'dice (unbounded)'].mean():.3f} unbounded"
                                 if both.any() else "unbounded not decoded")))
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="medloop bench propose", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=40,
                   help="items for the fm part and the propose job's pool")
    p.add_argument("--unbounded-items", type=int, default=2,
                   help="items also decoded unbounded (lung slices: minutes each); the "
                        "others are estimated from the time per box")
    p.add_argument("--weak-epochs", type=int, nargs="*", default=[1, 2],
                   help="epochs of the trained weak UNets in the rules part (none: skip)")
    p.add_argument("--parts", nargs="+", choices=["rules", "fm", "job"],
                   default=["rules", "fm", "job"])
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds for the job part")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="where the job part's temporary store goes")
    p.add_argument("--out-dir", type=Path, default=Path("bench-results"))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()[0]
    wide = {"display.width": 250, "display.max_colwidth": 110, "display.max_rows": 200}
    if "rules" in args.parts:
        print("rules: boxes kept and structures kept per component rule ...", flush=True)
        rules = measure_rules(args.weak_epochs, rng)
        rules.to_csv(args.out_dir / "propose-rules.csv", index=False)
        with pd.option_context(*[x for kv in wide.items() for x in kv]):
            print(rules.to_string(index=False, float_format="{:.4g}".format))
    tables = []
    if "fm" in args.parts:
        print(f"fm: {args.items} items ...", flush=True)
        per_item = measure_fm(args.items, args.unbounded_items, rng)
        per_item.to_csv(args.out_dir / "propose-fm-items.csv", index=False)
        tables.append(_fm_summary(per_item))
    if "job" in args.parts:
        print(f"job: a propose job over {args.items} items on one worker ...", flush=True)
        tables.append(measure_job(args.items, args.timeout, args.data_dir))
    if tables:
        table = pd.concat(tables, ignore_index=True)
        table.to_csv(args.out_dir / "propose.csv", index=False)
        print(f"\npropose, {os.cpu_count()} CPUs, load average {load:.2f} before, "
              f"{os.getloadavg()[0]:.2f} after")
        with pd.option_context(*[x for kv in wide.items() for x in kv]):
            print(table.to_string(index=False, formatters={"value": "{:.3f}".format}))
    print(f"\nwritten under {args.out_dir}/ (propose-rules.csv, propose-fm-items.csv, "
          "propose.csv)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
