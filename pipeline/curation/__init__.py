"""Curation: validated-dataset exports, manifests and datasheets."""
