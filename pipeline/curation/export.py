"""The `export` job: a project's validated dataset as a zip of 2D NIfTI (.nii) image/mask pairs
with a manifest (CSV), written atomically under the data directory's exports/ folder."""

from __future__ import annotations

import io
import os
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from pipeline.loop.context import JobContext
from store import labels
from store.db import Store
from store.errors import InvalidInput
from store.models import Item, Job


def _nifti(array: np.ndarray, spacing: list[float] | None) -> bytes:
    sy, sx = (spacing or [1.0, 1.0])[:2]
    img = nib.Nifti1Image(np.asarray(array)[..., None] if array.ndim == 2 else array,
                          np.diag([sy, sx, 1.0, 1.0]))
    return img.to_bytes()


def export_dataset(store: Store, job: Job, ctx: JobContext) -> Path:
    project = ctx.project()
    with store.session() as s:
        rows = [(item, h) for item, h in labels.heads(s, Item.project_id == project.id)
                if h is not None and h.kind in labels.VALIDATED]
    if not rows:
        raise InvalidInput(f"project {project.name} has no validated labels to export yet")
    out_dir = store.settings.data_dir / "exports"
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{project.name}-job{job.id}.zip"
    manifest = []
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".part")
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for n, (item, label) in enumerate(rows, start=1):
                stem = f"item{item.id:07d}"
                zf.writestr(f"images/{stem}.nii",
                            _nifti(store.blobs.get_array(item.blob), item.pixel_spacing))
                zf.writestr(f"masks/{stem}.nii",
                            _nifti(store.blobs.get_array(label.mask_blob), item.pixel_spacing))
                manifest.append({
                    "image": f"images/{stem}.nii", "mask": f"masks/{stem}.nii",
                    "item_id": item.id, "split": item.split.value,
                    "source": item.source.value, "patient": item.patient_pseudonym,
                    "modality": item.modality, "slice_index": item.slice_index,
                    "label_id": label.id, "label_kind": label.kind.value,
                    "validated_by": label.author, "validated_at": label.created_at.isoformat()})
                if n % 25 == 0:
                    ctx.report(100 * n / len(rows), f"{n}/{len(rows)} items")
            buf = io.StringIO()
            pd.DataFrame(manifest).to_csv(buf, index=False)
            zf.writestr("manifest.csv", buf.getvalue())
            zf.writestr("classes.csv", pd.DataFrame(project.label_classes).to_csv(index=False))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    ctx.report(100, f"{len(rows)} validated items written to {target}")
    return target
