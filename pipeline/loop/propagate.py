"""The `propagate` job: after a clinician validates a slice of a volume, FM proposals for
the unreviewed slices around it (`pipeline.active.propagate.follow`), written under the
store's rules (`store.propagation`: never on a reviewed, leased or human-labelled slice, nor
over a propagation from a nearer source).

The walk goes outward until each structure ends, each slice written as soon as the walk is
past it, the immediate neighbours first, so the next slice is ready while the clinician is
still on this one. The walk is confined to
the slices between the farthest ones it may still write on either side: it never embeds a
slice it could not use. It reports at every slice
(a cancel acts within one FM step) and stops when the worker does; it keeps no checkpoint
because a rerun writes nothing twice (a slice already holding this source's proposal is
left alone) and the embeddings it computed stay cached.
"""

from __future__ import annotations

import numpy as np

from pipeline.active.propagate import follow
from pipeline.fm import FoundationModel, try_load_foundation_model
from pipeline.fm.proposals import item_embedding
from pipeline.loop.context import JobContext
from store import propagation
from store.db import Store
from store.errors import InvalidInput, NotFound
from store.models import Item, Job, Label, LabelKind
from store.registry import ensure_model_version


def _pixels(store: Store, item: Item) -> np.ndarray:
    image = store.blobs.get_array(item.blob).astype(np.float32)
    return image.mean(axis=2) if image.ndim == 3 else image


class _Walk:
    """One job's view of the volume: its slices, the FM, and what was written."""

    def __init__(self, store: Store, ctx: JobContext, fm: FoundationModel, fm_author: tuple,
                 source: Label, slices: list[Item], start: int):
        self.store, self.ctx, self.fm, self.fm_author = store, ctx, fm, fm_author
        self.source, self.slices, self.start = source, slices, start
        self.steps = 0
        self.span = 1

    def may_write(self) -> dict[int, bool]:
        with self.store.session() as s:
            return {k: v.writable for k, v in
                    propagation.writable_slices(s, self.slices, self.start,
                                                self.source.author_user_id).items()}

    def window(self, writable: dict[int, bool]) -> tuple[int, int]:
        """(lo, hi): positions from the farthest writable slice below to the one above."""
        lo = min([k for k, ok in writable.items() if ok and k < self.start], default=self.start)
        hi = max([k for k, ok in writable.items() if ok and k > self.start], default=self.start)
        return lo, hi

    def run(self, validated: np.ndarray, values: list[int], lo: int, hi: int,
            writable: dict[int, bool]) -> int:
        """follow() over positions lo..hi, its proposals written; how many were."""
        self.span = max(1, hi - lo)

        def embed(k: int):
            self.steps += 1
            where = f"slice {self.slices[k + lo].slice_index}"
            self.ctx.stop_if_asked(f"worker stopping at {where}; queued to go on")
            self.ctx.report(min(99.0, 1 + 98 * self.steps / (self.span * len(values) + 1)),
                            f"following the structure: {where}", log=False)
            return item_embedding(self.store, self.fm, self.slices[k + lo])

        written = 0

        def write(k: int, label_map: np.ndarray, steps: list) -> None:
            nonlocal written
            written += self.write_one(k + lo, label_map,
                                     [st.iou for st in steps if st.source == "fm"])

        follow(self.fm, embed, hi - lo + 1, self.start - lo, validated, values,
               skip=lambda k: not writable.get(k + lo, False),
               image=lambda k: _pixels(self.store, self.slices[k + lo]), on_slice=write)
        return written

    def write_one(self, k: int, label_map: np.ndarray, ious: list[float]) -> int:
        """One slice's proposal under the store's rules, written as soon as the walk is past
        it; 1 if it was written."""
        sha, _ = self.store.blobs.put_array(label_map.astype(np.uint8))
        iou = float(np.mean(ious)) if ious else None
        with self.store.session(immediate=True) as s:
            label = propagation.record_propagated(
                s, self.slices[k].id, sha, self.fm_author[0], self.fm_author[1],
                self.source, iou)
        return int(label is not None)


def propagate(store: Store, job: Job, ctx: JobContext) -> dict:
    label_id = job.payload.get("label_id")
    if label_id is None:
        raise InvalidInput(f"propagate job {job.id} names no validated label (label_id)")
    project = ctx.project()
    with store.session() as s:
        source = s.get(Label, int(label_id))
        if source is None:
            raise NotFound(f"label {label_id} does not exist")
        if source.kind not in (LabelKind.accepted, LabelKind.corrected) \
                or source.mask_blob is None:
            raise InvalidInput(f"label {label_id} is {source.kind.value}, not a validated "
                               "mask: only an accepted or corrected slice is propagated")
        item = s.get(Item, source.item_id)
        slices = propagation.volume_slices(s, item)
    start = next(k for k, i in enumerate(slices) if i.id == item.id)
    values = [int(c["value"]) for c in project.label_classes]
    validated = store.blobs.get_array(source.mask_blob)
    if len(slices) < 2 or not np.isin(validated, values).any():
        ctx.report(100, "nothing to propagate (a single slice, or an empty mask)")
        return {"written": 0}
    fm, problem = try_load_foundation_model()
    if fm is None:
        raise InvalidInput(f"no foundation model to propagate with: {problem}")
    with store.session(immediate=True) as s:
        fmv = ensure_model_version(s, "fm", fm.version, "worker", config={
            "kind": fm.kind, "checkpoint_sha256": fm.checkpoint_sha256})
        fm_author = (fmv.id, fm.version)
    walk = _Walk(store, ctx, fm, fm_author, source, slices, start)
    where = f"slice {item.slice_index}"
    # One walk outward until each structure ends, within what may be written; follow hands
    # each slice over as soon as it is final, the neighbours (the clinician's next slice)
    # first, so they are written after the first FM steps rather than at the walk's end.
    writable = walk.may_write()
    lo, hi = walk.window(writable)
    written = walk.run(validated, values, lo, hi, writable) if lo < hi else 0
    ctx.report(100, f"{written} slice(s) proposed from {where} ({walk.steps} FM step(s))")
    return {"written": written, "steps": walk.steps}
