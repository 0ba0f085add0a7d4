"""The FM from the command line: `medloop fm` names the weights, `medloop weights fetch`
verifies what it downloads, and a bad checkpoint is one clear line, never a traceback."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

from pipeline.fm.litemedsam import WEIGHTS_SHA256


def _medloop(*args, env=None):
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


def test_fm_info_shows_the_bundled_weights_sha256():
    out = _medloop("fm", env={"MEDLOOP_FM_KIND": "litemedsam"})
    assert out.returncode == 0, out.stderr
    assert WEIGHTS_SHA256 in out.stdout and "prompts:    box" in out.stdout


def test_bad_checkpoint_is_one_clear_line(tmp_path):
    bad = tmp_path / "sam.pth"
    bad.write_bytes(b"not a checkpoint at all")
    out = _medloop("fm", env={"MEDLOOP_FM_KIND": "sam_vit_b", "MEDLOOP_FM_CHECKPOINT": str(bad)})
    assert out.returncode == 2
    assert str(bad) in out.stderr and "Traceback" not in out.stderr
    out = _medloop("fm", env={"MEDLOOP_FM_KIND": "sam_vit_b", "MEDLOOP_FM_CHECKPOINT": ""})
    assert out.returncode == 2 and "MEDLOOP_FM_CHECKPOINT" in out.stderr


def test_weights_fetch_checks_sha256(tmp_path):
    src = tmp_path / "src" / "weights.pth"
    src.parent.mkdir()
    src.write_bytes(os.urandom(4096))
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    dest = tmp_path / "dest"
    bad = _medloop("weights", "fetch", "medsam_vit_b", "--dest", str(dest), "--url",
                   src.as_uri(), "--sha256", "0" * 64, "--quiet")
    assert bad.returncode == 2 and "sha256" in bad.stderr
    assert not dest.exists() or list(dest.iterdir()) == []
    ok = _medloop("weights", "fetch", "medsam_vit_b", "--dest", str(dest), "--url",
                  src.as_uri(), "--sha256", sha, "--quiet")
    assert ok.returncode == 0, ok.stderr
    (got,) = dest.iterdir()
    assert got.read_bytes() == src.read_bytes()
    assert f"MEDLOOP_FM_CHECKPOINT={got}" in ok.stdout
