"""A series imported twice is recognised by content and skipped; an import in which nothing
lands creates no project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from sqlmodel import func, select

from phi_dicom import make_phi_dicom
from pipeline.ingest import importer
from pipeline.ingest.importer import deid_secret, ingest
from store import imports as store_imports
from store.db import Store
from store.models import AuditEvent, Item, Project, Volume
from store.projects import ProjectSpec
from store.settings import load_settings

CLASSES = [{"name": "lesion", "value": 1, "color": "#ff0000"}]


def _count(store, table) -> int:
    with store.session() as s:
        return s.exec(select(func.count()).select_from(table)).one()


def _blob_files(store) -> set[Path]:
    root = store.settings.blob_dir
    return {p for p in root.rglob("*") if p.is_file()} if root.exists() else set()


def _actions(store) -> list[str]:
    with store.session() as s:
        return [e.action for e in s.exec(select(AuditEvent).order_by(AuditEvent.id)).all()]


def test_same_nifti_twice_is_skipped_naming_the_earlier_import(store, project, radiomics,
                                                               tmp_path):
    img = radiomics / "breast1_image.nii.gz"
    first = ingest(store, project, [img])
    (volume_id,) = first.volume_ids
    items, blobs = _count(store, Item), _blob_files(store)
    # The same file, a copy under another name, and the same image with its mask: all the
    # same raw array.
    copy = shutil.copy(img, tmp_path / "renamed.nii.gz")
    second = ingest(store, project, [img])
    third = ingest(store, project, [copy], masks=[radiomics / "breast1_label.nii.gz"])
    for report, path in ((second, img), (third, copy)):
        assert report.imported == [] and report.rejected == [] and report.volume_ids == []
        (skip,) = report.skipped
        assert skip.path == str(path)
        assert skip.line().startswith(f"SKIPPED {path}: already imported on ")
        assert skip.reason.endswith(f" UTC as volume {volume_id} (breast1_image.nii.gz, "
                                    "21 items); pass --again to import it a second time")
        assert report.summary() == ("0 file(s)/series imported (0 items), 1 already imported "
                                    "and skipped, 0 rejected")
    assert _count(store, Item) == items and _count(store, Volume) == 1
    assert _blob_files(store) == blobs  # nothing written for a skipped series, not even masks
    assert _actions(store).count("ingest.series") == 1


def test_again_imports_it_a_second_time(store, project, radiomics):
    img = radiomics / "breast1_image.nii.gz"
    ingest(store, project, [img])
    report = ingest(store, project, [img], again=True)
    assert report.skipped == [] and report.n_items == 21
    assert report.summary() == "1 file(s)/series imported (21 items), 0 rejected"
    assert _count(store, Volume) == 2 and _count(store, Item) == 42
    with store.session() as s:
        events = s.exec(select(AuditEvent).where(AuditEvent.action == "ingest.series")
                        .order_by(AuditEvent.id)).all()
    assert [e.details.get("again") for e in events] == [None, True]


def test_same_dicom_series_twice_is_skipped_by_series_uid(store, project, tmp_path):
    """Exported again to new paths, even with pixels that differ: the de-identified series UID
    names the series."""
    (tmp_path / "first").mkdir()
    (tmp_path / "again").mkdir()
    ct = Path(shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "first" / "ct.dcm"))
    uid = pydicom.uid.generate_uid()
    for k in range(3):
        make_phi_dicom(tmp_path / "first" / f"s{k}.dcm", series_uid=uid, instance=k + 1,
                       position_z=float(k))
    first = ingest(store, project, [tmp_path / "first"])
    assert first.rejected == [] and first.n_items == 4
    raw_uid = pydicom.dcmread(ct).SeriesInstanceUID
    with store.session() as s:
        vols = s.exec(select(Volume).order_by(Volume.id)).all()
    for vol in vols:  # the remapped UID is stored, never the raw one
        assert vol.series_uid == vol.dicom_header["0020000E"]["Value"][0]
        assert vol.series_uid != raw_uid and vol.series_uid != uid
    blobs = _blob_files(store)

    ds = pydicom.dcmread(ct)
    pixels = ds.pixel_array.copy()
    pixels[0, 0] += 1  # another raw array, so only the series UID can tell
    ds.PixelData = pixels.tobytes()
    ds.save_as(tmp_path / "again" / "exported-again.dcm")
    for k in range(3):  # new files: new SOP instance UIDs, the same series
        make_phi_dicom(tmp_path / "again" / f"slice-{k}.dcm", series_uid=uid, instance=k + 1,
                       position_z=float(k))
    second = ingest(store, project, [tmp_path / "again"])
    assert second.imported == [] and second.rejected == []
    reasons = [k.reason for k in second.skipped]
    assert len(reasons) == 2 and all(r.startswith("already imported on ") for r in reasons)
    for vol in vols:  # each names its own earlier volume
        assert sum(f"as volume {vol.id} ({vol.source_name}, " in r for r in reasons) == 1
    assert _count(store, Volume) == 2 and _count(store, Item) == 4
    assert _blob_files(store) == blobs


def test_same_file_twice_in_one_call_is_imported_once(sqlite_store, radiomics, tmp_path):
    from tests_helpers import make_project_simple

    project = make_project_simple(sqlite_store)
    img = radiomics / "breast1_image.nii.gz"
    copy = shutil.copy(img, tmp_path / "copy.nii.gz")
    folder = tmp_path / "in"
    folder.mkdir()
    ct = shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    # again=True re-imports what earlier runs brought in, never one series twice in one run.
    report = ingest(sqlite_store, project, [img, img, copy, folder, ct], again=True)
    assert [Path(p).name for p, _ in report.imported] == ["breast1_image.nii.gz", "ct.dcm"]
    assert report.rejected == []
    reasons = {k.path: k.reason for k in report.skipped}
    assert reasons == {
        str(img): "given more than once in this import: imported once",
        str(ct): "given more than once in this import: imported once",  # also in the folder
        str(copy): (f"the same series as {img}, imported as volume {report.volume_ids[0]} "
                    "earlier in this run"),
    }
    assert report.summary() == ("2 file(s)/series imported (22 items), 3 already imported "
                                "and skipped, 0 rejected")
    assert _count(sqlite_store, Volume) == 2 and _count(sqlite_store, Item) == 22


def test_a_series_landing_meanwhile_is_caught_inside_the_writing_transaction(
        store, project, radiomics, monkeypatch):
    """The check before writing blobs missed a concurrent import that committed after it: the
    check under the write lock skips the series, and the blobs the other import now uses stay."""
    img = radiomics / "breast1_image.nii.gz"
    first = ingest(store, project, [img])
    # As if this import had written the blob files first and the other one found them there.
    for p in _blob_files(store):
        p.unlink()
    monkeypatch.setattr(importer, "find_earlier_import", lambda *a, **k: None)
    report = ingest(store, project, [img])
    assert report.imported == []
    (skip,) = report.skipped
    assert f"as volume {first.volume_ids[0]} (breast1_image.nii.gz, 21 items)" in skip.reason
    assert _count(store, Volume) == 1
    with store.session() as s:
        for item in s.exec(select(Item)).all():
            store.blobs.get_array(item.blob)  # still there: not removed as this import's


def test_two_concurrent_imports_of_one_file_land_once(store, project, radiomics, monkeypatch):
    img = radiomics / "breast1_image.nii.gz"
    deid_secret(store)
    # Both get past the check before the blobs; a pause between the check under the lock and
    # the insert would let both land if the lock did not make them take turns.
    monkeypatch.setattr(importer, "find_earlier_import", lambda *a, **k: None)
    slow_split = store_imports.assign_split

    def assign_split(*args, **kwargs):  # noqa: ANN202
        threading.Event().wait(0.5)
        return slow_split(*args, **kwargs)

    monkeypatch.setattr(store_imports, "assign_split", assign_split)
    start = threading.Barrier(2)
    reports, errors = [], []

    def run() -> None:
        start.wait()
        try:
            reports.append(ingest(store, project, [img]))
        except BaseException as exc:  # shown by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    assert sorted((len(r.imported), len(r.skipped)) for r in reports) == [(0, 1), (1, 0)]
    assert _count(store, Volume) == 1 and _count(store, Item) == 21


def test_project_spec_is_created_only_with_the_first_series_that_lands(store, tmp_path):
    empty = tmp_path / "empty.nii.gz"
    empty.touch()
    spec = ProjectSpec("walk-bad", "CT", CLASSES)
    bad = ingest(store, spec, [empty, tmp_path / "missing.nii.gz"])
    assert len(bad.rejected) == 2 and bad.project is None and not bad.created_project
    assert _count(store, Project) == 0 and _actions(store) == []

    ct = get_testdata_file("CT_small.dcm")
    good = ingest(store, spec, [empty, ct])
    assert good.created_project and good.project.name == "walk-bad"
    assert good.n_items == 1 and len(good.rejected) == 1
    assert _actions(store) == ["project.create", "ingest.series"]
    with store.session() as s:
        (project,) = s.exec(select(Project)).all()
        assert s.get(Volume, good.volume_ids[0]).project_id == project.id


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDLOOP_DATA_DIR": str(tmp_path / "data")}
    env.pop("MEDLOOP_DATABASE_URL", None)
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300)


def _cli_store(tmp_path: Path) -> Store:
    data = tmp_path / "data"
    return Store(replace(load_settings(), data_dir=data,
                         database_url=f"sqlite:///{data / 'medloop.db'}"))


def test_cli_import_with_every_file_rejected_creates_no_project(tmp_path):
    empty = tmp_path / "empty.nii.gz"
    empty.touch()
    notes = tmp_path / "notes.dcm"
    notes.write_text("patient seemed well\n")
    out = _cli(tmp_path, "ingest", str(empty), str(notes), "--project", "walk-bad",
               "--classes", "lesion:1", "--modality", "CT", "--quiet")
    assert out.returncode == 1, out.stderr
    assert "created project" not in out.stdout
    assert "0 file(s)/series imported (0 items), 2 rejected" in out.stdout
    assert "REJECTED" in out.stderr and "Traceback" not in out.stderr
    assert "project 'walk-bad' was not created: no file was imported" in out.stderr
    store = _cli_store(tmp_path)
    assert _count(store, Project) == 0 and _actions(store) == []
    listed = _cli(tmp_path, "projects")
    assert listed.returncode == 0 and "walk-bad" not in listed.stdout


def test_cli_reimport_prints_skipped_and_exits_zero(tmp_path):
    ct = get_testdata_file("CT_small.dcm")
    args = ["ingest", ct, "--project", "cli", "--classes", "lesion:1", "--modality", "CT",
            "--quiet"]
    first = _cli(tmp_path, *args)
    assert first.returncode == 0, first.stderr
    assert "created project 'cli'" in first.stdout
    second = _cli(tmp_path, *args)
    assert second.returncode == 0, second.stderr
    assert "created project" not in second.stdout
    (line,) = [ln for ln in second.stderr.splitlines() if ln.startswith("SKIPPED")]
    assert line.startswith(f"SKIPPED {ct}: already imported on ")
    assert line.endswith("pass --again to import it a second time")
    assert ("0 file(s)/series imported (0 items), 1 already imported and skipped, 0 rejected"
            in second.stdout)
    third = _cli(tmp_path, *args, "--again")
    assert third.returncode == 0 and "SKIPPED" not in third.stderr
    assert "1 file(s)/series imported (1 items), 0 rejected" in third.stdout
    assert _count(_cli_store(tmp_path), Volume) == 2
