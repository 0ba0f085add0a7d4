"""Ingest on real files: the shared radiomics cases, pydicom's samples, PHI-laden DICOMs, PNGs."""

from __future__ import annotations

import json
import random

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut
from sqlalchemy import text
from sqlmodel import SQLModel, select

from phi_dicom import make_phi_dicom, phi_pixels
from pipeline.imaging import uncut_slice
from pipeline.ingest.importer import ingest
from store.models import Item, Label, LabelKind, Split, Volume

# case: (axial slices, lesion voxels, axial slices with lesion) from shared/data/README.md
CASES = {"brain1": (25, 4137, 7), "brain2": (23, 453, 3), "breast1": (21, 143, 3),
         "lung1": (48, 837, 3)}


def _items(store, volume_id=None):
    with store.session() as s:
        q = select(Item).order_by(Item.id)
        if volume_id is not None:
            q = q.where(Item.volume_id == volume_id)
        return s.exec(q).all()


def test_radiomics_cases_ingest_with_ground_truth(store, project, radiomics):
    names = sorted(CASES)
    report = ingest(store, project, [radiomics / f"{n}_image.nii.gz" for n in names],
                    masks=[radiomics / f"{n}_label.nii.gz" for n in names])
    assert report.rejected == []
    assert [n for _, n in report.imported] == [CASES[n][0] for n in names]
    with store.session() as s:
        for name, volume_id in zip(names, report.volume_ids, strict=True):
            n_slices, voxels, lesion_slices = CASES[name]
            volume = s.get(Volume, volume_id)
            assert volume.source_name == f"{name}_image.nii.gz"
            items = s.exec(select(Item).where(Item.volume_id == volume_id)
                           .order_by(Item.slice_index)).all()
            assert [i.slice_index for i in items] == list(range(n_slices))
            assert len({i.split for i in items}) == 1 and items[0].split == volume.split
            gts = [s.exec(select(Label).where(Label.item_id == i.id)).one() for i in items]
            assert {g.kind for g in gts} == {LabelKind.ground_truth}
            masks = [store.blobs.get_array(g.mask_blob) for g in gts]
            assert sum(int(m.sum()) for m in masks) == voxels
            assert sum(bool(m.any()) for m in masks) == lesion_slices
            # Slices go back into the volume exactly: raw intensities and geometry kept.
            canonical = nib.as_closest_canonical(nib.load(radiomics / f"{name}_image.nii.gz"))
            restacked = np.stack([uncut_slice(store.blobs.get_array(i.blob)) for i in items], -1)
            np.testing.assert_array_equal(restacked, np.asanyarray(canonical.dataobj))
            np.testing.assert_allclose(volume.affine, canonical.affine)
            zooms = canonical.header.get_zooms()
            assert items[0].pixel_spacing == pytest.approx([zooms[1], zooms[0]])
    # Four patients, holdout fraction 0.2: one whole volume is held out.
    splits = [v.split for v in _volumes(store)]
    assert splits.count(Split.holdout) == 1 and splits.count(Split.train) == 3


def _volumes(store):
    with store.session() as s:
        return s.exec(select(Volume).order_by(Volume.id)).all()


def test_split_is_decided_once_per_patient(sqlite_store, radiomics, tmp_path):
    from tests_helpers import make_project_simple

    project = make_project_simple(sqlite_store)
    img = radiomics / "breast1_image.nii.gz"
    first = ingest(sqlite_store, project, [img, radiomics / "brain2_image.nii.gz",
                                           radiomics / "brain1_image.nii.gz"])
    # The same file again on purpose (again=True): the same patient key, the same split.
    again = ingest(sqlite_store, project, [img], again=True)
    vols = {v.id: v for v in _volumes(sqlite_store)}
    assert vols[again.volume_ids[0]].split == vols[first.volume_ids[0]].split


def test_axis_choice_cuts_sagittal_slices(sqlite_store, radiomics):
    from tests_helpers import make_project_simple

    report = ingest(sqlite_store, make_project_simple(sqlite_store),
                    [radiomics / "breast1_image.nii.gz"], axis=0)
    shape = nib.as_closest_canonical(nib.load(radiomics / "breast1_image.nii.gz")).shape
    assert report.imported[0][1] == shape[0]
    assert _items(sqlite_store)[0].shape == [shape[2], shape[1]]


def test_pydicom_samples_keep_rescaled_intensities(store, project):
    paths = [get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")]
    report = ingest(store, project, paths)
    assert report.rejected == [] and report.n_items == 2
    ct, mr = _items(store)
    assert (ct.modality, mr.modality) == ("CT", "MR")
    ds = pydicom.dcmread(paths[0])
    np.testing.assert_array_equal(store.blobs.get_array(ct.blob),
                                  apply_modality_lut(ds.pixel_array, ds))
    assert ct.pixel_spacing == pytest.approx([float(v) for v in ds.PixelSpacing])
    vol = _volumes(store)[0]
    assert vol.dicom_header["00100020"]["Value"][0] == ct.patient_pseudonym  # PatientID
    assert ct.patient_pseudonym != mr.patient_pseudonym


def test_dicom_series_folder_is_ordered_by_position(store, project, tmp_path):
    series = tmp_path / "series"
    series.mkdir()
    uid = pydicom.uid.generate_uid()
    order = list(range(6))
    random.Random(3).shuffle(order)
    for n, k in enumerate(order):  # file names and instance numbers say nothing of position
        make_phi_dicom(series / f"img{n:03d}.dcm", instance=k + 1, series_uid=uid,
                       position_z=2.5 * k)
    report = ingest(store, project, [series])
    assert report.rejected == [] and report.n_items == 6
    (vol,) = _volumes(store)
    assert vol.shape == [6, 64, 64] and vol.spacing[0] == pytest.approx(2.5)
    for item in _items(store):
        want = phi_pixels(instance=item.slice_index + 1).astype(np.int32) - 1024
        np.testing.assert_array_equal(store.blobs.get_array(item.blob), want)


def test_multiframe_dicom_becomes_one_item_per_frame(store, project, tmp_path):
    make_phi_dicom(tmp_path / "mf.dcm", n_frames=5)
    report = ingest(store, project, [tmp_path / "mf.dcm"])
    assert report.n_items == 5
    arr = np.stack([store.blobs.get_array(i.blob) for i in _items(store)])
    np.testing.assert_array_equal(arr, phi_pixels(n_frames=5).astype(np.int32) - 1024)


def _dump_everything(store) -> bytes:
    """Every row of every table as JSON text, plus every blob's bytes."""
    chunks = []
    with store.engine.connect() as c:
        for table in SQLModel.metadata.sorted_tables:
            for row in c.execute(table.select()):
                chunks.append(json.dumps([str(v) for v in row]).encode())
    for p in sorted(store.settings.blob_dir.rglob("*")):
        if p.is_file():
            chunks.append(p.read_bytes())
    return b"\n".join(chunks)


def test_phi_laden_dicom_leaves_no_phi_in_the_store(store, project, tmp_path):
    uid = pydicom.uid.generate_uid()
    folder = tmp_path / "export"
    folder.mkdir()
    phi: dict[str, str] = {}
    for k in range(3):
        phi.update(make_phi_dicom(folder / f"s{k}.dcm", series_uid=uid, instance=k + 1,
                                  position_z=float(k)))
    phi.update(make_phi_dicom(folder / "mf.dcm", n_frames=2))
    report = ingest(store, project, [folder])
    assert report.rejected == [] and report.n_items == 5
    dump = _dump_everything(store)
    assert len(phi) > 20
    leaked = {k: v for k, v in phi.items() if v and str(v).encode() in dump}
    assert leaked == {}
    if store.engine.dialect.name == "sqlite":  # the raw database files too
        raw = b"".join(p.read_bytes() for p in store.settings.data_dir.glob("medloop.db*"))
        assert {k: v for k, v in phi.items() if v and str(v).encode() in raw} == {}
    header = _volumes(store)[0].dicom_header
    assert header["00120062"]["Value"] == ["YES"]  # PatientIdentityRemoved


def test_png_and_tiff_grey_and_rgb(store, project, tmp_path):
    grey = (np.arange(40 * 30) % 256).astype(np.uint8).reshape(40, 30)
    rgb = np.random.default_rng(0).integers(0, 255, (20, 25, 3), dtype=np.uint8)
    deep = (np.arange(16 * 12, dtype=np.uint16) * 300).reshape(16, 12)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(deep).save(tmp_path / "deep.tif")
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "grey_as_rgb.jpg", quality=100)
    mask = (grey > 100).astype(np.uint8)
    Image.fromarray(mask).save(tmp_path / "grey_mask.png")
    report = ingest(store, project, [tmp_path / "grey.png"], masks=[tmp_path / "grey_mask.png"])
    report2 = ingest(store, project, [tmp_path / n for n in ("rgb.png", "deep.tif",
                                                            "grey_as_rgb.jpg")])
    assert report.rejected == report2.rejected == []
    g, c, d, j = _items(store)
    np.testing.assert_array_equal(store.blobs.get_array(g.blob), grey)
    np.testing.assert_array_equal(store.blobs.get_array(c.blob), rgb)
    np.testing.assert_array_equal(store.blobs.get_array(d.blob), deep)
    assert j.shape == [40, 30]  # a grey JPEG saved as RGB comes in as grey
    with store.session() as s:
        gt = s.exec(select(Label).where(Label.item_id == g.id)).one()
    np.testing.assert_array_equal(store.blobs.get_array(gt.mask_blob), mask)


def test_database_dialect_is_the_one_asked_for(store, db_url):
    with store.engine.connect() as c:
        assert c.execute(text("SELECT 1")).scalar() == 1
    assert store.engine.dialect.name == db_url.split(":")[0].split("+")[0]
