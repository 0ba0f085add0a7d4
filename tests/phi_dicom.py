"""Test helper: writes a real CT DICOM file full of known PHI, so tests can prove none of it
survives de-identification, ingest, the database or the blob store.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

ROWS = COLS = 64
PRIVATE_GROUP = 0x0011
PRIVATE_CREATOR = "ACME PHI"
PRIVATE_VALUE = "secret-private-Janet"


def _derived_uid(seed: str, role: str) -> str:
    # Instances of one series must share study and frame of reference; derive them from the
    # series UID so callers only pass series_uid.
    return generate_uid(entropy_srcs=[seed, role])


def phi_pixels(n_frames: int = 1, instance: int = 1) -> np.ndarray:
    """The stored pixel values make_phi_dicom writes (int16, 0..1499).

    Every high byte is 0..5, never printable, so no PHI string can occur in the pixel bytes.
    """
    shape = (n_frames, ROWS, COLS)
    values = np.arange(np.prod(shape), dtype=np.int64).reshape(shape) * 7 + instance * 31
    frames = (values % 1500).astype(np.int16)
    return frames[0] if n_frames == 1 else frames


def make_phi_dicom(
    path: str | Path,
    *,
    patient_id: str = "PHI-ID-998877",
    n_frames: int = 1,
    instance: int = 1,
    series_uid: str | None = None,
    position_z: float = 0.0,
    study_uid: str | None = None,
) -> dict[str, str]:
    """Write a CT slice (or an n_frames multi-frame CT) laden with PHI to `path`.

    Returns {name: value} of every PHI string written: names, IDs, dates (as written and in ISO
    form), addresses, phone, descriptions, the private value and the instance UIDs.
    """
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or _derived_uid(series_uid, "study")
    frame_of_reference_uid = _derived_uid(study_uid, "frame-of-reference")
    sop_uid = generate_uid()
    referenced_uid = generate_uid()
    phi = {
        "patient_name": "Doe^Janet^Quincy",
        "patient_given_name": "Janet",
        "patient_middle_name": "Quincy",
        "patient_id": patient_id,
        "birth_date": "19610415",
        "birth_date_iso": "1961-04-15",
        "patient_address": "42 Wallaby Way, Sydney",
        "patient_telephone": "+61-555-0199",
        "other_patient_ids": "PHI-OTHER-4321",
        "other_patient_ids_sequence_id": "PHI-SEQ-ID-2468",
        "issuer_of_patient_id": "St Elsewhere MRN Registry",
        "institution_name": "St Elsewhere General Hospital",
        "institution_address": "1 Hospital Road, Springfield",
        "department_name": "Quincy Wing Radiology",
        "referring_physician": "House^Gregory",
        "performing_physician": "Wilson^James",
        "operator": "Tech^Tina",
        "reading_physician": "Cuddy^Lisa",
        "station_name": "CT-ROOM-SEVEN",
        "accession_number": "ACC-77331",
        "study_id": "STUDY-PHI-31",
        "study_date": "20240312",
        "study_date_iso": "2024-03-12",
        "study_description": "Chest CT for Janet Doe",
        "series_description": "Axial chest Janet",
        "image_comments": f"patient Janet Doe mrn {patient_id}",
        "device_serial_number": "SN-4455-PHI",
        "requested_procedure_id": "RP-PHI-5566",
        "scheduled_procedure_step_id": "SPS-PHI-7788",
        "requested_procedure_description": "Chest CT requested for Janet Doe",
        "private_value": PRIVATE_VALUE,
        "study_uid": study_uid,
        "series_uid": series_uid,
        "sop_instance_uid": sop_uid,
        "frame_of_reference_uid": frame_of_reference_uid,
        "referenced_sop_instance_uid": referenced_uid,
    }

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_of_reference_uid
    ds.Modality = "CT"
    ds.Manufacturer = "Medloop Test Scanner"

    ds.PatientName = phi["patient_name"]
    ds.PatientID = patient_id
    ds.PatientBirthDate = phi["birth_date"]
    ds.PatientSex = "F"
    ds.PatientAddress = phi["patient_address"]
    ds.PatientTelephoneNumbers = phi["patient_telephone"]
    ds.OtherPatientIDs = phi["other_patient_ids"]
    other_id = Dataset()
    other_id.PatientID = phi["other_patient_ids_sequence_id"]
    other_id.IssuerOfPatientID = phi["issuer_of_patient_id"]
    other_id.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([other_id])

    ds.InstitutionName = phi["institution_name"]
    ds.InstitutionAddress = phi["institution_address"]
    ds.InstitutionalDepartmentName = phi["department_name"]
    ds.ReferringPhysicianName = phi["referring_physician"]
    ds.PerformingPhysicianName = phi["performing_physician"]
    ds.OperatorsName = phi["operator"]
    ds.NameOfPhysiciansReadingStudy = phi["reading_physician"]
    ds.StationName = phi["station_name"]
    ds.DeviceSerialNumber = phi["device_serial_number"]
    ds.AccessionNumber = phi["accession_number"]
    ds.StudyID = phi["study_id"]

    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        setattr(ds, keyword, phi["study_date"])
    ds.StudyTime = "101500"
    ds.SeriesTime = "101700"
    ds.AcquisitionTime = "101800"
    ds.ContentTime = "101900"
    ds.StudyDescription = phi["study_description"]
    ds.SeriesDescription = phi["series_description"]
    ds.ImageComments = phi["image_comments"]

    request = Dataset()
    request.RequestedProcedureID = phi["requested_procedure_id"]
    request.ScheduledProcedureStepID = phi["scheduled_procedure_step_id"]
    request.RequestedProcedureDescription = phi["requested_procedure_description"]
    ds.RequestAttributesSequence = Sequence([request])
    referenced_study = Dataset()
    referenced_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Mgmt
    referenced_study.ReferencedSOPInstanceUID = study_uid
    ds.ReferencedStudySequence = Sequence([referenced_study])
    referenced_image = Dataset()
    referenced_image.ReferencedSOPClassUID = CTImageStorage
    referenced_image.ReferencedSOPInstanceUID = referenced_uid
    ds.ReferencedImageSequence = Sequence([referenced_image])

    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", PRIVATE_VALUE)

    ds.SeriesNumber = 1
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [0.0, 0.0, float(position_z)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SliceThickness = 1.0
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    ds.RescaleType = "HU"
    ds.BurnedInAnnotation = "NO"

    pixels = phi_pixels(n_frames, instance)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ROWS
    ds.Columns = COLS
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    if n_frames > 1:
        ds.NumberOfFrames = n_frames
    ds.PixelData = pixels.astype("<i2").tobytes()

    ds.save_as(path, enforce_file_format=True)
    return phi
