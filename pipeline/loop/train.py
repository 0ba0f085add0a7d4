"""The `train` and `evaluate` jobs: validated labels in, a registered task-model version out,
scored on the holdout and promoted only if it beats the champion.

train: loads the train split's validated labels, trains with a checkpoint in the blob store
after every epoch (a requeued job resumes there), registers the version and queues its
evaluation in one transaction. evaluate: scores challenger and champion on the same holdout
cases; a promotion queues a `propose` job that refreshes the unreviewed pool.
"""

from __future__ import annotations

import time

from pipeline.loop.context import JobContext
from pipeline.task.evaluation import (
    compare,
    holdout_cases,
    labels_needed,
    score_cases,
    score_empty,
    summarise,
)
from pipeline.task.model import TaskModel, train
from pipeline.task.training_set import training_set, training_set_hash
from store import registry
from store.db import Store
from store.errors import NotFound
from store.jobs import enqueue, queue_refresh
from store.models import Job, ModelVersion, Source
from store.retraining import training_settings


def run_training(store: Store, job: Job, ctx: JobContext) -> ModelVersion:
    project = ctx.project()
    name = f"task-{training_settings(project)['architecture']}-j{job.id}"
    with store.session() as s:
        done = registry.find_version(s, "task", name, project.id)
    if done is not None:  # trained and registered before the worker died: nothing to redo
        ctx.report(100, f"{name} was already registered")
        return done
    ctx.report(1, "loading the validated labels")
    samples, pairs, cfg = training_set(store, project, job.payload.get("overrides"))
    n_synthetic = sum(item.source == Source.synthetic for item, _ in pairs)
    resume = ctx.load_checkpoint()
    if resume is not None:
        ctx.report(job.progress, "resuming from the last checkpoint")
    last = {"t": 0.0}

    def on_batch(epoch: int, batch: int, batches: int, loss: float) -> None:
        if time.monotonic() - last["t"] >= 2.0 or batch == batches:
            last["t"] = time.monotonic()
            ctx.report(2 + 93 * (epoch + batch / batches) / max(cfg.epochs, 1))

    def on_epoch(checkpoint: bytes, state) -> None:
        ctx.save_checkpoint(checkpoint, f"epoch {state.epoch}/{cfg.epochs}: loss "
                                        f"{state.losses[-1]:.4f} ({state.seconds:.0f} s)")
        ctx.stop_if_asked(f"worker stopping: checkpointed after epoch {state.epoch}; "
                          "queued to resume")
        # A short job a person waits for (an export) runs first; training resumes here.
        ctx.yield_if_waiting(f"checkpointed after epoch {state.epoch}; queued to resume")

    net, state = train(samples, cfg, resume=resume, on_batch=on_batch, on_epoch=on_epoch)
    ctx.report(96, "saving the model")
    sha, _ = store.blobs.put_bytes(TaskModel(net, cfg).to_bytes())
    with store.session(immediate=True) as s:
        parent = registry.champion(s, project.id)
        mv = registry.ensure_model_version(
            s, "task", name, job.created_by, project_id=project.id, blob=sha,
            parent_id=parent.id if parent else None, config=cfg.to_dict())
        mv.training_set_hash = training_set_hash([(i.id, m) for i, m in pairs], cfg)
        mv.metrics = {"train": {"items": len(pairs), "synthetic_items": n_synthetic,
                                "losses": state.losses, "seconds": state.seconds,
                                "job": job.id}}
        s.add(mv)
        # Registered and queued for evaluation in one transaction: never one without the other.
        enqueue(s, "evaluate", job.created_by, project.id, model_version_id=mv.id,
                promote=True)
        s.flush()
        s.expunge(mv)
    ctx.report(100, f"registered {name}: {len(pairs)} validated labels, {cfg.epochs} epochs, "
                    f"final loss {state.losses[-1]:.4f}; holdout evaluation queued")
    return mv


def _history(store: Store, project_id: int, mv_id: int, holdout: dict
             ) -> list[tuple[int, float]]:
    """(train labels, worst class's holdout Dice where present) per version of the project,
    this one (just scored) included: the project's learning curve so far."""
    def worst(h: dict) -> float | None:
        found = [v for v in (h.get("dice_where_present") or {}).values() if v is not None]
        return min(found) if found else None

    with store.session() as s:
        versions = registry.versions(s, project_id)
    points = [((v.metrics or {}).get("train", {}).get("items", 0),
               worst(holdout if v.id == mv_id else (v.metrics or {}).get("holdout", {})))
              for v in versions]
    return [(n, d) for n, d in points if d is not None]


def run_evaluation(store: Store, job: Job, ctx: JobContext) -> dict:
    """Score a version on the holdout; with payload promote=True decide its promotion."""
    project = ctx.project()
    mv_id = job.payload.get("model_version_id")
    with store.session() as s:
        mv = s.get(ModelVersion, mv_id) if mv_id is not None else None
        if mv is None or mv.blob is None:
            raise NotFound(f"task model version {mv_id} does not exist or has no weights")
        champion = registry.champion(s, project.id)
        champ = (champion.id, champion.name, champion.blob) if champion is not None \
            and champion.id != mv.id else None
        decided = mv.status != registry.CANDIDATE
    ctx.report(5, "loading the holdout")
    cases = holdout_cases(store, project.id)
    ctx.report(20, f"scoring {mv_id} on {len(cases)} holdout cases")
    challenger = score_cases(TaskModel.from_bytes(store.blobs.get_bytes(mv.blob)), cases)
    champion_cases = None
    if champ is not None and cases:
        ctx.report(60, f"scoring the champion {champ[1]} on the same cases")
        champion_cases = score_cases(TaskModel.from_bytes(store.blobs.get_bytes(champ[2])),
                                     cases)
    settings = training_settings(project)
    margin, floor = float(settings["promotion_margin"]), float(settings["min_class_dice"])
    names = {str(c["value"]): c["name"] for c in project.label_classes}
    empty = score_empty(cases, [int(c["value"]) for c in project.label_classes])
    decision = compare(challenger, champion_cases, margin, names, empty=empty, floor=floor)
    holdout = summarise(challenger)
    if decision.below_bar:
        hint = labels_needed(_history(store, project.id, mv_id, holdout), floor)
        if hint:
            decision.reason += f"; {hint}"
    decide = bool(job.payload.get("promote")) and not decided
    with store.session(immediate=True) as s:
        mv = registry.record_evaluation(
            s, mv_id, "worker", holdout, {str(k): v for k, v in challenger.items()},
            {**decision.to_dict(), "champion": champ[1] if champ else None} if decide else None)
        if decide and mv.status == registry.CHAMPION:
            queue_refresh(s, project.id, mv.id, "worker")
    ctx.report(100, decision.reason if job.payload.get("promote") else
               f"holdout Dice {holdout.get('mean_dice', float('nan')):.3f}")
    return holdout
