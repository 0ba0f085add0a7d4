"""De-identification tests on real DICOM files: the PHI-laden CT from phi_dicom and pydicom's
bundled CT_small / MR_small samples.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
import json
import re
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, CTImageStorage

from phi_dicom import PRIVATE_VALUE, make_phi_dicom, phi_pixels
from pipeline.ingest.deid import (
    DEID_METHOD,
    deidentify,
    has_burned_in_phi,
    header_json,
    patient_pseudonym,
)
from store.errors import InvalidInput

SECRET = b"test-secret-0123456789"
OTHER_SECRET = b"another-secret-9876543210"
UID_PATTERN = re.compile(r"^2\.25\.(0|[1-9][0-9]*)$")


def _days(da: str) -> dt.date:
    return dt.datetime.strptime(da, "%Y%m%d").date()


def _saved_bytes(ds: Dataset, path: Path) -> bytes:
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path.read_bytes()


def _all_uids(ds: Dataset) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []

    def visit(_: Dataset, elem: pydicom.DataElement) -> None:
        if elem.VR == "UI" and elem.value:
            values = elem.value if elem.VM > 1 else [elem.value]
            found.extend((elem.keyword, str(v)) for v in values)

    ds.walk(visit)
    return found


def _has_private(ds: Dataset) -> bool:
    found = []
    ds.walk(lambda _ds, elem: found.append(elem.tag) if elem.tag.is_private else None)
    return bool(found)


@pytest.fixture
def phi_file(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    path = tmp_path / "phi.dcm"
    return path, make_phi_dicom(path)


def _bundled_phi(name: str) -> tuple[Dataset, list[str]]:
    ds = pydicom.dcmread(get_testdata_file(name))
    values = [
        str(ds.PatientName),
        ds.PatientID,
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
        ds.FrameOfReferenceUID,
        ds.InstanceCreatorUID,
        ds.StudyDate,
        ds.InstanceCreationDate,
        ds.file_meta.SourceApplicationEntityTitle.strip(),
    ]
    if name == "CT_small.dcm":
        values += [
            ds.InstitutionName,  # "JFK IMAGING CENTER"
            ds.StationName,
            ds.SeriesDate,
            ds.OtherPatientIDsSequence[0].PatientID,
            ds.OtherPatientIDsSequence[1].PatientID,
            "GEMS_IDEN_01",  # private creators and private values
            "GE_GENESIS_FF",
            "HiSpeed CT/i",
        ]
    else:
        values += [ds.DeviceSerialNumber, ds.StationName]
    return ds, [v for v in values if v]


def test_phi_file_leaves_no_phi_in_header_json_or_saved_file(phi_file, tmp_path):
    path, phi = phi_file
    ds = pydicom.dcmread(path)
    assert ds.PatientName == phi["patient_name"]  # the helper really wrote the PHI

    out = deidentify(ds, SECRET)
    header = str(header_json(out))
    saved = _saved_bytes(out, tmp_path / "clean.dcm")
    for name, value in phi.items():
        assert value not in header, f"{name} ({value!r}) survived in header_json"
        assert value.encode() not in saved, f"{name} ({value!r}) survived in the saved file"
    # The original file contains every value, so the search above is a real search.
    original = path.read_bytes()
    written = {name: value for name, value in phi.items() if not name.endswith("_iso")}
    assert all(value.encode() in original for value in written.values())


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_bundled_samples_leave_no_phi(name, tmp_path):
    ds, values = _bundled_phi(name)
    original = Path(get_testdata_file(name)).read_bytes()
    assert all(v.encode() in original for v in values)

    out = deidentify(ds, SECRET)
    header = str(header_json(out))
    saved = _saved_bytes(out, tmp_path / name)
    for value in values:
        assert value not in header, f"{value!r} survived in header_json of {name}"
        assert value.encode() not in saved, f"{value!r} survived in the saved {name}"
    assert out.get("InstitutionName", "") == ""
    assert out.get("StationName", "") == ""
    assert "ImageComments" not in out
    assert "TimezoneOffsetFromUTC" not in out
    assert "DataSetTrailingPadding" not in out
    assert "SourceApplicationEntityTitle" not in out.file_meta
    reread = pydicom.dcmread(tmp_path / name)
    assert reread.PatientIdentityRemoved == "YES"
    assert np.array_equal(reread.pixel_array, ds.pixel_array)


def test_profile_attributes_and_markers(phi_file):
    path, phi = phi_file
    ds = pydicom.dcmread(path)
    out = deidentify(ds, SECRET)

    pseudonym = patient_pseudonym(phi["patient_id"], SECRET)
    assert out.PatientName == pseudonym
    assert out.PatientID == pseudonym
    assert out.PatientIdentityRemoved == "YES"
    assert out.DeidentificationMethod == DEID_METHOD
    codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113107"]
    assert {item.CodingSchemeDesignator for item in out.DeidentificationMethodCodeSequence} == {
        "DCM"
    }
    assert out.LongitudinalTemporalInformationModified == "MODIFIED"

    for keyword in (
        "PatientBirthDate",
        "AccessionNumber",
        "StudyID",
        "ReferringPhysicianName",
        "InstitutionName",
        "OperatorsName",
        "StationName",
        "DeviceSerialNumber",
        "PatientSex",
    ):
        assert out.get(keyword, "") == "", keyword
    for keyword in (
        "PatientAddress",
        "PatientTelephoneNumbers",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "PerformingPhysicianName",
        "NameOfPhysiciansReadingStudy",
        "StudyDescription",
        "SeriesDescription",
        "ImageComments",
        "RequestAttributesSequence",
    ):
        assert keyword not in out, keyword
    # Kept: geometry, acquisition physics, modality, times of day.
    for keyword in (
        "Modality",
        "ImagePositionPatient",
        "ImageOrientationPatient",
        "PixelSpacing",
        "SliceThickness",
        "RescaleSlope",
        "RescaleIntercept",
        "StudyTime",
        "BurnedInAnnotation",
    ):
        assert out[keyword].value == ds[keyword].value, keyword


def test_pseudonym_is_keyed_hmac():
    expected = "P-" + hmac.new(SECRET, b"PHI-ID-998877", hashlib.sha256).hexdigest()[:12]
    assert patient_pseudonym("PHI-ID-998877", SECRET) == expected
    assert patient_pseudonym("PHI-ID-998877", SECRET) == expected
    assert patient_pseudonym("PHI-ID-998877", OTHER_SECRET) != expected
    assert patient_pseudonym("PHI-ID-998878", SECRET) != expected
    assert re.fullmatch(r"P-[0-9a-f]{12}", expected)


def test_missing_patient_id_keys_on_study_then_sop_uid(phi_file):
    path, phi = phi_file
    ds = pydicom.dcmread(path)
    ds.PatientID = ""
    out = deidentify(ds, SECRET)
    assert out.PatientID == patient_pseudonym(phi["study_uid"], SECRET)

    del ds.PatientID
    del ds.StudyInstanceUID
    out = deidentify(ds, SECRET)
    assert out.PatientID == patient_pseudonym(phi["sop_instance_uid"], SECRET)

    del ds.SOPInstanceUID
    with pytest.raises(InvalidInput, match="PatientID"):
        deidentify(ds, SECRET)


def test_empty_secret_is_refused(phi_file):
    path, _ = phi_file
    with pytest.raises(ValueError, match="secret"):
        deidentify(pydicom.dcmread(path), b"")


def test_uids_remapped_consistently(tmp_path):
    series = pydicom.uid.generate_uid()
    phi_a = make_phi_dicom(tmp_path / "a.dcm", instance=1, series_uid=series, position_z=0.0)
    phi_b = make_phi_dicom(tmp_path / "b.dcm", instance=2, series_uid=series, position_z=1.0)
    a = pydicom.dcmread(tmp_path / "a.dcm")
    b = pydicom.dcmread(tmp_path / "b.dcm")
    out_a, out_b = deidentify(a, SECRET), deidentify(b, SECRET)

    # Same input + same secret -> same output, across files and across calls.
    assert out_a.StudyInstanceUID == out_b.StudyInstanceUID
    assert out_a.SeriesInstanceUID == out_b.SeriesInstanceUID
    assert out_a.FrameOfReferenceUID == out_b.FrameOfReferenceUID
    assert out_a.SOPInstanceUID != out_b.SOPInstanceUID
    assert deidentify(a, SECRET).SOPInstanceUID == out_a.SOPInstanceUID
    assert out_a.file_meta.MediaStorageSOPInstanceUID == out_a.SOPInstanceUID

    # A reference to an instance maps to that instance's new UID.
    target = copy.deepcopy(b)
    target.SOPInstanceUID = phi_a["referenced_sop_instance_uid"]
    ref = out_a.ReferencedImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == deidentify(target, SECRET).SOPInstanceUID
    assert ref.ReferencedSOPClassUID == CTImageStorage

    # A different secret gives different UIDs.
    other = deidentify(a, OTHER_SECRET)
    for keyword in (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "FrameOfReferenceUID",
    ):
        assert other[keyword].value != out_a[keyword].value, keyword
        assert out_a[keyword].value not in {*phi_a.values(), *phi_b.values()}

    # Class and transfer syntax UIDs are standard and stay; every other UID is 2.25.<int>.
    assert out_a.SOPClassUID == a.SOPClassUID == CTImageStorage
    assert out_a.file_meta.TransferSyntaxUID == a.file_meta.TransferSyntaxUID
    for keyword, value in _all_uids(out_a) + _all_uids(out_a.file_meta):
        if keyword.endswith("ClassUID") or keyword == "TransferSyntaxUID":
            continue
        assert UID_PATTERN.match(value), (keyword, value)
        assert len(value) <= 64 and UID(value).is_valid, (keyword, value)


def test_bundled_sample_uids(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    out = deidentify(ds, SECRET)
    assert out.SOPClassUID == ds.SOPClassUID
    original = {value for _, value in _all_uids(ds) + _all_uids(ds.file_meta)}
    kept = {value for _, value in _all_uids(out) if not UID(value).is_private}
    remapped = {value for _, value in _all_uids(out) if UID(value).is_private}
    assert kept <= original  # only standard class / syntax UIDs come through
    assert not remapped & original
    assert all(UID_PATTERN.match(v) and len(v) <= 64 for v in remapped)


def test_dates_shift_by_one_offset_per_patient(tmp_path):
    make_phi_dicom(tmp_path / "a.dcm", instance=1)
    make_phi_dicom(tmp_path / "b.dcm", instance=2)  # same patient, a later study
    make_phi_dicom(tmp_path / "c.dcm", patient_id="OTHER-PATIENT-555")
    a, b, c = (pydicom.dcmread(tmp_path / f"{n}.dcm") for n in "abc")
    b.StudyDate = b.SeriesDate = "20240401"
    a.AcquisitionDateTime = "20240312101800.123456+1100"
    a.ContentDate = ["20240312", "20240313"]
    out_a, out_b, out_c = (deidentify(x, SECRET) for x in (a, b, c))

    offset = _days(out_a.StudyDate) - _days(a.StudyDate)
    assert -365 <= offset.days <= -1
    for keyword in ("SeriesDate", "AcquisitionDate"):
        assert _days(out_a[keyword].value) - _days(a[keyword].value) == offset
    assert _days(out_b.StudyDate) - _days(b.StudyDate) == offset
    # Intervals within one patient survive.
    assert _days(out_b.StudyDate) - _days(out_a.StudyDate) == dt.timedelta(days=20)
    pairs = zip(out_a.ContentDate, a.ContentDate, strict=True)
    assert [_days(new) - _days(old) for new, old in pairs] == [offset, offset]
    shifted = (dt.date(2024, 3, 12) + offset).strftime("%Y%m%d")
    assert out_a.AcquisitionDateTime == shifted + "101800.123456+1100"
    # Another patient gets its own offset; times of day are kept.
    assert _days(out_c.StudyDate) - _days(c.StudyDate) != offset
    assert out_a.StudyTime == a.StudyTime
    # Another secret gives another offset.
    assert deidentify(a, OTHER_SECRET).StudyDate != out_a.StudyDate


def test_unshiftable_dates_are_dropped_not_kept(phi_file):
    path, _ = phi_file
    ds = pydicom.dcmread(path)
    ds.AcquisitionDateTime = "2024"
    ds.ContentDate = "20240230"
    ds.SeriesDate = "20240301-20240310"
    out = deidentify(ds, SECRET)
    assert out.AcquisitionDateTime == ""
    assert out.ContentDate == ""
    start, end = out.SeriesDate.split("-")
    assert _days(end) - _days(start) == dt.timedelta(days=9)
    assert _days(start) - _days(out.StudyDate) == dt.timedelta(days=-11)


def test_private_tags_removed_everywhere(phi_file, tmp_path):
    path, _ = phi_file
    ds = pydicom.dcmread(path)
    item = ds.ReferencedImageSequence[0]
    item.private_block(0x0029, "NESTED PHI", create=True).add_new(0x10, "LO", "nested-Janet")
    assert _has_private(ds)

    out = deidentify(ds, SECRET)
    assert not _has_private(out)
    saved = _saved_bytes(out, tmp_path / "clean.dcm")
    assert PRIVATE_VALUE.encode() not in saved
    assert b"nested-Janet" not in saved and b"ACME PHI" not in saved

    ct = deidentify(pydicom.dcmread(get_testdata_file("CT_small.dcm")), SECRET)
    assert not _has_private(ct)


def test_nested_sequences_cleaned(phi_file, tmp_path):
    path, phi = phi_file
    ds = pydicom.dcmread(path)
    # PHI the table lists, two levels down inside sequences the table keeps.
    inner = Dataset()
    inner.ReferringPhysicianName = "Nested^Doctor"
    inner.InstitutionName = "Nested General Hospital"
    inner.PatientAddress = "7 Nested Lane"
    inner.ReferencedSOPInstanceUID = "1.2.3.4.5.6.7.8.9"
    inner.EvaluatorName = "Unlisted^Evaluator"  # a name the table does not list
    inner.InstanceCreationDate = "20240312"
    item = ds.ReferencedImageSequence[0]
    item.ReferencedImageSequence = Sequence([inner])
    ds.SourceImageSequence = Sequence([copy.deepcopy(inner)])

    out = deidentify(ds, SECRET)
    assert "RequestAttributesSequence" not in out
    assert "OtherPatientIDsSequence" not in out
    assert len(out.ReferencedStudySequence) == 0
    for seq in (out.ReferencedImageSequence[0].ReferencedImageSequence, out.SourceImageSequence):
        cleaned = seq[0]
        assert cleaned.ReferringPhysicianName == ""
        assert cleaned.InstitutionName == ""
        assert "PatientAddress" not in cleaned
        assert cleaned.EvaluatorName == ""
        assert UID_PATTERN.match(cleaned.ReferencedSOPInstanceUID)
        assert cleaned.InstanceCreationDate == out.StudyDate
    header = str(header_json(out))
    saved = _saved_bytes(out, tmp_path / "clean.dcm")
    nested = [
        "Nested^Doctor",
        "Nested General Hospital",
        "7 Nested Lane",
        "1.2.3.4.5.6.7.8.9",
        "Unlisted^Evaluator",
        phi["requested_procedure_id"],
        phi["scheduled_procedure_step_id"],
        phi["requested_procedure_description"],
        phi["other_patient_ids_sequence_id"],
        phi["issuer_of_patient_id"],
    ]
    for value in nested:
        assert value not in header and value.encode() not in saved, value


@pytest.mark.parametrize("n_frames", [1, 4])
def test_pixels_unchanged(tmp_path, n_frames):
    path = tmp_path / "phi.dcm"
    make_phi_dicom(path, n_frames=n_frames, instance=3)
    ds = pydicom.dcmread(path)
    out = deidentify(ds, SECRET)
    assert out.PixelData == ds.PixelData
    assert np.array_equal(out.pixel_array, ds.pixel_array)
    assert np.array_equal(out.pixel_array, phi_pixels(n_frames, instance=3))
    expected_shape = (n_frames, 64, 64) if n_frames > 1 else (64, 64)
    assert out.pixel_array.shape == expected_shape


@pytest.mark.parametrize("source", ["phi", "CT_small.dcm", "MR_small.dcm"])
def test_input_dataset_not_modified(source, phi_file):
    path = phi_file[0] if source == "phi" else get_testdata_file(source)
    ds = pydicom.dcmread(path)
    before = copy.deepcopy(ds)
    before_meta = copy.deepcopy(ds.file_meta)
    deidentify(ds, SECRET)
    assert ds == before
    assert ds.file_meta == before_meta
    assert _has_private(ds) == _has_private(before)


def test_header_json_drops_bulk_binary_and_is_json_safe(phi_file):
    path, _ = phi_file
    out = deidentify(pydicom.dcmread(path), SECRET)
    header = header_json(out)
    json.dumps(header)
    assert "7FE00010" not in header
    assert header["00100020"]["Value"] == [out.PatientID]
    assert header["00200032"]["Value"] == [0.0, 0.0, 0.0]

    ds = Dataset()
    ds.PatientID = "P-000000000000"
    ds.FloatPixelData = np.zeros(16, dtype=np.float32).tobytes()
    ds.DoubleFloatPixelData = np.zeros(4, dtype=np.float64).tobytes()
    item = Dataset()
    item.CodeValue = "X1"
    item.add_new(0x00091010, "UN", b"\x01\x02\x03\x04")
    item.EncapsulatedDocument = b"%PDF-1.4 tiny"
    ds.ContentSequence = Sequence([item])
    header = header_json(ds)
    dumped = json.dumps(header)
    assert "7FE00008" not in header and "7FE00009" not in header
    assert "InlineBinary" not in dumped and "BulkDataURI" not in dumped
    nested = header["0040A730"]["Value"][0]
    assert nested == {"00080100": {"vr": "SH", "Value": ["X1"]}}


@pytest.mark.parametrize(
    ("value", "expected"),
    [("YES", True), ("YES ", True), ("NO", False), ("", False), (None, False)],
)
def test_burned_in_annotation_detection(phi_file, value, expected):
    ds = pydicom.dcmread(phi_file[0])
    if value is None:
        del ds.BurnedInAnnotation
    else:
        ds.BurnedInAnnotation = value
    assert has_burned_in_phi(ds) is expected
    # De-identification keeps the flag, so ingest can still refuse the file afterwards.
    assert has_burned_in_phi(deidentify(ds, SECRET)) is expected


def test_overlays_curves_gps_and_group_lengths_removed(phi_file):
    ds = pydicom.dcmread(phi_file[0])
    ds.add_new(0x60000010, "US", 64)
    ds.add_new(0x60003000, "OW", b"\x00\x01" * 8)
    ds.add_new(0x60004000, "LT", "overlay note on Janet Doe")
    ds.add_new(0x50003000, "OW", b"\x00\x01" * 8)
    ds.add_new(0x00160072, "DS", [-33.8688])  # GPSLatitude
    ds.add_new(0x00080000, "UL", 1234)  # a (retired) group length
    out = deidentify(ds, SECRET)
    remaining = {int(tag) for tag in out.keys()}
    for tag in (0x60000010, 0x60003000, 0x60004000, 0x50003000, 0x00160072, 0x00080000):
        assert tag not in remaining, hex(tag)
