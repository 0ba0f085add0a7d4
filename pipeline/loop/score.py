"""The `score` job: orders the review queue of a project by its active-learning strategy.

With a champion task model, the project's strategy (pipeline/active/strategies.py) scores
the unreviewed pool on the model. Before any model (the cold start) it runs twice: first on
small thumbnails, which takes a second or two and already sends near-empty slices to the
back; then on the FM's image embeddings (from the embedding cache; computed once per item,
with progress, and kept for the proposals). Each pass appends one ItemScore per item (why it
comes when it does) and sets Item.priority, which the queue serves by.

Cancel acts at the next item; a stopped or yielding job loses nothing (the embeddings are
cached as they are made, and the quick order is not redone on resume).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import torch
from monai.transforms import Resize

from pipeline.active import strategies
from pipeline.active.features import fm_vector
from pipeline.fm import try_load_foundation_model
from pipeline.fm.proposals import item_embedding, segment_classes
from pipeline.loop.context import JobContext
from pipeline.loop.propose import unreviewed_pool
from pipeline.task.model import TaskModel, normalise
from store import labels, registry
from store.db import Store
from store.models import Item, Job, ModelVersion, Project, Split
from store.scores import record_scores

COLD_START = "cold_start"
# The cold start's images: enough for the share of tissue in a slice, small enough that a
# pool of thousands fits in memory and the quick order takes a second.
THUMBNAIL_PX = 64
# Strategies that compare the pool with what is labelled already get this many of the
# validated train items (the newest), so the comparison stays cheap on a large project.
MAX_LABELLED = 256


def strategy_of(project: Project) -> str:
    return project.strategy or strategies.DEFAULT_STRATEGY


def _model_input(image: np.ndarray, modality: str, size: int) -> np.ndarray:
    """The image as the task model sees it, (size, size): its modality's normalisation,
    resized; an RGB image averaged to one channel (what the pool's (N, H, W) holds)."""
    t = Resize((size, size), mode="bilinear", anti_aliasing=True)(normalise(image, modality))
    return t.as_tensor().mean(0).numpy().astype(np.float32)


def _images(store: Store, items: list[Item], size: int) -> np.ndarray:
    if not items:
        return np.zeros((0, size, size), np.float32)
    return np.stack([_model_input(store.blobs.get_array(i.blob), i.modality, size)
                     for i in items])


def _items(store: Store, ids: list[int]) -> list[Item]:
    with store.session() as s:
        found = {i.id: i for i in (s.get(Item, i) for i in ids) if i is not None}
    return [found[i] for i in ids if i in found]


def _record(store: Store, job_id: int | None, project_id: int, mv_id: int | None,
            name: str, pool: strategies.Pool, scores: np.ndarray, seed: int,
            note: str = "") -> list[str]:
    order, reasons = strategies.rank(name, scores, pool, seed=seed)
    reasons = [r + note for r in reasons]
    record_scores(store, project_id, job_id, mv_id, name, pool.item_ids, scores, order,
                  reasons)
    return reasons


def quick_order(store: Store, project_id: int, job_id: int | None = None,
                seed: int = 0) -> int:
    """The cold-start order from thumbnails alone (no FM, no model): seconds for a pool, and
    near-empty slices go last. Returns the items ordered."""
    items = _items(store, unreviewed_pool(store, project_id))
    if not items:
        return 0
    pool = strategies.Pool([i.id for i in items], _images(store, items, THUMBNAIL_PX))
    scores = strategies.score(COLD_START, None, pool, seed=seed)
    _record(store, job_id, project_id, None, COLD_START, pool, scores, seed,
            " (from thumbnails; FM embeddings pending)")
    return len(items)


def _labelled_images(store: Store, project_id: int, size: int) -> np.ndarray | None:
    with store.session() as s:
        rows = labels.heads(s, Item.project_id == project_id, Item.split == Split.train,
                            order_by=(Item.id.desc(),))
        done = [item for item, h in rows if h is not None and h.kind in labels.VALIDATED]
    return _images(store, done[:MAX_LABELLED], size) if done else None


def _fm_refiner(store: Store, ctx: JobContext, items: list[Item], n_classes: int
                ) -> Callable[[int, np.ndarray], np.ndarray] | None:
    """pool index, coarse class-index map on the model's grid -> the FM's refinement on the
    same grid; None when no FM can be loaded."""
    fm, problem = try_load_foundation_model()
    if fm is None:
        ctx.report(3, f"FM unavailable ({problem}): FM disagreement cannot be scored")
        return None
    values = list(range(1, n_classes))

    def refine(i: int, coarse: np.ndarray) -> np.ndarray:
        item = items[i]
        rows, cols = item.shape[:2]
        grid = torch.from_numpy(coarse.astype(np.float32))[None, None]
        full = torch.nn.functional.interpolate(grid, size=(rows, cols), mode="nearest")
        mask = full[0, 0].numpy().astype(np.int64)
        refined, _, _ = segment_classes(fm, item_embedding(store, fm, item), mask, values)
        back = torch.nn.functional.interpolate(
            torch.from_numpy(refined.astype(np.float32))[None, None], size=coarse.shape,
            mode="nearest")
        ctx.tick(5 + 80 * i / max(len(items), 1), f"FM refinement {i + 1}/{len(items)}")
        return back[0, 0].numpy().astype(np.int64)

    return refine


def _score_with_model(store: Store, job: Job, ctx: JobContext, project: Project,
                      mv: ModelVersion, items: list[Item], seed: int) -> str:
    name = strategy_of(project)
    model = TaskModel.from_bytes(store.blobs.get_bytes(mv.blob))
    size = model.cfg.image_size
    ctx.report(2, f"scoring {len(items)} unreviewed item(s) with {mv.name}: "
                  f"{strategies.LABELS.get(name, name)}")
    pool = strategies.Pool([i.id for i in items], _images(store, items, size))
    if name in ("coreset", "hybrid"):
        pool.labelled_images = _labelled_images(store, project.id, size)
    if name == "fm_disagreement":
        pool.fm_refine = _fm_refiner(store, ctx, items, model.cfg.num_classes)
        if pool.fm_refine is None:
            name = strategies.DEFAULT_STRATEGY
    if model.cfg.in_channels != 1:  # the strategies feed one-channel images
        ctx.report(3, "the task model takes colour images: ordered by the cold start")
        name, model = COLD_START, None
    scores = strategies.score(name, model.net if model is not None else None, pool,
                              seed=seed, n_classes=len(project.label_classes) + 1)
    ctx.report(90, "writing the queue order")
    _record(store, job.id, project.id, mv.id if model is not None else None, name, pool,
            scores, seed)
    return f"{len(items)} item(s) ordered by {name} on {mv.name}"


def _cold_start(store: Store, job: Job, ctx: JobContext, project: Project,
                items: list[Item], seed: int) -> str:
    saved = json.loads(ctx.load_checkpoint() or b"{}")
    if not saved.get("quick"):
        quick_order(store, project.id, job.id, seed)
        ctx.save_checkpoint(json.dumps({"quick": True}).encode(),
                            f"quick order of {len(items)} item(s) from thumbnails written")
    fm, problem = try_load_foundation_model()
    if fm is None:
        return f"{len(items)} item(s) ordered from thumbnails only ({problem})"
    vectors = []
    for n, item in enumerate(items):
        where = f"embedded {n}/{len(items)} item(s)"
        ctx.stop_if_asked(f"worker stopping: {where}; queued to go on")
        ctx.yield_if_waiting(f"paused: {where}; queued to go on")
        ctx.tick(10 + 80 * n / len(items), f"embedding item {n + 1}/{len(items)} for the "
                                           "cold-start order")
        vectors.append(fm_vector(item_embedding(store, fm, item)))
    ctx.report(90, f"embedded {len(items)} item(s); writing the cold-start order")
    pool = strategies.Pool([i.id for i in items], _images(store, items, THUMBNAIL_PX),
                           embeddings=np.stack(vectors))
    scores = strategies.score(COLD_START, None, pool, seed=seed)
    _record(store, job.id, project.id, None, COLD_START, pool, scores, seed)
    return f"{len(items)} item(s) ordered by the cold start on {fm.version} embeddings"


def score_pool(store: Store, job: Job, ctx: JobContext) -> str:
    """Order the project's unreviewed pool: the champion with the project's strategy, or
    the cold start before any model (the strategy 'random' is honoured either way)."""
    project = ctx.project()
    seed = int(job.payload.get("seed", 0))
    ctx.report(1, "finding the unreviewed items")
    items = _items(store, unreviewed_pool(store, project.id))
    if not items:
        ctx.report(100, "no unreviewed items to order")
        return "nothing to order"
    with store.session() as s:
        mv = registry.champion(s, project.id)
    if mv is not None and mv.blob is not None:
        done = _score_with_model(store, job, ctx, project, mv, items, seed)
    elif strategy_of(project) == "random":
        pool = strategies.Pool([i.id for i in items], _images(store, items, THUMBNAIL_PX))
        _record(store, job.id, project.id, None, "random", pool,
                strategies.score("random", None, pool, seed=seed), seed)
        done = f"{len(items)} item(s) in a random order"
    else:
        done = _cold_start(store, job, ctx, project, items, seed)
    ctx.report(100, done)
    return done
