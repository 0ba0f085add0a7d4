"""`medloop` command line: ingest, demo, projects, users, worker, benchmarks."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from store.errors import MedloopError


def _store():
    from store.db import Store

    store = Store()
    store.upgrade()
    return store


def cmd_ingest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pipeline.imaging import AXES
    from pipeline.ingest.importer import ingest
    from store.errors import NotFound
    from store.projects import ProjectSpec, get_project, parse_classes

    store = _store()
    with store.session() as s:
        try:
            project = get_project(s, args.project)
        except NotFound:
            if not args.classes:
                raise
            # Created by ingest() with the first series that lands, so that an import in
            # which every file is rejected leaves no empty project behind.
            project = ProjectSpec(args.project, args.modality or "OT",
                                  parse_classes(args.classes))
    bar = tqdm(total=None, unit="series", disable=args.quiet, file=sys.stderr)

    def progress(done: int, total: int, label: str) -> None:
        bar.total = total
        bar.n = done
        bar.set_postfix_str(Path(label).name[:40])
        bar.refresh()

    report = ingest(store, project, args.paths, masks=args.masks, axis=AXES[args.axis],
                    frame=args.frame, actor=args.actor, progress=progress,
                    modality=args.modality, again=args.again, score=not args.no_score)
    bar.close()
    if report.created_project:
        print(f"created project {args.project!r}")
    for line in [k.line() for k in report.skipped] + [r.line() for r in report.rejected]:
        print(line, file=sys.stderr)
    print(report.summary())
    if isinstance(project, ProjectSpec) and not report.created_project:
        print(f"project {args.project!r} was not created: no file was imported; fix the files "
              "above and run the command again", file=sys.stderr)
    # A skip is not an error: the project holds that series already.
    return 1 if report.rejected else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.demo import create_demo

    result = create_demo(_store())
    for name, report in result.reports.items():
        print(f"{name}: {report.summary()}")
    if not result.created_projects:
        print("demo projects exist already")
    if result.passwords:
        print("demo users (passwords are shown once; reset with `medloop user reset NAME`):")
        for name, pw in result.passwords.items():
            print(f"  {name:10s} {pw}")
    return 0


def cmd_projects(args: argparse.Namespace) -> int:
    import pandas as pd
    from sqlmodel import func, select

    from store.models import Item, Project

    store = _store()
    with store.session() as s:
        rows = s.exec(
            # the items' modality: a project may hold several (the project's is a default)
            select(Project.name, func.coalesce(Item.modality, Project.modality), Item.split,
                   func.count(Item.id))
            .join(Item, Item.project_id == Project.id, isouter=True)
            .group_by(Project.name, func.coalesce(Item.modality, Project.modality),
                      Item.split)
        ).all()
    if not rows:
        print("no projects yet: run `medloop demo` or `medloop ingest ... --classes`")
        return 0
    df = pd.DataFrame(rows, columns=["project", "modality", "split", "items"])
    table = df.pivot_table(index=["project", "modality"], columns="split", values="items",
                           aggfunc="sum", fill_value=0)
    print(table.to_string())
    return 0


def cmd_user(args: argparse.Namespace) -> int:
    from sqlmodel import select

    from store.models import User
    from store.users import create_user, new_password, reset_password

    store = _store()
    with store.session(immediate=True) as s:
        if args.action == "list":
            for u in s.exec(select(User).order_by(User.name)).all():
                print(f"{u.name:20s} {u.role.value:10s}{' (disabled)' if u.disabled else ''}")
            return 0
        password = new_password()
        if args.action == "create":
            create_user(s, args.name, args.role, password, "cli")
        else:
            reset_password(s, args.name, password, "cli")
    print(f"password for {args.name}: {password}  (shown once)")
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from store.migrate import current_revision

    store = _store()
    where = store.settings.database_url.split("@")[-1]  # never print a password
    print(f"schema at revision {current_revision(store.engine)} ({where})")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from pipeline.loop.worker import serve

    # Background work yields the CPU to the web app: on a 2-core machine a training job at
    # normal priority made a box on the review page take twice as long (walk-through).
    # The OS scheduler does this better than any throttle of ours.
    nice = int(os.environ.get("MEDLOOP_WORKER_NICE", "10"))
    if nice:
        os.nice(nice)
    serve(_store(), poll_s=args.poll, once=args.once)
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from store.projects import get_project
    from store.retraining import train_once

    store = _store()
    with store.session(immediate=True) as s:
        job, created = train_once(s, get_project(s, args.project).id, "cli", "medloop retrain")
    if created:
        print(f"queued training job {job.id} for {args.project}; a worker will run it")
    else:
        print(f"training job {job.id} is already {job.status.value} for {args.project}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    import pandas as pd

    from store.jobs import recent

    store = _store()
    with store.session() as s:
        rows = [{"id": j.id, "kind": j.kind, "project": j.project_id, "status": j.status.value,
                 "progress": f"{j.progress:.0f}%", "message": (j.error or j.message)[:70]}
                for j in recent(s, args.limit)]
    print(pd.DataFrame(rows).to_string(index=False) if rows else "no jobs yet")
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pipeline.fm import fetch_weights

    bar = tqdm(unit="B", unit_scale=True, disable=args.quiet, file=sys.stderr)

    def progress(done: int, total: int | None) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    path = fetch_weights(args.name, args.dest, url=args.url, sha256=args.sha256,
                         progress=progress)
    bar.close()
    kind = args.name
    print(f"{path}\nuse it with: MEDLOOP_FM_KIND={kind} MEDLOOP_FM_CHECKPOINT={path}")
    return 0


def cmd_fm(args: argparse.Namespace) -> int:
    from pipeline.fm import load_foundation_model

    fm = load_foundation_model()
    print(f"kind:       {fm.kind}\nversion:    {fm.version}\ninput:      {fm.input_size} px"
          f"\ncheckpoint: {fm.checkpoint_path}\nsha256:     {fm.checkpoint_sha256}"
          f"\nprompts:    {', '.join(sorted(fm.trained_prompts))}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "ingest":
        from pipeline.bench.ingest import main as bench_main
    elif args.what == "fm":
        from pipeline.bench.fm import main as bench_main
    elif args.what == "review":
        from pipeline.bench.review import main as bench_main
    elif args.what == "loop":
        from pipeline.bench.loop import main as bench_main
    elif args.what == "propose":
        from pipeline.bench.propose import main as bench_main
    elif args.what == "promotion":
        from pipeline.bench.promotion import main as bench_main
    elif args.what == "propagate":
        from pipeline.bench.propagate import main as bench_main
    elif args.what == "al":
        from pipeline.bench.al import main as bench_main
    return bench_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medloop", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    ing = sub.add_parser("ingest", help="import NIfTI / DICOM / PNG files or folders")
    ing.add_argument("paths", nargs="+", type=Path)
    ing.add_argument("--project", required=True)
    ing.add_argument("--masks", nargs="+", type=Path,
                     help="ground-truth masks, one per image file, in the same order")
    ing.add_argument("--axis", choices=["x", "y", "z"], default="z",
                     help="axis to cut NIfTI volumes along (default z: axial)")
    ing.add_argument("--frame", type=int, help="frame to import from a 4D NIfTI")
    ing.add_argument("--classes", help="create the project with these classes, 'lesion:1,...'")
    ing.add_argument("--modality",
                     help="modality of these images (CT, MR, XR, SM, ...); also a new project's")
    ing.add_argument("--again", action="store_true",
                     help="import series that the project holds already a second time "
                          "(by default they are skipped and named)")
    ing.add_argument("--no-score", action="store_true",
                     help="do not queue the review-order (score) job for the new items")
    ing.add_argument("--actor", default="cli", help="who to record in the audit log")
    ing.add_argument("--quiet", action="store_true", help="no progress bar")
    ing.set_defaults(fn=cmd_ingest)

    sub.add_parser("demo", help="create the demo projects and users").set_defaults(fn=cmd_demo)
    sub.add_parser("projects", help="list projects and items per split").set_defaults(
        fn=cmd_projects)

    usr = sub.add_parser("user", help="local accounts")
    usr.add_argument("action", choices=["list", "create", "reset"])
    usr.add_argument("name", nargs="?")
    usr.add_argument("--role", default="clinician", choices=["clinician", "curator", "admin"])
    usr.set_defaults(fn=cmd_user)

    sub.add_parser("db", help="upgrade the schema and show its revision").set_defaults(fn=cmd_db)

    wrk = sub.add_parser("worker", help="run background jobs")
    wrk.add_argument("--poll", type=float, default=1.0)
    wrk.add_argument("--once", action="store_true", help="exit when the queue is empty")
    wrk.set_defaults(fn=cmd_worker)

    rtr = sub.add_parser("retrain", help="queue a task-model training job for a project")
    rtr.add_argument("--project", required=True)
    rtr.set_defaults(fn=cmd_retrain)

    jbs = sub.add_parser("jobs", help="list recent background jobs")
    jbs.add_argument("--limit", type=int, default=30)
    jbs.set_defaults(fn=cmd_jobs)

    wts = sub.add_parser("weights", help="download SAM / MedSAM checkpoints (sha256 checked)")
    wts.add_argument("action", choices=["fetch"])
    wts.add_argument("name", help="sam_vit_b, medsam_vit_b, ...")
    wts.add_argument("--dest", type=Path, default=Path.home() / ".cache" / "medloop" / "weights")
    wts.add_argument("--url", help="download from here instead of the official address")
    wts.add_argument("--sha256", help="expected sha256 (needed where none is known)")
    wts.add_argument("--quiet", action="store_true")
    wts.set_defaults(fn=cmd_weights)

    sub.add_parser("fm", help="show the configured foundation model and its sha256"
                   ).set_defaults(fn=cmd_fm)

    bench = sub.add_parser("bench", help="benchmarks: print a table, write CSV")
    bench.add_argument("what", choices=["ingest", "fm", "review", "loop", "propose", "propagate",
                                          "promotion", "al"])
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(fn=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("medloop").setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    if getattr(args, "action", None) in ("create", "reset") and not args.name:
        print("error: give the user's name", file=sys.stderr)
        return 2
    try:
        return args.fn(args)
    except MedloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
