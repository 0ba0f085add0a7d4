"""`medloop bench propagate` (issue 10): the quick size runs and writes its tables; any
NIfTI volume with a reference mask is taken, with clear errors for a bad one."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from pipeline.bench.propagate import VARIANTS, load_volume, main


def test_bench_propagate_quick_writes_its_tables(tmp_path, capsys):
    assert main(["--quick", "--rules", "--out-dir", str(tmp_path)]) == 0
    for name in ("propagate.csv", "propagate-slices.csv", "propagate-rules.csv",
                 "propagate.png"):
        assert (tmp_path / name).stat().st_size > 0
    table = pd.read_csv(tmp_path / "propagate.csv")
    assert list(table["variant"]) == list(VARIANTS)
    for column in ("covered", "mean Dice", "accepted as is", "false below", "false above",
                   "seconds"):
        assert table[column].notna().all(), column
    slices = pd.read_csv(tmp_path / "propagate-slices.csv")
    assert {"slice", "dice", "accepted", "seconds", "variant"} <= set(slices.columns)
    out = capsys.readouterr().out
    assert "Dice per slice" in out and "box on every slice" in out and "naive follow" in out


def _nifti(path, array):
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return path


def test_a_nifti_volume_and_mask_are_read_with_their_classes(tmp_path):
    import argparse

    image = np.random.default_rng(0).normal(size=(16, 16, 5)).astype(np.float32)
    mask = np.zeros((16, 16, 5), np.uint8)
    mask[4:8, 4:8, 1:4] = 1
    mask[10:12, 10:12, 2] = 3
    parser = argparse.ArgumentParser()
    volume = load_volume(parser, _nifti(tmp_path / "i.nii.gz", image),
                         _nifti(tmp_path / "m.nii.gz", mask), "CT", None)
    assert volume.classes == (1, 3) and volume.modality == "CT"
    assert volume.image.shape == volume.label.shape == (5, 16, 16)
    assert load_volume(parser, tmp_path / "i.nii.gz", tmp_path / "m.nii.gz", "MR",
                       "3").classes == (3,)


@pytest.mark.parametrize("problem, message", [
    ("missing", "no such file"), ("shape", "differ in shape"), ("empty", "mask is empty"),
    ("class", "no pixel of class"), ("classes", "class values")])
def test_bad_bench_input_is_refused_clearly(tmp_path, capsys, problem, message):
    image = np.zeros((16, 16, 5), np.float32)
    mask = np.zeros((16, 16, 5), np.uint8)
    if problem != "empty":
        mask[4:8, 4:8, 2] = 1
    if problem == "shape":
        mask = mask[:, :, :4]
    args = [str(_nifti(tmp_path / "i.nii.gz", image)), str(_nifti(tmp_path / "m.nii.gz", mask))]
    if problem == "missing":
        args[1] = str(tmp_path / "absent.nii.gz")
    if problem == "class":
        args += ["--classes", "2"]
    if problem == "classes":
        args += ["--classes", "one"]
    with pytest.raises(SystemExit):
        main(args + ["--out-dir", str(tmp_path / "out")])
    assert message in capsys.readouterr().err
