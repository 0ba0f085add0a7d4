"""DICOM de-identification: the PS3.15 Annex E Basic Application Level Confidentiality Profile
with keyed UID remapping and per-patient date shifting, so every image is stored without PHI.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import hmac
from collections.abc import Callable
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID

from store.errors import InvalidInput

__all__ = ["deidentify", "has_burned_in_phi", "header_json", "patient_pseudonym"]

DEID_METHOD = "DICOM PS3.15 E.1-1 Basic Profile; medloop"
DUMMY_TEXT = "ANONYMIZED"

# PS3.15 Table E.1-1, Basic Profile column, by action code exactly as the standard writes it;
# _Cleaner._apply decides what a compound code (X/Z, X/D, ...) means here.
# fmt: off
_PROFILE: dict[str, tuple[str, ...]] = {
    "D": (
        "AcquisitionFieldOfViewLabel", "AnnotationGroupLabel", "AssertionDateTime",
        "AttributeModificationDateTime", "BeamHoldTransitionDateTime", "CertificateOfSigner",
        "ClinicalTrialProtocolEthicsCommitteeName", "ClinicalTrialProtocolID",
        "ClinicalTrialSponsorName", "ClinicalTrialSubjectID", "ClinicalTrialSubjectReadingID",
        "ContainerIdentifier", "ContentSequence", "ContextGroupLocalVersion",
        "ContextGroupVersion", "Date", "DateTime", "DecayCorrectionDateTime", "DestinationAE",
        "DeviceLabel", "DigitalSignatureDateTime", "EffectiveDateTime", "EncapsulatedDocument",
        "EntityLabel", "EntityLongLabel", "ExclusionStartDateTime", "FlowIdentifier",
        "FlowIdentifierSequence", "FrameAcquisitionDateTime", "FrameOriginTimestamp",
        "FrameReferenceDateTime", "FunctionalSyncPulse", "GraphicAnnotationSequence",
        "HangingProtocolCreationDateTime", "ImpedanceMeasurementDateTime",
        "InformationIssueDateTime", "InterlockDateTime", "InterlockDescription",
        "InterlockOriginDescription", "ModifyingSystem", "OverrideDateTime",
        "PersonIdentificationCodeSequence", "PersonName", "RTPlanLabel", "RTPrescriptionLabel",
        "RTToleranceSetLabel", "RadiationDoseIdentificationLabel",
        "RadiationDoseInVivoMeasurementLabel", "RadiationGenerationModeLabel",
        "ReasonForTheAttributeModification", "RecordedRTControlPointDateTime",
        "ReferencedDateTime", "SafePositionExitDate", "SafePositionExitTime",
        "SafePositionReturnDate", "SafePositionReturnTime", "SelectorAEValue",
        "SelectorASValue", "SelectorDAValue", "SelectorDTValue", "SelectorLOValue",
        "SelectorLTValue", "SelectorOBValue", "SelectorPNValue", "SelectorSHValue",
        "SelectorSTValue", "SelectorTMValue", "SelectorUNValue", "SelectorURValue",
        "SelectorUTValue", "SourceEndDateTime", "SourceIdentifier", "SourceStartDateTime",
        "SourceStrengthReferenceDate", "SourceStrengthReferenceTime", "SpecimenIdentifier",
        "StructureSetLabel", "Time", "TreatmentControlPointDate", "TreatmentControlPointTime",
        "TreatmentPositionGroupLabel", "TreatmentToleranceViolationDateTime",
        "TreatmentToleranceViolationDescription", "UserContentLabel", "UserContentLongLabel",
        "VerificationDateTime", "VerifyingObserverName", "VerifyingObserverSequence",
        "VerifyingOrganization", "XRayDetectorID", "XRaySourceID",
    ),
    "Z": (
        "AccessionNumber", "CalibrationDateTime", "ClinicalTrialCoordinatingCenterName",
        "ClinicalTrialProtocolName", "ClinicalTrialSiteID", "ClinicalTrialSiteName",
        "ClinicalTrialTimePointID", "ConceptualVolumeCombinationDescription",
        "ConceptualVolumeDescription", "ConsultingPhysicianName", "DeviceAlternateIdentifier",
        "FillerOrderNumberImagingServiceRequest", "FractionationNotes",
        "IssuerOfTheContainerIdentifierSequence", "IssuerOfTheSpecimenIdentifierSequence",
        "ManufacturerDeviceIdentifier", "ParticipationDateTime", "PatientBirthDate",
        "PatientName", "PatientSex", "PlacerOrderNumberImagingServiceRequest",
        "PrescriptionNotes", "PrescriptionNotesSequence", "ROIInterpreter", "ROIName",
        "RTAccessoryDeviceSlotID", "RTAccessoryHolderSlotID", "RTPhysicianIntentNarrative",
        "RadiationGenerationModeDescription", "ReasonForSuperseding", "ReferringPhysicianName",
        "ReviewDate", "ReviewTime", "SourceOfPreviousValues", "SpecimenPreparationSequence",
        "StructureSetDate", "StructureSetTime", "StudyDate", "StudyID", "StudyTime",
        "TreatmentTechniqueNotes", "VerifyingObserverIdentificationCodeSequence",
    ),
    "X": (
        "AcquisitionComments", "AcquisitionProtocolDescription",
        "ActualHumanPerformersSequence", "AdditionalPatientHistory", "AddressTrial",
        "AdmissionID", "AdmittingDate", "AdmittingDiagnosesCodeSequence",
        "AdmittingDiagnosesDescription", "AdmittingTime", "Allergies",
        "AnnotationGroupDescription", "ApprovalStatusDateTime", "Arbitrary",
        "AssertionExpirationDateTime", "AuthorObserverSequence", "BeamDescription",
        "BolusDescription", "BranchOfService", "CalibrationDate", "CalibrationTime",
        "CameraOwnerName", "CassetteID", "CertifiedTimestamp",
        "ClinicalTrialProtocolEthicsCommitteeApprovalNumber", "ClinicalTrialSeriesDescription",
        "ClinicalTrialSeriesID", "ClinicalTrialTimePointDescription", "CommentsOnRadiationDose",
        "CommentsOnThePerformedProcedureStep", "CompensatorDescription",
        "ConfidentialityConstraintOnPatientDataDescription",
        "ConsultingPhysicianIdentificationSequence", "ContainerComponentID",
        "ContainerDescription", "ContentCreatorIdentificationCodeSequence",
        "ContrastBolusStartTime", "ContrastBolusStopTime", "ContributionDateTime",
        "ContributionDescription", "CountryOfResidence", "CreationDate", "CreationTime",
        "CurrentObserverTrial", "CurrentPatientLocation", "CurveDate", "CurveTime",
        "CustodialOrganizationSequence", "DataSetTrailingPadding",
        "DateOfDocumentOrVerbalTransactionTrial", "DateOfInstallation",
        "DateOfLastCalibration", "DateOfManufacture", "DateOfSecondaryCapture",
        "DateTimeOfLastCalibration", "DecompositionDescription", "DerivationDescription",
        "DeviceDescription", "DeviceSettingDescription", "DigitalSignaturesSequence",
        "DischargeDate", "DischargeDiagnosisDescription", "DischargeTime",
        "DisplacementReferenceLabel", "DistributionAddress", "DistributionName",
        "DoseReferenceDescription", "EntityDescription", "EntityName",
        "EquipmentFrameOfReferenceDescription", "EthicsCommitteeApprovalEffectivenessEndDate",
        "EthicsCommitteeApprovalEffectivenessStartDate", "EthnicGroup",
        "ExpectedCompletionDateTime", "FilterLookupTableDescription",
        "FindingsGroupRecordingDateTrial", "FindingsGroupRecordingTimeTrial",
        "FixationDeviceDescription", "FractionGroupDescription", "FrameComments",
        "GantryID", "GeneratorID", "HL7DocumentEffectiveTime", "HumanPerformerName",
        "HumanPerformerOrganization", "IconImageSequence", "IdentifyingComments",
        "ImageComments", "ImagePresentationComments", "ImagingServiceRequestComments",
        "Impressions", "InstanceCoercionDateTime", "InstanceOriginStatus",
        "InstitutionAddress", "InstitutionalDepartmentName",
        "InstitutionalDepartmentTypeCodeSequence", "InsurancePlanIdentification",
        "IntendedFractionStartTime", "IntendedRecipientsOfResultsIdentificationSequence",
        "InterpretationApprovalDate", "InterpretationApprovalTime",
        "InterpretationApproverSequence", "InterpretationAuthor",
        "InterpretationDiagnosisDescription", "InterpretationID", "InterpretationIDIssuer",
        "InterpretationRecordedDate", "InterpretationRecordedTime", "InterpretationRecorder",
        "InterpretationText", "InterpretationTranscriber", "InterpretationTranscriptionDate",
        "InterpretationTranscriptionTime", "InterventionDrugStartTime",
        "InterventionDrugStopTime", "IssueDateOfImagingServiceRequest",
        "IssueTimeOfImagingServiceRequest", "IssuerOfAdmissionID",
        "IssuerOfAdmissionIDSequence", "IssuerOfClinicalTrialProtocolID",
        "IssuerOfClinicalTrialSeriesID", "IssuerOfClinicalTrialSiteID",
        "IssuerOfClinicalTrialSubjectID", "IssuerOfClinicalTrialSubjectReadingID",
        "IssuerOfClinicalTrialTimePointID", "IssuerOfPatientID", "IssuerOfServiceEpisodeID",
        "IssuerOfServiceEpisodeIDSequence", "LastMenstrualDate", "LensMake", "LensModel",
        "LensSerialNumber", "LensSpecification", "LongDeviceDescription", "MAC", "MakerNote",
        "MedicalAlerts", "MedicalRecordLocator", "MilitaryRank", "ModifiedAttributesSequence",
        "ModifiedImageDate", "ModifiedImageDescription", "ModifiedImageTime",
        "ModifyingDeviceID", "MultienergyAcquisitionDescription",
        "NameOfPhysiciansReadingStudy", "NamesOfIntendedRecipientsOfResults", "NetworkID",
        "NonconformingDataElementValue", "NonconformingModifiedAttributesSequence",
        "ObservationDateTrial", "ObservationStartDateTime", "ObservationTimeTrial",
        "Occupation", "OrderCallbackPhoneNumber", "OrderCallbackTelecomInformation",
        "OrderEnteredBy", "OrderEntererLocation", "OriginalAttributesSequence", "Originator",
        "OtherClinicalTrialProtocolIDsSequence", "OtherPatientIDs", "OtherPatientIDsSequence",
        "OtherPatientNames", "OverlayDate", "OverlayTime", "ParticipantSequence",
        "PatientComments", "PatientSetupPhotoDescription", "PatientState",
        "PatientTransportArrangements", "PatientTreatmentPreparationMethodDescription",
        "PatientTreatmentPreparationProcedureParameterDescription", "PatientAddress",
        "PatientAge", "PatientBirthName", "PatientBirthTime", "PatientInstitutionResidence",
        "PatientInsurancePlanCodeSequence", "PatientMotherBirthName",
        "PatientPrimaryLanguageCodeSequence", "PatientPrimaryLanguageModifierCodeSequence",
        "PatientReligiousPreference", "PatientSize", "PatientTelecomInformation",
        "PatientTelephoneNumbers", "PatientWeight", "PerformedLocation",
        "PerformedProcedureStepDescription", "PerformedProcedureStepEndDate",
        "PerformedProcedureStepEndDateTime", "PerformedProcedureStepEndTime",
        "PerformedProcedureStepID", "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartDateTime", "PerformedProcedureStepStartTime",
        "PerformedStationAETitle", "PerformedStationGeographicLocationCodeSequence",
        "PerformedStationName", "PerformedStationNameCodeSequence",
        "PerformingPhysicianIdentificationSequence", "PerformingPhysicianName",
        "PersonAddress", "PersonTelecomInformation", "PersonTelephoneNumbers",
        "PhysicianApprovingInterpretation", "PhysiciansReadingStudyIdentificationSequence",
        "PhysiciansOfRecord", "PhysiciansOfRecordIdentificationSequence", "PlateID",
        "PositionAcquisitionTemplateDescription", "PositionAcquisitionTemplateName",
        "PreMedication", "PregnancyStatus", "PrescriptionDescription",
        "PresentationCreationDate", "PresentationCreationTime",
        "PriorTreatmentDoseDescription", "ProcedureStepCancellationDateTime",
        "ProductExpirationDateTime", "PyramidDescription", "PyramidLabel",
        "ROICreatorSequence", "ROIDateTime", "ROIDescription", "ROIGenerationDescription",
        "ROIInterpreterSequence", "ROIObservationDateTime", "ROIObservationDescription",
        "ROIObservationLabel", "RTPlanDescription", "RTPlanName",
        "RadiopharmaceuticalStartDateTime", "RadiopharmaceuticalStartTime",
        "RadiopharmaceuticalStopDateTime", "RadiopharmaceuticalStopTime",
        "ReasonForOmissionDescription", "ReasonForRequestedProcedureCodeSequence",
        "ReasonForStudy", "ReasonForVisit", "ReasonForVisitCodeSequence",
        "ReasonForTheImagingServiceRequest", "ReasonForTheRequestedProcedure", "ReceivingAE",
        "ReferencedDigitalSignatureSequence", "ReferencedPatientAliasSequence",
        "ReferencedPatientPhotoSequence", "ReferencedPatientSequence",
        "ReferencedSOPInstanceMACSequence", "ReferringPhysicianIdentificationSequence",
        "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "RegionOfResidence",
        "RequestAttributesSequence", "RequestedContrastAgent", "RequestedProcedureComments",
        "RequestedProcedureID", "RequestedProcedureLocation", "RequestedSeriesDescription",
        "RequestingAE", "RequestingPhysician", "RequestingService",
        "RespiratoryMotionCompensationTechniqueDescription", "ResponsibleOrganization",
        "ResponsiblePerson", "ResultsComments", "ResultsDistributionListSequence",
        "ResultsID", "ResultsIDIssuer", "RetrieveAETitle", "SOPAuthorizationDateTime",
        "ScheduledAdmissionDate", "ScheduledAdmissionTime", "ScheduledDischargeDate",
        "ScheduledDischargeTime", "ScheduledHumanPerformersSequence",
        "ScheduledPatientInstitutionResidence",
        "ScheduledPerformingPhysicianIdentificationSequence",
        "ScheduledPerformingPhysicianName", "ScheduledProcedureStepDescription",
        "ScheduledProcedureStepEndDate", "ScheduledProcedureStepEndTime",
        "ScheduledProcedureStepExpirationDateTime", "ScheduledProcedureStepID",
        "ScheduledProcedureStepLocation", "ScheduledProcedureStepModificationDateTime",
        "ScheduledProcedureStepStartDate", "ScheduledProcedureStepStartDateTime",
        "ScheduledProcedureStepStartTime", "ScheduledStationAETitle",
        "ScheduledStationGeographicLocationCodeSequence", "ScheduledStationName",
        "ScheduledStationNameCodeSequence", "ScheduledStudyLocation",
        "ScheduledStudyLocationAETitle", "ScheduledStudyStartDate", "ScheduledStudyStartTime",
        "ScheduledStudyStopDate", "ScheduledStudyStopTime", "SeriesDescription",
        "ServiceEpisodeDescription", "ServiceEpisodeID", "SetupTechniqueDescription",
        "ShieldingDeviceDescription", "SlideIdentifier", "SmokingStatus",
        "SourceManufacturer", "SpecialNeeds", "SpecimenAccessionNumber",
        "SpecimenDetailedDescription", "SpecimenShortDescription", "StationAETitle",
        "StructureSetDescription", "StructureSetName", "StudyArrivalDate", "StudyArrivalTime",
        "StudyComments", "StudyCompletionDate", "StudyCompletionTime", "StudyDescription",
        "StudyIDIssuer", "StudyReadDate", "StudyReadTime", "StudyVerifiedDate",
        "StudyVerifiedTime", "SubstanceAdministrationDateTime", "TelephoneNumberTrial",
        "TemplateLocalVersion", "TemplateVersion", "TextComments", "TextString",
        "TimeOfDocumentCreationOrVerbalTransactionTrial", "TimeOfLastCalibration",
        "TimeOfSecondaryCapture", "TimezoneOffsetFromUTC", "TopicAuthor", "TopicKeywords",
        "TopicSubject", "TopicTitle", "TransducerIdentificationSequence", "TreatmentSites",
        "UDISequence", "UniqueDeviceIdentifier", "VerbalSourceTrial",
        "VerbalSourceIdentifierCodeSequenceTrial", "VisitComments", "XRayDetectorLabel",
        "WaveformFilterDescription",
    ),
    "U": (
        "AcquisitionUID", "ConcatenationUID", "ConceptualVolumeUID",
        "ConstituentConceptualVolumeUID", "DeviceUID", "DigitalSignatureUID",
        "DimensionOrganizationUID", "DoseReferenceUID", "DosimetricObjectiveUID",
        "FailedSOPInstanceUIDList", "FiducialUID", "FrameOfReferenceUID", "InstanceCreatorUID",
        "IrradiationEventUID", "LargePaletteColorLookupTableUID",
        "ManufacturerDeviceClassUID", "MediaStorageSOPInstanceUID", "MultiplexGroupUID",
        "ObservationSubjectUIDTrial", "ObservationUID", "PaletteColorLookupTableUID",
        "PatientSetupUID", "PresentationDisplayCollectionUID",
        "PresentationSequenceCollectionUID", "PyramidUID", "RTTreatmentPhaseUID",
        "ReferencedConceptualVolumeUID", "ReferencedDoseReferenceUID",
        "ReferencedDosimetricObjectiveUID", "ReferencedFiducialsUID",
        "ReferencedFrameOfReferenceUID",
        "ReferencedGeneralPurposeScheduledProcedureStepTransactionUID",
        "ReferencedObservationUIDTrial", "ReferencedSOPInstanceUID",
        "ReferencedSOPInstanceUIDInFile", "ReferencedTreatmentPositionGroupUID",
        "RelatedFrameOfReferenceUID", "SOPInstanceUID", "SeriesInstanceUID",
        "SourceConceptualVolumeUID", "SourceFrameOfReferenceUID", "SpecimenUID",
        "StorageMediaFileSetUID", "StudyInstanceUID", "SynchronizationFrameOfReferenceUID",
        "TargetUID", "TemplateExtensionCreatorUID", "TemplateExtensionOrganizationUID",
        "TrackingUID", "TransactionUID", "TreatmentPositionGroupUID", "TreatmentSessionUID",
        "UID",
    ),
    "Z/D": (
        "ContentCreatorName", "ContentDate", "ContentTime", "ContrastBolusAgent",
        "InstructionPerformedDateTime", "PatientID",
    ),
    "X/Z": (
        "AcquisitionContextSequence", "AcquisitionDate", "AcquisitionTime", "BarcodeValue",
        "LabelText", "PatientSexNeutered", "ReferencedStudySequence",
        "RequestedProcedureDescription", "ReviewerName", "SourceSerialNumber",
        "TreatmentMachineName",
    ),
    "X/D": (
        "AcquisitionDeviceProcessingDescription", "DateOfLastDetectorCalibration",
        "DetectorID", "EndAcquisitionDateTime", "FirstTreatmentDate", "InstanceCreationDate",
        "IntendedPhaseEndDate", "IntendedPhaseStartDate", "MostRecentTreatmentDate",
        "ObservationDateTime", "OperatorIdentificationSequence", "ProtocolName", "RTPlanDate",
        "RTPlanTime", "RTTreatmentApproachLabel", "SeriesDate", "SeriesTime",
        "StartAcquisitionDateTime", "TimeOfLastDetectorCalibration", "TreatmentDate",
        "TreatmentSite", "TreatmentTime",
    ),
    "X/Z/D": (
        "AcquisitionDateTime", "DeviceSerialNumber", "InstanceCreationTime",
        "InstitutionCodeSequence", "InstitutionName", "OperatorsName",
        "ReferencedPerformedProcedureStepSequence", "StationName",
    ),
    "X/Z/U*": ("ReferencedImageSequence", "SourceImageSequence"),
}
# fmt: on


def _tag_actions(profile: dict[str, tuple[str, ...]]) -> dict[int, str]:
    actions: dict[int, str] = {}
    for action, keywords in profile.items():
        for keyword in keywords:
            tag = tag_for_keyword(keyword)
            if tag is None:
                raise KeyError(f"pydicom does not know the keyword {keyword!r}")
            actions[tag] = action
    return actions


_ACTIONS = _tag_actions(_PROFILE)

# Standard registries, not instances: remapping them would break coded meaning.
_KEEP_UID_KEYWORDS = frozenset(
    {"TransferSyntaxUID", "CodingSchemeUID", "MappingResourceUID", "ContextUID"}
)
# The identifying parts of the file meta group (who sent it, from where).
_META_REMOVE = (
    "SourceApplicationEntityTitle",
    "SendingApplicationEntityTitle",
    "ReceivingApplicationEntityTitle",
    "SourcePresentationAddress",
    "SendingPresentationAddress",
    "ReceivingPresentationAddress",
    "PrivateInformationCreatorUID",
    "PrivateInformation",
)
_BULK_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW"})
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_NUMBER_VRS = frozenset({"DS", "IS", "FL", "FD", "SL", "SS", "UL", "US", "SV", "UV"})


def _hmac(secret: bytes, message: str) -> bytes:
    return hmac.new(secret, message.encode("utf-8"), hashlib.sha256).digest()


def patient_pseudonym(patient_key: str, secret: bytes) -> str:
    """Return the stable pseudonym "P-" + 12 hex chars of HMAC-SHA256(secret, patient_key)."""
    return "P-" + _hmac(secret, patient_key).hex()[:12]


def _date_offset_days(patient_key: str, secret: bytes) -> int:
    # A separate HMAC domain: the pseudonym shows 48 bits of HMAC(secret, key), and an offset
    # computable from those bits would let anyone undo the date shift.
    digest = _hmac(secret, "medloop-date-shift\x00" + patient_key)
    return -(1 + int.from_bytes(digest[:8], "big") % 365)


def _remap_uid(uid: str, secret: bytes) -> str:
    digest = _hmac(secret, "medloop-uid\x00" + uid)
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def patient_key(ds: Dataset) -> str:
    for keyword in ("PatientID", "StudyInstanceUID", "SOPInstanceUID"):
        value = str(ds.get(keyword, "") or "").strip()
        if value:
            return value
    raise InvalidInput(
        "this DICOM file has no PatientID, StudyInstanceUID or SOPInstanceUID, so it cannot be"
        " pseudonymised consistently; fix the file's header or leave it out of the import"
    )


class _Cleaner:
    """One dataset's pass over Table E.1-1; holds the secret and this patient's date offset."""

    def __init__(self, secret: bytes, offset_days: int) -> None:
        self.secret = secret
        self.offset = dt.timedelta(days=offset_days)

    def clean(self, ds: Dataset) -> None:
        for tag in list(ds.keys()):
            self._clean_element(ds, ds[tag])

    def _clean_element(self, ds: Dataset, elem: DataElement) -> None:
        tag = elem.tag
        group = tag.group
        # Group lengths go stale once values change; curves (50xx), overlays (60xx) and the
        # GPS block (0016,0070-008E) are all X in the table and are easier to match by range.
        if (
            (tag.element == 0 and group != 0x0002)
            or 0x5000 <= group <= 0x50FF
            or 0x6000 <= group <= 0x60FF
            or 0x00160070 <= tag <= 0x0016008E
        ):
            del ds[tag]
            return
        action = _ACTIONS.get(tag)
        if action is None:
            self._clean_unlisted(elem)
            return
        if action == "X":
            del ds[tag]
            return
        if action == "X/Z/U*":
            # Keep the references so series stay linked; their UIDs are remapped on recursion.
            self._clean_unlisted(elem)
            return
        self._apply(ds, elem, action)

    def _apply(self, ds: Dataset, elem: DataElement, action: str) -> None:
        vr = elem.VR
        if vr == "UI":
            self._remap(elem)
        elif vr in ("DA", "DT") and elem.keyword != "PatientBirthDate":
            # Retain Longitudinal Temporal Information with Modified Dates option: shift
            # instead of blanking, so intervals within one patient survive. The birth date
            # still goes (Z): with the study date it would give the exact age.
            self._shift(elem)
        elif vr == "TM":
            # Times of day stay: with a whole-day shift they reveal no date.
            pass
        elif action == "X/D":
            del ds[elem.tag]
        elif action in ("D", "Z/D") and vr != "SQ":
            elem.value = _dummy(vr)
        else:
            # Z, X/Z, X/Z/D, and D on a sequence (we cannot invent meaningful items): empty.
            elem.value = Sequence() if vr == "SQ" else _empty(vr)

    def _clean_unlisted(self, elem: DataElement) -> None:
        vr = elem.VR
        if vr == "SQ":
            for item in elem.value:
                self.clean(item)
        elif vr == "UI":
            self._remap(elem)
        elif vr in ("DA", "DT"):
            self._shift(elem)
        elif vr == "PN":
            # Beyond the table: a person's name the table does not list is still a name.
            elem.value = ""

    def _remap(self, elem: DataElement) -> None:
        if elem.keyword.endswith("ClassUID") or elem.keyword in _KEEP_UID_KEYWORDS:
            return
        elem.value = _map_values(elem.value, self._uid)

    def _uid(self, uid: str) -> str:
        uid = uid.strip("\x00 ")
        if not uid or not UID(uid).is_private:
            return uid  # standard UIDs (the 1.2.840.10008 root) name classes, not people
        return _remap_uid(uid, self.secret)

    def _shift(self, elem: DataElement) -> None:
        shift = self._shift_da if elem.VR == "DA" else self._shift_dt
        elem.value = _map_values(elem.value, shift)

    def _shift_da(self, value: str) -> str:
        value = value.strip()
        if "-" in value:  # a range, as in query datasets; either end may be open
            ends = value.split("-")
            if len(ends) != 2 or not any(ends):
                return ""
            shifted = [self._shift_yyyymmdd(end) for end in ends]
            if any(end and not new for end, new in zip(ends, shifted, strict=True)):
                return ""
            return "-".join(shifted)
        return self._shift_yyyymmdd(value.replace(".", ""))

    def _shift_dt(self, value: str) -> str:
        value = value.strip()
        if len(value) < 8:
            return ""  # a year or month alone cannot be shifted by days without leaking it
        head = self._shift_yyyymmdd(value[:8])
        return head + value[8:] if head else ""

    def _shift_yyyymmdd(self, value: str) -> str:
        if not value:
            return ""
        try:
            day = dt.datetime.strptime(value, "%Y%m%d").date()
        except ValueError:
            return ""  # unparseable dates are dropped, not passed through
        return (day + self.offset).strftime("%Y%m%d")


def _map_values(value: Any, fn: Callable[[str], str]) -> Any:
    if value is None:
        return value
    if isinstance(value, MultiValue | list | tuple):
        return [fn(str(v)) for v in value]
    return fn(str(value))


def _dummy(vr: str) -> Any:
    if vr in _TEXT_VRS:
        return DUMMY_TEXT
    if vr in _NUMBER_VRS:
        return 0
    return _empty(vr)


def _empty(vr: str) -> Any:
    if vr in _BULK_VRS:
        return b""
    if vr in _NUMBER_VRS:
        return None
    return ""


def _code_item(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


def deidentify(ds: Dataset, secret: bytes) -> Dataset:
    """Return a de-identified deep copy of `ds`; `ds` and the pixel data are left as they are.

    Names and IDs go, UIDs are remapped with HMAC(secret) under 2.25, dates move by a per-patient
    whole-day offset, private tags are dropped, and PatientName/PatientID become the pseudonym.
    """
    if not secret:
        raise ValueError("de-identification needs a non-empty secret key")
    key = patient_key(ds)
    out = copy.deepcopy(ds)
    out.remove_private_tags()
    cleaner = _Cleaner(secret, _date_offset_days(key, secret))
    cleaner.clean(out)

    pseudonym = patient_pseudonym(key, secret)
    out.PatientName = pseudonym
    out.PatientID = pseudonym
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = DEID_METHOD
    out.DeidentificationMethodCodeSequence = Sequence(
        [
            _code_item("113100", "Basic Application Confidentiality Profile"),
            _code_item("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
        ]
    )
    out.LongitudinalTemporalInformationModified = "MODIFIED"

    meta = getattr(out, "file_meta", None)
    if meta is not None:
        # MediaStorageSOPInstanceUID maps to the same value as SOPInstanceUID.
        cleaner.clean(meta)
        for keyword in _META_REMOVE:
            if keyword in meta:
                delattr(meta, keyword)
    return out


_DROPPED = "medloop:dropped-bulk-data"


def _drop_bulk(_elem: DataElement) -> str:
    return _DROPPED


def _strip_bulk(node: dict[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for key, element in node.items():
        if element.get("vr") in _BULK_VRS or "BulkDataURI" in element or "InlineBinary" in element:
            continue
        if element.get("vr") == "SQ" and "Value" in element:
            element = {**element, "Value": [_strip_bulk(item) for item in element["Value"]]}
        kept[key] = element
    return kept


def header_json(ds: Dataset) -> dict[str, Any]:
    """Return the DICOM JSON model of `ds` without pixel data or any other bulk binary value."""
    # Threshold 0 routes every binary value to the handler, so none is base64-encoded first;
    # an element pydicom cannot encode is logged and left out rather than failing the import.
    raw = ds.to_json_dict(
        bulk_data_threshold=0, bulk_data_element_handler=_drop_bulk, suppress_invalid_tags=True
    )
    return _strip_bulk(raw)


def has_burned_in_phi(ds: Dataset) -> bool:
    """True when the header says the pixels carry burned-in annotation (text such as names)."""
    return str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES"
