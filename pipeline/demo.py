"""The embedded demo: MNI152 brain slices with a tissue label map, and pydicom's sample DICOMs.

Everything comes from installed packages (nilearn, pydicom); nothing is downloaded. The
review queue is ordered at once by the cold start on thumbnails (the first slice a clinician
sees holds brain, the near-empty top and bottom slices come last); the queued `score` job
refines that order on the FM's embeddings when a worker runs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from sqlmodel import select

from pipeline.ingest.importer import IngestReport, ingest
from pipeline.loop.score import quick_order
from store.db import Store
from store.models import Project, Role, User
from store.projects import create_project
from store.users import create_user, new_password

BRAIN_PROJECT = "demo-brain-mri"
DICOM_PROJECT = "demo-dicom"
TISSUE_CLASSES = [
    {"name": "grey matter", "value": 1, "color": "#f58231"},
    {"name": "white matter", "value": 2, "color": "#4363d8"},
]
DEMO_USERS = {"clinician": Role.clinician, "curator": Role.curator, "admin": Role.admin}


@dataclass
class DemoResult:
    created_projects: list[str] = field(default_factory=list)
    passwords: dict[str, str] = field(default_factory=dict)  # only users created now
    reports: dict[str, IngestReport] = field(default_factory=dict)


def mni152_volumes(out_dir: Path, z_step: int = 3) -> tuple[Path, Path]:
    """Write the MNI152 T1 template and its tissue label map (1 grey, 2 white) as NIfTI.

    The label map thresholds nilearn's grey- and white-matter probability maps at 0.5, the
    larger one winning; axial slices are kept every z_step within the brain mask.
    """
    from nilearn import datasets

    t1 = datasets.load_mni152_template(resolution=1)
    gm = np.asanyarray(datasets.load_mni152_gm_template(resolution=1).dataobj)
    wm = np.asanyarray(datasets.load_mni152_wm_template(resolution=1).dataobj)
    brain = np.asanyarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0
    labels = np.zeros(gm.shape, np.uint8)
    labels[(gm >= 0.5) & (gm >= wm)] = 1
    labels[(wm >= 0.5) & (wm > gm)] = 2
    z = np.flatnonzero(brain.any(axis=(0, 1)))
    sl = (slice(None), slice(None), slice(int(z[0]) + z_step, int(z[-1]), z_step))
    image_path, label_path = out_dir / "mni152_t1.nii.gz", out_dir / "mni152_tissue.nii.gz"
    nib.save(t1.slicer[sl], image_path)
    nib.save(nib.Nifti1Image(labels, t1.affine).slicer[sl], label_path)
    return image_path, label_path


def pydicom_samples() -> list[Path]:
    from pydicom.data import get_testdata_file

    return [Path(get_testdata_file(n)) for n in ("CT_small.dcm", "MR_small.dcm")]


def create_demo(store: Store, actor: str = "demo") -> DemoResult:
    """Create the demo projects and users if absent; safe to run again."""
    result = DemoResult()
    with store.session(immediate=True) as s:
        have = set(s.exec(select(Project.name)).all())
        for name, role in DEMO_USERS.items():
            if not s.exec(select(User).where(User.name == name)).first():
                password = new_password()
                create_user(s, name, role, password, actor)
                result.passwords[name] = password
    if BRAIN_PROJECT not in have:
        with store.session(immediate=True) as s:
            project = create_project(s, BRAIN_PROJECT, "MR", TISSUE_CLASSES, actor)
        with tempfile.TemporaryDirectory() as tmp:
            image, labels = mni152_volumes(Path(tmp))
            result.reports[BRAIN_PROJECT] = ingest(store, project, [image], masks=[labels],
                                                   actor=actor, score=True)
        quick_order(store, project.id)
        result.created_projects.append(BRAIN_PROJECT)
    if DICOM_PROJECT not in have:
        with store.session(immediate=True) as s:
            project = create_project(
                s, DICOM_PROJECT, "CT", [{"name": "lesion", "value": 1, "color": "#e6194b"}],
                actor)
        result.reports[DICOM_PROJECT] = ingest(store, project, pydicom_samples(), actor=actor,
                                               score=True)
        quick_order(store, project.id)
        result.created_projects.append(DICOM_PROJECT)
    return result
