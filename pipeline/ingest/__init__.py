"""Ingest: readers (NIfTI, DICOM, raster), de-identification, and the import itself."""
