"""Every kind of bad input gets one clear line, stores nothing, and the batch goes on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.data import get_testdata_file
from sqlmodel import select

from phi_dicom import make_phi_dicom
from pipeline.ingest.importer import ingest
from store.errors import NotFound
from store.models import AuditEvent, Item, Label, Volume


def _nifti(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def _assert_store_empty(store):
    with store.session() as s:
        for table in (Volume, Item, Label):
            assert s.exec(select(table)).all() == []
        assert [e.action for e in s.exec(select(AuditEvent)).all()] == ["project.create"]
    blobs = [p for p in store.settings.blob_dir.rglob("*") if p.is_file()] \
        if store.settings.blob_dir.exists() else []
    assert blobs == []


def _bad_files(tmp: Path) -> dict[str, tuple[list[Path], list[Path] | None, str]]:
    """name -> (images, masks, expected words in the message)."""
    good = np.arange(8 * 9 * 4, dtype=np.int16).reshape(8, 9, 4)
    empty = tmp / "empty.nii.gz"
    empty.touch()
    full = _nifti(tmp / "full.nii.gz", np.random.default_rng(0).normal(size=(40, 40, 8)))
    truncated = tmp / "truncated.nii.gz"
    truncated.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    text_dcm = tmp / "notes.dcm"
    text_dcm.write_text("patient seemed well\n")
    no_pixels = tmp / "nopixels.dcm"
    make_phi_dicom(no_pixels)
    import pydicom

    ds = pydicom.dcmread(no_pixels)
    del ds.PixelData
    ds.save_as(no_pixels)
    nan = good.astype(np.float32)
    nan[1, 2, 3] = np.nan
    inf = good.astype(np.float32)
    inf[0, 0, 0] = np.inf
    return {
        "empty": ([empty], None, "empty (0 bytes)"),
        "truncated": ([truncated], None, "damaged or truncated"),
        "text as dcm": ([text_dcm], None, "no 'DICM' marker"),
        "no pixel data": ([no_pixels], None, "no pixel data"),
        "mask shape": ([_nifti(tmp / "img.nii.gz", good)],
                       [_nifti(tmp / "mask.nii.gz", np.zeros((8, 9, 5), np.uint8))],
                       "mask mask.nii.gz has shape (8, 9, 5) but the image has (8, 9, 4)"),
        "mask values": ([_nifti(tmp / "img2.nii.gz", good)],
                        [_nifti(tmp / "mask2.nii.gz", np.full((8, 9, 4), 7, np.uint8))],
                        "values [7] that are not label classes"),
        "nan": ([_nifti(tmp / "nan.nii.gz", nan)], None, "1 voxels are NaN or Inf"),
        "inf": ([_nifti(tmp / "inf.nii.gz", inf)], None, "NaN or Inf"),
        "4d": ([_nifti(tmp / "fmri.nii.gz", np.zeros((8, 9, 4, 3), np.int16))], None,
               "4D (shape (8, 9, 4, 3)): choose one frame with --frame N"),
        "missing": ([tmp / "nowhere.nii.gz"], None, "no such file"),
    }


@pytest.mark.parametrize("case", ["empty", "truncated", "text as dcm", "no pixel data",
                                  "mask shape", "mask values", "nan", "inf", "4d", "missing"])
def test_bad_file_is_rejected_with_reason_and_leaves_nothing(store, project, tmp_path, case):
    images, masks, words = _bad_files(tmp_path)[case]
    report = ingest(store, project, images, masks=masks)
    assert report.imported == []
    (rejection,) = report.rejected
    assert words in rejection.reason
    assert rejection.path == str(images[0])
    _assert_store_empty(store)


def test_file_over_the_size_limit(sqlite_store, tmp_path, monkeypatch):
    from dataclasses import replace

    from tests_helpers import make_project_simple

    sqlite_store.settings = replace(sqlite_store.settings, max_file_mb=0.01)
    project = make_project_simple(sqlite_store)
    big = _nifti(tmp_path / "big.nii.gz", np.random.default_rng(1).normal(size=(64, 64, 8)))
    report = ingest(sqlite_store, project, [big])
    assert "over the 0 MB limit" in report.rejected[0].reason
    assert "MEDLOOP_MAX_FILE_MB" in report.rejected[0].reason
    _assert_store_empty(sqlite_store)


def test_4d_with_a_chosen_frame_imports_that_frame(sqlite_store, tmp_path):
    from tests_helpers import make_project_simple

    data = np.arange(8 * 9 * 4 * 3, dtype=np.int16).reshape(8, 9, 4, 3)
    report = ingest(sqlite_store, make_project_simple(sqlite_store),
                    [_nifti(tmp_path / "fmri.nii.gz", data)], frame=2)
    assert report.rejected == [] and report.n_items == 4


def test_a_failure_while_storing_removes_the_blobs_it_wrote(sqlite_store, tmp_path):
    """The project was deleted underneath the import: the series is not stored, no blobs stay."""
    from sqlalchemy import text

    from tests_helpers import make_project_simple

    project = make_project_simple(sqlite_store)
    with sqlite_store.session() as s:
        s.exec(text("DELETE FROM auditevent"))
        s.exec(text("DELETE FROM project"))
    img = _nifti(tmp_path / "ok.nii.gz", np.ones((5, 6, 3), np.int16))
    with pytest.raises(NotFound, match="deleted during the import"):
        ingest(sqlite_store, project, [img])
    assert [p for p in sqlite_store.settings.blob_dir.rglob("*") if p.is_file()] == []


def test_cli_batch_goes_on_and_exits_non_zero(tmp_path):
    files = _bad_files(tmp_path)
    good = get_testdata_file("CT_small.dcm")
    env = {**os.environ, "MEDLOOP_DATA_DIR": str(tmp_path / "data")}
    env.pop("MEDLOOP_DATABASE_URL", None)
    args = [sys.executable, "-m", "pipeline.cli", "ingest", str(files["empty"][0][0]), good,
            str(files["text as dcm"][0][0]), "--project", "cli", "--classes", "lesion:1",
            "--modality", "CT", "--quiet"]
    out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 1, out.stderr
    assert "1 file(s)/series imported (1 items), 2 rejected" in out.stdout
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("REJECTED")]
    assert len(lines) == 2 and "empty.nii.gz: the file is empty" in lines[0]
    assert "Traceback" not in out.stderr
    ok = subprocess.run(args[:4] + [good] + args[7:], capture_output=True, text=True, env=env,
                        timeout=300)
    assert ok.returncode == 0 and "0 rejected" in ok.stdout
    missing = subprocess.run(args[:4] + [good, "--project", "nope", "--quiet"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert missing.returncode == 2 and "error: no project named 'nope'" in missing.stderr
